"""Class-labelled image datasets held in host memory, and class selection.

The project's datasets are small (CIFAR-100: 50k images of 32 px; a
Places365 or AnimalFace selection: a few thousand images of 128 px), so each
loader reads its data once into a `ClassDataset` of uint8 arrays; the input
pipeline samples batches from it. Loaders live in the submodules:

* `synthetic`: the demo's generated shapes-and-colours dataset (no files);
* `image_folder`: one sub-folder per class (Places365, AnimalFace, ...);
* `cifar100`: CIFAR-100 through tensorflow-datasets, and the paper's split.
"""

import dataclasses
import zlib
from typing import Optional, Sequence

import numpy as np


class DatasetError(ValueError):
  """A dataset cannot be loaded; the message names the path and the fix."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
  """A dataset path does not exist (also a `FileNotFoundError`)."""


@dataclasses.dataclass
class ClassDataset:
  """Images with class labels, in host memory.

  Attributes:
    images: uint8 `[n, height, width, 3]`.
    labels: int32 `[n]`, in `first_label .. first_label + num_classes - 1`.
    class_names: one name per class; label `first_label + k` is
      `class_names[k]`.
    first_label: the label of the first class: 0 as loaded, N for the new
      classes of a generator whose labels 0..N-1 are its source classes
      (`cgt_jax.data.splits` gives each split its labels once, at load).
  """
  images: np.ndarray
  labels: np.ndarray
  class_names: list[str]
  first_label: int = 0

  def __post_init__(self):
    # Checked once here so that no loader can hand the pipeline a dataset
    # whose labels would index past the generator's class embeddings.
    if self.images.dtype != np.uint8 or self.images.ndim != 4:
      raise DatasetError('images must be uint8 [n, height, width, 3], got '
                         f'{self.images.dtype} {self.images.shape}')
    if self.labels.dtype != np.int32 or self.labels.shape != (len(
        self.images),):
      raise DatasetError(f'labels must be int32 [{len(self.images)}], got '
                         f'{self.labels.dtype} {self.labels.shape}')
    if len(set(self.class_names)) != len(self.class_names):
      raise DatasetError(f'class names repeat: {self.class_names}')
    low, high = self.label_range
    if self.labels.size and (self.labels.min() < low or
                             self.labels.max() >= high):
      raise DatasetError(
          f'labels span {self.labels.min()}..{self.labels.max()} but the '
          f'{len(self.class_names)} classes are labelled {low}..{high - 1}')

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def label_range(self) -> tuple:
    """`(first label, one past the last)`."""
    return self.first_label, self.first_label + self.num_classes

  def class_indices(self, labels) -> np.ndarray:
    """Positions in `class_names` of `labels`."""
    return np.asarray(labels) - self.first_label

  def as_one_class(self, name: str) -> 'ClassDataset':
    """The same images as ONE class `name` (label 0): what an
    unconditional model trains on."""
    return ClassDataset(self.images, np.zeros_like(self.labels), [name])

  def counts(self) -> np.ndarray:
    """Images per class, int `[num_classes]`."""
    return np.bincount(
        self.class_indices(self.labels), minlength=self.num_classes)

  def relabelled(self, first_label: int) -> 'ClassDataset':
    """The same images and classes, labelled from `first_label` on."""
    labels = self.class_indices(self.labels) + first_label
    return ClassDataset(self.images, labels.astype(np.int32),
                        list(self.class_names), first_label)


def choose_per_class(count: int, images_per_class: Optional[int], seed: int,
                     class_name: str) -> np.ndarray:
  """Which `images_per_class` of a class's `count` images to keep.

  The permutation is seeded by `seed` and the class NAME, so a class keeps
  the same images whichever other classes are loaded or in what order.

  Returns:
    int `[k]`: sorted positions in `0..count-1` (all of them for None).
  """
  if images_per_class is None:
    return np.arange(count)
  if images_per_class <= 0:
    raise DatasetError(f'images_per_class must be positive or None, got '
                       f'{images_per_class}')
  if count < images_per_class:
    raise DatasetError(
        f'class {class_name!r} has {count} images, fewer than the '
        f'{images_per_class} requested (images_per_class): lower '
        'images_per_class or add images')
  rng = np.random.default_rng([seed, zlib.crc32(class_name.encode())])
  return np.sort(rng.permutation(count)[:images_per_class])


def subsample_per_class(dataset: ClassDataset, images_per_class: Optional[int],
                        seed: int) -> ClassDataset:
  """Keeps `images_per_class` seeded-random images of every class.

  The kept images stay in their original order. None keeps everything.
  """
  if images_per_class is None:
    return dataset
  keep = []
  indices = dataset.class_indices(dataset.labels)
  for index, name in enumerate(dataset.class_names):
    positions = np.flatnonzero(indices == index)
    chosen = choose_per_class(len(positions), images_per_class, seed, name)
    keep.append(positions[chosen])
  keep = np.sort(np.concatenate(keep))
  return ClassDataset(dataset.images[keep], dataset.labels[keep],
                      list(dataset.class_names), dataset.first_label)


def select_classes(dataset: ClassDataset, names: Sequence[str]) -> ClassDataset:
  """Keeps the classes `names`, relabelled `0..len(names)-1` in that order."""
  names = list(names)
  check_class_names(names, dataset.class_names)
  old_to_new = np.full(dataset.num_classes, -1, np.int32)
  old_to_new[[dataset.class_names.index(n) for n in names]] = np.arange(
      len(names), dtype=np.int32)
  new_labels = old_to_new[dataset.class_indices(dataset.labels)]
  keep = np.flatnonzero(new_labels >= 0)
  return ClassDataset(dataset.images[keep], new_labels[keep], names)


def check_class_names(names: Sequence[str], available: Sequence[str]):
  """Raises `DatasetError` on repeated names or names not in `available`."""
  repeated = sorted({n for n in names if list(names).count(n) > 1})
  if repeated:
    raise DatasetError(f'class names repeat: {repeated}')
  unknown = [n for n in names if n not in set(available)]
  if unknown:
    shown = ', '.join(map(repr, list(available)[:8]))
    more = f', ... ({len(available)} in all)' if len(available) > 8 else ''
    raise DatasetError(f'unknown class names {unknown}: available are '
                       f'{shown}{more}')
