"""DiffAugment (Zhao et al., NeurIPS 2020): differentiable augmentations of
every image D sees, real and fake, in the D and the G steps.

D(T(x)) with T differentiable, so G's gradient flows through T. Images are
NHWC in [-1, 1]; each sample draws its own parameters from the key. The
operations and their ranges are those of the authors' code
(mit-han-lab/data-efficient-gans, `DiffAugment_pytorch.py`):

* `color`: brightness x + U(-0.5, 0.5); saturation (x - m_c) U(0, 2) + m_c
  with m_c the pixel's mean over channels; contrast (x - m) U(0.5, 1.5) + m
  with m the image's mean; in that order.
* `translation`: an integer shift in [-s, s] per axis, s = int(H / 8 +
  0.5); out[i, j] = x[i + dy, j + dx], 0 where that falls outside.
* `cutout`: one square of side int(H / 2 + 0.5) set to 0; its top-left
  corner is c - side // 2 for a centre c drawn in [0, H + 1 - side % 2),
  clipped to the image.

`Policy` is chosen once from `config.augment` ('' : none, the program
unchanged) and lives in the stage's `StageSetup`.
"""

import dataclasses

import jax
import jax.numpy as jnp

OPERATIONS = ('color', 'translation', 'cutout')
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


class AugmentError(ValueError):
  """An unknown operation in `config.augment`."""


def _in_row_order(draws, rows, axis=0):
  """Per-sample draws made for a batch in its plain order, taken in the
  order `rows` of the batch being augmented (None: the same order)."""
  return draws if rows is None else jnp.take(draws, rows, axis=axis)


def color(x, key, rows=None):
  brightness, saturation, contrast = _in_row_order(
      jax.random.uniform(key, (3, x.shape[0], 1, 1, 1)), rows, axis=1)
  x = x + (brightness - 0.5)
  mean = x.mean(axis=3, keepdims=True)
  x = (x - mean) * (saturation * 2) + mean
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  return (x - mean) * (contrast + 0.5) + mean


def _shifted_rows(x, shifts):
  """out[b, i] = x[b, i + shifts[b]] (0 outside), along axis 1."""
  size = x.shape[1]
  index = jnp.arange(size)[None, :] + shifts[:, None]  # [B, H]
  inside = (index >= 0) & (index < size)
  gathered = jnp.take_along_axis(
      x, jnp.clip(index, 0, size - 1)[:, :, None, None], axis=1)
  return jnp.where(inside[:, :, None, None], gathered, 0)


def translation(x, key, rows=None):
  height, width = x.shape[1:3]
  shift_y = int(height * TRANSLATION_RATIO + 0.5)
  shift_x = int(width * TRANSLATION_RATIO + 0.5)
  key_y, key_x = jax.random.split(key)
  dy = _in_row_order(
      jax.random.randint(key_y, (x.shape[0],), -shift_y, shift_y + 1), rows)
  dx = _in_row_order(
      jax.random.randint(key_x, (x.shape[0],), -shift_x, shift_x + 1), rows)
  x = _shifted_rows(x, dy)
  return jnp.swapaxes(_shifted_rows(jnp.swapaxes(x, 1, 2), dx), 1, 2)


def cutout(x, key, rows=None):
  height, width = x.shape[1:3]
  size_y = int(height * CUTOUT_RATIO + 0.5)
  size_x = int(width * CUTOUT_RATIO + 0.5)
  key_y, key_x = jax.random.split(key)
  centre_y = _in_row_order(
      jax.random.randint(key_y, (x.shape[0],), 0, height + (1 - size_y % 2)),
      rows)
  centre_x = _in_row_order(
      jax.random.randint(key_x, (x.shape[0],), 0, width + (1 - size_x % 2)),
      rows)
  top = (centre_y - size_y // 2)[:, None]
  left = (centre_x - size_x // 2)[:, None]
  rows, cols = jnp.arange(height)[None, :], jnp.arange(width)[None, :]
  in_rows = (rows >= top) & (rows < top + size_y)  # [B, H]
  in_cols = (cols >= left) & (cols < left + size_x)  # [B, W]
  hole = in_rows[:, :, None] & in_cols[:, None, :]
  return jnp.where(hole[..., None], 0, x)


_FUNCTIONS = {'color': color, 'translation': translation, 'cutout': cutout}


@dataclasses.dataclass(frozen=True)
class Policy:
  """The operations applied, in order (hashable: part of the static setup)."""
  operations: tuple

  @classmethod
  def parse(cls, text: str):
    """`'color,translation,cutout'` -> Policy; '' -> None (no DiffAugment)."""
    names = tuple(n.strip() for n in text.split(',') if n.strip())
    unknown = [n for n in names if n not in OPERATIONS]
    if unknown:
      raise AugmentError(f'config.augment: unknown operations {unknown}: use '
                         f'a comma-separated subset of {list(OPERATIONS)}')
    return cls(names) if names else None

  def __call__(self, images, key, rows=None):
    """`images` augmented; `rows` (a permutation, see
    `parallel.batch_order`): the batch's rows are those of the batch the
    draws are made for, in this order, so that every image gets the same
    draws whatever the batch's layout over devices."""
    for name, op_key in zip(self.operations,
                            jax.random.split(key, len(self.operations))):
      images = _FUNCTIONS[name](images, op_key, rows)
    return images
