"""Users' own images: one sub-folder per class (Places365, AnimalFace, ...).

Matches the reference's data path (torchvision `ImageFolder` with
BigGAN-PyTorch's `CenterCropLongEdge` -> `Resize` transforms): classes are
the sorted folder names, each image is converted to RGB, centre-cropped to
a square of its short side and resized with PIL bilinear filtering
(antialiased when downscaling). Images are kept as uint8; the input
pipeline scales them to [-1, 1] on device. Decoded folders are cached by
the files' content (`decoded_cache`).
"""

import concurrent.futures
import hashlib
import os
import pathlib
import sys
from typing import Optional, Sequence

import numpy as np
from absl import logging
from PIL import Image

from cgt_jax.data import datasets
from cgt_jax.runtime import atomic_dir
from cgt_jax.runtime import cache_dir

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
_PROGRESS_ABOVE = 1000  # images; smaller folders load silently


def load_image_folder(
    root: os.PathLike | str,
    resolution: int,
    class_names: Optional[Sequence[str]] = None,
    images_per_class: Optional[int] = None,
    seed: int = 0,
    cache: Optional[pathlib.Path] = None) -> datasets.ClassDataset:
  """Loads `root/<class>/<image>` files as a `ClassDataset`.

  Args:
    root: folder with one sub-folder per class (hidden folders are ignored).
    resolution: output side in pixels.
    class_names: the class folders to load, labelled in this order; None
      loads all folders, labelled in sorted order (as `ImageFolder`).
    images_per_class: keep this many seeded-random images per class (chosen
      before decoding); None keeps all.
    seed: seed of that choice.
    cache: folder of decoded images, keyed by the files' bytes and the
      resolution (`decoded_cache`); None: `runtime.cache_dir.default()`.

  Returns:
    uint8 images `[n, resolution, resolution, 3]`, class-major.
  """
  root = pathlib.Path(root)
  if resolution <= 0:
    raise datasets.DatasetError(f'resolution must be positive, got '
                                f'{resolution}')
  names = class_folders(root)
  if class_names is not None:
    _check_requested(root, list(class_names), names)
    names = list(class_names)
  paths, labels = [], []
  for label, name in enumerate(names):
    files = image_files(root / name)
    if images_per_class is not None and len(files) < images_per_class:
      raise datasets.DatasetError(
          f'class folder {root / name} has {len(files)} images, fewer than '
          f'the {images_per_class} requested (images_per_class): lower it or '
          'add images')
    # Seeded by the class name (not the path): the same choice as
    # `datasets.subsample_per_class` on the fully loaded folder.
    chosen = datasets.choose_per_class(len(files), images_per_class, seed, name)
    paths += [files[i] for i in chosen]
    labels += [label] * len(chosen)
  images = decoded_cache(paths, resolution, cache or cache_dir.default())
  return datasets.ClassDataset(images, np.array(labels, np.int32), names)


def decoded_cache(paths: list[pathlib.Path], resolution: int,
                  cache: pathlib.Path) -> np.ndarray:
  """`_decode_all(paths, resolution)`, kept in `cache` under a hash of the
  files' bytes: the methods of a comparison and reruns decode a folder
  once (reading and hashing the files costs a fraction of decoding them)."""
  digest = hashlib.sha256(f'decoded-v1 {resolution}'.encode())
  for path in paths:
    digest.update(hashlib.sha256(path.read_bytes()).digest())
  file = pathlib.Path(cache) / f'decoded_{digest.hexdigest()[:32]}.npy'
  if file.is_file():
    return np.load(file)
  images = _decode_all(paths, resolution)
  atomic_dir.write_file(file, lambda out: np.save(out, images))
  return images


def class_folders(root: pathlib.Path) -> list[str]:
  """Sorted names of the non-hidden sub-folders of `root`."""
  if not root.is_dir():
    raise datasets.DatasetNotFoundError(
        f'image folder {root} does not exist (or is not a folder): point the '
        'data directory at a folder with one sub-folder of images per class')
  names = sorted(p.name
                 for p in root.iterdir()
                 if p.is_dir() and not p.name.startswith('.'))
  if not names:
    raise datasets.DatasetError(
        f'{root} has no class sub-folders: put the images of each class in '
        f'their own folder, e.g. {root / "<class_name>" / "0001.jpg"}')
  return names


def image_files(folder: pathlib.Path) -> list[pathlib.Path]:
  """The image files under `folder` (recursively), sorted by path.

  Hidden files are skipped: e.g. macOS '._x.jpg' companions are not images.
  """
  files = sorted(
      p for p in folder.rglob('*') if p.suffix.lower() in IMAGE_EXTENSIONS and
      not p.name.startswith('.') and p.is_file())
  if not files:
    raise datasets.DatasetError(
        f'class folder {folder} has no images (looked for '
        f'{", ".join(IMAGE_EXTENSIONS)}, any case): add images or remove the '
        'folder')
  return files


def load_image(path: pathlib.Path, resolution: int) -> np.ndarray:
  """One image, centre-cropped and resized: uint8 `[resolution, resolution, 3]`.

  The crop offset rounds as torchvision's `center_crop` does (Python
  `round`), so a reference run sees the same pixels.
  """
  try:
    with Image.open(path) as image:
      image = image.convert('RGB')
  except Exception as err:  # PIL raises OSError, ValueError, SyntaxError...
    raise datasets.DatasetError(
        f'cannot read image {path} ({type(err).__name__}: {err}): delete or '
        'replace the file') from err
  width, height = image.size
  side = min(width, height)
  left = int(round((width - side) / 2.0))
  top = int(round((height - side) / 2.0))
  image = image.crop((left, top, left + side, top + side))
  image = image.resize((resolution, resolution), Image.Resampling.BILINEAR)
  return np.asarray(image, np.uint8)


def _decode_all(paths: list[pathlib.Path], resolution: int) -> np.ndarray:
  """Decodes `paths` on a thread pool (PIL releases the GIL while decoding).

  Returns:
    uint8 `[len(paths), resolution, resolution, 3]`, in the order of `paths`.
  """
  images = np.empty((len(paths), resolution, resolution, 3), np.uint8)
  workers = min(16, 2 * (os.cpu_count() or 1))
  show = len(paths) > _PROGRESS_ABOVE
  # One line rewritten in place on a terminal; in a log file, a line every
  # tenth of the way (a carriage return there makes one endless line).
  terminal = sys.stderr.isatty()
  every = 250 if terminal else max(1, len(paths) // 10)
  pool = concurrent.futures.ThreadPoolExecutor(workers)
  try:
    decoded = pool.map(load_image, paths, [resolution] * len(paths))
    for i, image in enumerate(decoded):
      images[i] = image
      if show and ((i + 1) % every == 0 or i + 1 == len(paths)):
        if terminal:
          sys.stderr.write(f'\rdecoding images: {i + 1}/{len(paths)}')
        else:
          logging.info('decoding images: %d/%d', i + 1, len(paths))
  finally:
    # On a bad file, fail now rather than after decoding all the others.
    pool.shutdown(cancel_futures=True)
  if show and terminal:
    sys.stderr.write('\n')
  return images


def _check_requested(root: pathlib.Path, requested: list[str],
                     available: list[str]):
  """Raises `DatasetNotFoundError` naming requested folders not in `root`."""
  missing = [n for n in requested if n not in set(available)]
  if missing:
    shown = ', '.join(available[:8]) + (', ...' if len(available) > 8 else '')
    raise datasets.DatasetNotFoundError(
        f'class folders {missing} not found in {root} (it has: {shown}): fix '
        'the class names or add the folders')
  datasets.check_class_names(requested, available)
