"""Sample grids as PNG (what people look at first), and analysis plots."""

import pathlib

import numpy as np
from matplotlib import figure as mpl_figure
from PIL import Image


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats -> uint8 (the inverse of x / 127.5 - 1)."""
  images = np.asarray(images, np.float32)
  return np.clip(np.round((images + 1) * 127.5), 0, 255).astype(np.uint8)


def grid(images, rows: int, pad: int = 2) -> np.ndarray:
  """`[rows * cols, H, W, 3]` images -> one `[rows*(H+pad), cols*(W+pad), 3]`
  uint8 picture, filled row by row (one class per row in sample grids)."""
  images = to_uint8(images)
  n, h, w, c = images.shape
  cols = n // rows
  canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255,
                   np.uint8)
  for i in range(rows * cols):
    r, k = divmod(i, cols)
    top, left = pad + r * (h + pad), pad + k * (w + pad)
    canvas[top:top + h, left:left + w] = images[i]
  return canvas


def save_png(picture: np.ndarray, path, scale: int = 1):
  """Writes a uint8 picture, optionally enlarged (nearest) for small images."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.fromarray(picture)
  if scale > 1:
    image = image.resize((image.width * scale, image.height * scale),
                         Image.NEAREST)
  image.save(path)
  return path


def similarity_heatmaps(scores: dict,
                        new_names,
                        source_names,
                        sources=None,
                        first_added=None) -> mpl_figure.Figure:
  """Which source classes each new class borrows from, layer by layer.

  Args:
    scores: `cgt_jax.analysis.similarity_scores` output, `{layer: {'gamma':
      [M, N], 'beta': [M, N]}}`.
    new_names: M row labels. source_names: N column labels.
    sources: indices of the source classes to show (default all); with an
      ImageNet source, 1000 columns are unreadable.
    first_added: a continually extended generator's first class that an
      earlier extension added (its source count N): those columns are
      set apart by a dashed line and italic names (None: no such classes).
  Returns:
    A matplotlib Figure (no pyplot state, so it works headless), a row per
    layer, gamma left and beta right, on one colour scale centred at 0: the
    scores are signed and unnormalised.
  """
  sources = np.arange(
      len(source_names)) if sources is None else np.asarray(sources)
  shown = {
      (layer, which): np.asarray(s[which])[:, sources]
      for layer, s in scores.items() for which in ('gamma', 'beta')
  }
  limit = max(float(np.max(np.abs(v))) for v in shown.values()) or 1.0
  fig = mpl_figure.Figure(
      figsize=(2 * (2 + 0.16 * len(sources)),
               len(scores) * (0.8 + 0.2 * len(new_names))),
      layout='constrained')
  axes = fig.subplots(len(scores), 2, squeeze=False)
  for ax, ((layer, which), values) in zip(axes.flat, shown.items()):
    image = ax.imshow(
        values, cmap='RdBu_r', vmin=-limit, vmax=limit, aspect='auto')
    ax.set_title(f'{layer}: S_{which}', fontsize=9)
    ax.set_yticks(range(len(new_names)), list(new_names), fontsize=7)
    ax.set_xticks(
        range(len(sources)), [str(source_names[i]) for i in sources],
        rotation=90,
        fontsize=6)
    if first_added is not None:
      _mark_added(ax, sources, first_added)
  fig.colorbar(image, ax=axes, shrink=0.6, label='similarity score')
  return fig


def _mark_added(ax, sources, first_added: int):
  """A dashed line before the shown columns of added classes (index >=
  `first_added`), whose names turn italic."""
  added = np.asarray(sources) >= first_added
  if added.any():
    ax.axvline(int(np.argmax(added)) - 0.5, color='black', linestyle='--')
  for label, is_added in zip(ax.get_xticklabels(), added):
    if is_added:
      label.set_fontstyle('italic')


def labelled_grids(blocks: dict, row_names) -> mpl_figure.Figure:
  """Sample grids side by side: a panel per `{title: [K, B, R, R, 3]}`
  block (K <= len(row_names) classes, B samples each, in [-1, 1]), a row
  per name in `row_names`; rows a block lacks (classes a model cannot
  draw yet) stay blank."""
  rows = len(row_names)
  fig = mpl_figure.Figure(
      figsize=(1.5 + 2.6 * len(blocks), 0.6 + 0.42 * rows),
      layout='constrained')
  axes = fig.subplots(1, len(blocks), squeeze=False)[0]
  for ax, (title, images) in zip(axes, blocks.items()):
    images = np.asarray(images)
    blank = np.ones((rows - len(images),) + images.shape[1:], images.dtype)
    full = np.concatenate([images, blank])
    ax.imshow(grid(full.reshape(-1, *full.shape[2:]), rows))
    ax.set_title(title, fontsize=10)
    height = full.shape[2] + 2  # grid's padding
    ax.set_yticks([2 + height * (r + 0.5) for r in range(rows)],
                  list(row_names),
                  fontsize=8)
    ax.set_xticks([])
  return fig
