"""Sample grids as PNG (what people look at first)."""

import pathlib

import numpy as np
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
