"""From `config.data` to the source and target `ClassDataset`s.

The source classes train the BigGAN that is transferred (stage `pretrain`);
the target classes are the new ones (stages `transfer`, `finetune`). Both
come with the global labels of the generator they train, given here once:
source classes 0..N-1 and target classes N..N+M-1 (`target_first_label`
N; 0 for a model of the new classes only). Nothing downstream (train step,
evaluator, tools) shifts a label again.
"""

import dataclasses
import pathlib
from typing import Optional

import numpy as np

from cgt_jax.data import datasets


@dataclasses.dataclass
class SplitData:
  """The source classes (when loaded) and the target classes."""
  source: Optional[datasets.ClassDataset]
  target: datasets.ClassDataset

  @property
  def source_names(self):
    return [] if self.source is None else self.source.class_names

  def known_classes(self) -> datasets.ClassDataset:
    """Every loaded class in one dataset, labelled 0..K-1 by position in
    `source_names + target names`: the domain classifier's classes."""
    parts = [d for d in (self.source, self.target) if d is not None]
    labels = np.concatenate(
        [d.class_indices(d.labels) + self._first_known(d) for d in parts])
    return datasets.ClassDataset(
        np.concatenate([d.images for d in parts]), labels.astype(np.int32),
        [name for d in parts for name in d.class_names])

  def known_labels(self, dataset: datasets.ClassDataset,
                   labels) -> Optional[np.ndarray]:
    """`known_classes` labels of `labels` of `dataset` (source or target);
    None for a dataset of other classes (the source classes merged into
    one for an unconditional model), which no classifier class matches."""
    if dataset is not self.source and dataset is not self.target:
      return None
    return dataset.class_indices(labels) + self._first_known(dataset)

  def _first_known(self, dataset) -> int:
    before_target = 0 if self.source is None else self.source.num_classes
    return 0 if dataset is self.source else before_target


def _in_memory(data_config) -> datasets.ClassDataset:
  """Every class of a dataset that is generated or loaded whole."""
  if data_config.name == 'synthetic':
    from cgt_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    return synthetic.make_dataset(
        data_config.synthetic_images_per_class, seed=data_config.seed)
  if data_config.name == 'cifar100':
    from cgt_jax.data import cifar100  # pylint: disable=g-import-not-at-top
    return cifar100.load_cifar100('train', data_config.data_dir or None)
  raise datasets.DatasetError(
      f"unknown config.data.name {data_config.name!r}: use 'synthetic', "
      "'cifar100' or 'image_folder'")


def _folder_classes(data_config) -> list:
  """The class names (non-hidden sub-folders) of an image folder, sorted."""
  from cgt_jax.data import image_folder  # pylint: disable=g-import-not-at-top
  if not data_config.root:
    raise datasets.DatasetError(
        'config.data.root is empty: set --config.data.root=/path/to/folder '
        '(one sub-folder of images per class)')
  return image_folder.class_folders(pathlib.Path(data_config.root))


def _classes(data_config, names, images_per_class, resolution, everything):
  """The dataset of classes `names` (relabelled 0..len-1 in that order)."""
  per_class = images_per_class or None
  if data_config.name == 'image_folder':
    from cgt_jax.data import image_folder  # pylint: disable=g-import-not-at-top
    return image_folder.load_image_folder(
        data_config.root,
        resolution,
        class_names=list(names),
        images_per_class=per_class,
        seed=data_config.seed)
  return datasets.subsample_per_class(
      datasets.select_classes(everything, names), per_class, data_config.seed)


def load(data_config,
         need_source: bool,
         resolution: int,
         target_first_label: Optional[int] = None) -> SplitData:
  """The source (if `need_source`) and target datasets of a config.

  Target classes are `data_config.target_classes`, labelled from
  `target_first_label` on (None: after the source classes, N); source
  classes are `data_config.source_classes`, or every other class when that
  is empty, labelled 0..N-1.
  """
  targets = list(data_config.target_classes)
  if not targets:
    raise datasets.DatasetError(
        'config.data.target_classes is empty: list the new classes by name')
  everything, available = None, None
  if data_config.name == 'image_folder':
    available = _folder_classes(data_config)
  else:
    everything = _in_memory(data_config)
    available = everything.class_names
  datasets.check_class_names(targets, available)
  target = _classes(data_config, targets, data_config.target_images_per_class,
                    resolution, everything)
  names = list(
      data_config.source_classes) or [n for n in available if n not in targets]
  overlap = sorted(set(names) & set(targets))
  if overlap:
    raise datasets.DatasetError(
        f'classes {overlap} are both source and target classes: remove '
        'them from config.data.source_classes or target_classes')
  source = None
  if need_source and not names:
    raise datasets.DatasetError(
        f'every class of the dataset ({", ".join(available)}) is a target '
        'class, so none is left to pretrain the source model on: add source '
        'classes, or start from a pretrained model with '
        '--config.source_checkpoint=DIR')
  if need_source:
    source = _classes(data_config, names, data_config.source_images_per_class,
                      resolution, everything)
  first = len(names) if target_first_label is None else target_first_label
  target = target.relabelled(first)
  for split in (source, target):
    if split is not None:
      _check_not_empty(split)
  return SplitData(source, target)


def _check_not_empty(dataset):
  empty = [n for n, c in zip(dataset.class_names, dataset.counts()) if not c]
  if empty:
    raise datasets.DatasetError(
        f'classes {empty} have no images in the configured dataset: check '
        'the class names and the data location')


# The seed offset of the synthetic data's held-out draw.
_HELD_OUT_SEED = 1_000_003


def test_split(data_config, dataset: datasets.ClassDataset):
  """Held-out images of `dataset`'s classes, labelled like it: CIFAR-100's
  test split, or another draw of the synthetic shapes (an image folder has
  no split: `config.eval.reference` names a folder instead)."""
  if data_config.name == 'cifar100':
    from cgt_jax.data import cifar100  # pylint: disable=g-import-not-at-top
    everything = cifar100.load_cifar100('test', data_config.data_dir or None)
  elif data_config.name == 'synthetic':
    from cgt_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    everything = synthetic.make_dataset(
        data_config.synthetic_images_per_class,
        seed=data_config.seed + _HELD_OUT_SEED,
        class_names=dataset.class_names)
  else:
    raise datasets.DatasetError(
        f"config.data.name={data_config.name!r} has no test split: set "
        "config.eval.reference to a folder of held-out images (one "
        "sub-folder per class)")
  held_out = datasets.select_classes(everything, dataset.class_names)
  return held_out.relabelled(dataset.label_range[0])
