"""CIFAR-100 through tensorflow-datasets, and the paper's 80/20 class split.

Reading a prepared copy needs only tensorflow-datasets and pillow (random
access through `tfds.data_source`, array_record files); preparing it (the
first run) needs TensorFlow and either network access or the archive in
tfds's manual folder. `load_cifar100` explains the fix when it cannot.

The split: the paper transfers from 80 randomly chosen source classes to the
remaining 20 (or 10 of them) but never published which. cgt_jax fixes its
own, drawn once and written out literally below so it can never drift:

    names = FINE_LABEL_NAMES                # alphabetical = label order
    order = np.random.default_rng(2021).permutation(100)
    CIFAR100_TARGET_20 = sorted(names[i] for i in order[:20])
    CIFAR100_TARGET_10 = sorted(names[i] for i in order[:10])

Both lists are sorted, so a target's label is its index in the list, as
torchvision's `ImageFolder` would give over folders of these classes (the
reference's `C100_ImageFolder`). The sources are the other 80, in label
order.
"""

import os
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds

from cgt_jax.data import datasets

NAME = 'cifar100'
_CHUNK = 4096  # records per batched read

# The 100 fine labels in label order (alphabetical), as in the archive's
# fine_label_names.txt.
FINE_LABEL_NAMES = (
    'apple', 'aquarium_fish', 'baby', 'bear', 'beaver', 'bed', 'bee', 'beetle',
    'bicycle', 'bottle', 'bowl', 'boy', 'bridge', 'bus', 'butterfly', 'camel',
    'can', 'castle', 'caterpillar', 'cattle', 'chair', 'chimpanzee', 'clock',
    'cloud', 'cockroach', 'couch', 'crab', 'crocodile', 'cup', 'dinosaur',
    'dolphin', 'elephant', 'flatfish', 'forest', 'fox', 'girl', 'hamster',
    'house', 'kangaroo', 'keyboard', 'lamp', 'lawn_mower', 'leopard', 'lion',
    'lizard', 'lobster', 'man', 'maple_tree', 'motorcycle', 'mountain', 'mouse',
    'mushroom', 'oak_tree', 'orange', 'orchid', 'otter', 'palm_tree',
    'pear', 'pickup_truck', 'pine_tree', 'plain', 'plate', 'poppy', 'porcupine',
    'possum', 'rabbit', 'raccoon', 'ray', 'road', 'rocket', 'rose', 'sea',
    'seal', 'shark', 'shrew', 'skunk', 'skyscraper', 'snail', 'snake', 'spider',
    'squirrel', 'streetcar', 'sunflower', 'sweet_pepper', 'table', 'tank',
    'telephone', 'television', 'tiger', 'tractor', 'train', 'trout', 'tulip',
    'turtle', 'wardrobe', 'whale', 'willow_tree', 'wolf', 'woman', 'worm')

# Drawn by the procedure in the module docstring (seed 2021); never edit.
CIFAR100_TARGET_20 = ('bear', 'bed', 'boy', 'can', 'chair', 'cockroach',
                      'crocodile', 'dinosaur', 'flatfish', 'house', 'lizard',
                      'otter', 'pear', 'sea', 'skyscraper', 'snail', 'squirrel',
                      'telephone', 'train', 'wolf')
CIFAR100_TARGET_10 = ('bear', 'bed', 'chair', 'dinosaur', 'house', 'lizard',
                      'otter', 'pear', 'skyscraper', 'telephone')


def cifar100_split(num_targets: int) -> tuple[list[str], list[str]]:
  """(80 source names, `num_targets` target names) of the fixed split.

  With 10 targets the sources are still the same 80 classes (the other 10
  of the 20 are simply not used), so one source model serves both.
  """
  targets = {20: CIFAR100_TARGET_20, 10: CIFAR100_TARGET_10}
  if num_targets not in targets:
    raise ValueError(f'num_targets must be 20 or 10 (the paper\'s CIFAR '
                     f'settings), got {num_targets}')
  sources = [n for n in FINE_LABEL_NAMES if n not in CIFAR100_TARGET_20]
  return sources, list(targets[num_targets])


def load_cifar100(
    split: str = 'train',
    data_dir: Optional[os.PathLike | str] = None) -> datasets.ClassDataset:
  """Reads a CIFAR-100 split (any tfds split string) into host memory.

  Args:
    split: e.g. 'train' (50k images), 'test' (10k), 'train[:10%]'.
    data_dir: tfds data folder; None is tfds's default (`$TFDS_DATA_DIR` or
      ~/tensorflow_datasets). Prepared on first use if possible.

  Returns:
    uint8 images `[n, 32, 32, 3]`, labels = fine labels, class names
    `FINE_LABEL_NAMES`.
  """
  builder = tfds.builder(NAME, data_dir=data_dir, file_format='array_record')
  if not builder.is_prepared():
    _prepare(builder)
  try:
    source = tfds.data_source(
        NAME, split=split, data_dir=data_dir, download=False)
  except NotImplementedError as err:  # prepared, but as tfrecord only
    raise datasets.DatasetError(
        f'{builder.data_dir} holds CIFAR-100 without random access ({err}). '
        'Prepare it as array_record: `tfds build cifar100 '
        f'--file_format=array_record --data_dir={builder.data_dir_root}` '
        'after moving the old copy away, or use another data_dir') from err
  class_names = _class_names(builder.info.features['label'].names)
  images, labels = _read_all(source)
  return datasets.ClassDataset(images, labels, class_names)


def _prepare(builder):
  """Downloads and prepares CIFAR-100, or raises `DatasetError` saying how."""
  root = builder.data_dir_root
  try:
    builder.download_and_prepare()
  except Exception as err:  # ImportError, download and checksum errors, ...
    raise datasets.DatasetError(
        f'CIFAR-100 is not prepared in {root} and preparing it failed '
        f'({type(err).__name__}: {err}). Fix it in one of these ways:\n'
        '  * `pip install tensorflow-cpu` (cgt_jax\'s `tensorflow` extra: '
        'tfds needs it to prepare CIFAR; '
        'install any other module the error names too) and run once with '
        'network access;\n'
        '  * offline: put cifar-100-binary.tar.gz (from '
        'https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz) into '
        f'{root}/downloads/manual/ and run again (TensorFlow still needed);\n'
        '  * or set config.data.data_dir to a folder holding a prepared copy '
        '(cifar100/3.0.2 in array_record format).') from err


def _class_names(info_names: list[str]) -> list[str]:
  """`FINE_LABEL_NAMES`, after checking the dataset's own names agree.

  A copy's names come from its label file when it was prepared; before that
  (and under `tfds.testing.mock_data`) tfds only knows '0'..'99'. Both mean
  label k is `FINE_LABEL_NAMES[k]`; other names mean another dataset.
  """
  placeholders = [str(k) for k in range(len(FINE_LABEL_NAMES))]
  if list(info_names) not in (list(FINE_LABEL_NAMES), placeholders):
    raise datasets.DatasetError(
        f'the CIFAR-100 copy has unexpected label names {info_names[:5]}...: '
        'expected the 100 fine labels; re-prepare it or use another data_dir')
  return list(FINE_LABEL_NAMES)


def _read_all(source) -> tuple[np.ndarray, np.ndarray]:
  """All records: uint8 images `[n, 32, 32, 3]`, int32 fine labels `[n]`."""
  read = _batched_reader(source)
  n = len(source)
  images = np.empty((n, 32, 32, 3), np.uint8)
  labels = np.empty((n,), np.int32)
  for start in range(0, n, _CHUNK):
    stop = min(start + _CHUNK, n)
    records = read(list(range(start, stop)))
    images[start:stop] = np.stack([r['image'] for r in records])
    labels[start:stop] = [r['label'] for r in records]
  return images, labels


def _batched_reader(source):
  """`source.__getitems__`, or record-by-record reads where it is broken.

  Batched reads fetch many array_record records per call. tfds 4.9.10's
  `tfds.testing.mock_data` (any policy) installs `__getitems__` on the mocked
  reader as a plain `functools.partial` missing `self`, so it raises
  TypeError; single-record indexing works there, so tests that mock CIFAR
  still run, just slower.
  """
  if len(source) == 0:
    return source.__getitems__
  try:
    source.__getitems__([0])
  except TypeError:
    return lambda keys: [source[k] for k in keys]
  return source.__getitems__
