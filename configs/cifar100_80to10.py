"""CIFAR-100, 80 source classes -> 10 new classes (paper Table 1, left,
columns "10/600", "10/300", "10/100", row "Ours").

The same source split as cifar100_80to20 (the same 80 classes, so one
pretrained source model serves both), and 10 of its 20 target classes
(cgt_jax/datasets/cifar100.py: CIFAR100_TARGET_10).

    python -m cgt_jax.main --config=configs/cifar100_80to10.py --workdir=DIR \
        [--config.data.target_images_per_class=300] \
        [--config.source_checkpoint=WORKDIR_80TO20/pretrain/model]
"""

import importlib.util
import pathlib


def _sibling(name):
  path = pathlib.Path(__file__).with_name(f'{name}.py')
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config():
  return _sibling('cifar100_80to20').get_config(num_targets=10)
