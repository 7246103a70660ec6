"""Inception-v3 weights: PyTorch state dict (numpy) -> Flax variables, and back.

No torch import: `.pth` files are read with `cgt_jax.convert.pth_reader`.
The mapping is derived from the Flax model's own variable tree, so every
Flax leaf names exactly one PyTorch key:

    <module path joined by '.'>.conv.weight   conv/kernel (OIHW -> HWIO)
    <...>.bn.weight / .bn.bias                bn/scale, bn/bias
    <...>.bn.running_mean / .running_var      batch_stats bn/mean, bn/var
    fc.weight / fc.bias                       fc/kernel (transposed), fc/bias

`AuxLogits.*` (torchvision's training-only auxiliary head) and BN
`num_batches_tracked` counters are accepted and ignored; any other extra,
missing or mis-shaped key is an error naming the key and both shapes.

A converted directory holds:

    DIR/inception.json   {"variant", "source_file", "source_sha256", "official"}
    DIR/variables/       orbax StandardCheckpointer tree {"params", "batch_stats"}
"""

import dataclasses
import functools
import hashlib
import json
import pathlib
import re
import warnings
from typing import Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from cgt_jax.convert import keymap
from cgt_jax.convert import pth_reader
from cgt_jax.evaluation import inception
from cgt_jax.runtime import atomic_dir

METADATA_FILE = 'inception.json'
VARIABLES_DIR = 'variables'
IGNORED_TORCH_KEYS = re.compile(r'^AuxLogits\.|\.num_batches_tracked$')
_LEAF_NAMES = {
    ('params', 'kernel'): 'weight',
    ('params', 'scale'): 'weight',
    ('params', 'bias'): 'bias',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}


@dataclasses.dataclass(frozen=True)
class OfficialFile:
  """A published weights file; its name carries a sha256 prefix (torch.hub)."""
  name: str
  sha256_prefix: str
  url: str


OFFICIAL_FILES = {
    'fid':
        OfficialFile(
            'pt_inception-2015-12-05-6726825d.pth', '6726825d',
            'https://github.com/mseitzer/pytorch-fid/releases/download/'
            'fid_weights/pt_inception-2015-12-05-6726825d.pth'),
    'torchvision':
        OfficialFile(
            'inception_v3_google-0cc3c7bd.pth', '0cc3c7bd',
            'https://download.pytorch.org/models/'
            'inception_v3_google-0cc3c7bd.pth'),
}
# torch.hub's convention: "<name>-<first hex digits of the sha256>.pth".
_HASH_IN_NAME = re.compile(r'-([0-9a-f]{8,64})\.pth$')


class WeightsFileError(ValueError):
  """A weights file or converted directory is wrong, corrupt or unofficial."""


def torch_key(collection: str, path: tuple) -> str:
  """The PyTorch state-dict key of the Flax leaf `collection/path`."""
  leaf = _LEAF_NAMES.get((collection, path[-1]))
  if leaf is None:
    raise ValueError(f'no PyTorch name for {collection}/{"/".join(path)}')
  return '.'.join(path[:-1] + (leaf,))


def torch_shapes(variant_name: str) -> dict:
  """{PyTorch key: PyTorch shape} that the variant's Flax model expects."""
  shapes = {}
  abstract = inception.abstract_variables(variant_name)
  for (collection, path), leaf in keymap.flat_leaves(abstract).items():
    key = torch_key(collection, path)
    shapes[key] = keymap.torch_shape(collection, path, tuple(leaf.shape))
  return shapes


def _variant_hint(state_dict: Mapping, variant_name: str) -> str:
  """Names the other variant when the fc size gives the weights away."""
  num_classes = np.shape(state_dict.get('fc.weight', ()))[:1]
  for name, variant in inception.VARIANTS.items():
    if name != variant_name and num_classes == (variant.num_classes,):
      return f'; these look like the {name!r} weights: use variant {name!r}'
  return ''


def convert(state_dict: Mapping[str, np.ndarray],
            variant_name: str,
            source: str = 'state dict') -> dict:
  """Flax variables `{'params', 'batch_stats'}` (float32 numpy) of a state dict.

  Raises:
    keymap.StateDictMismatchError naming each missing, unexpected or
    mis-shaped key with both shapes.
  """
  abstract = inception.abstract_variables(variant_name)
  expected = {}
  for (collection, path), leaf in keymap.flat_leaves(abstract).items():
    expected[torch_key(collection,
                       path)] = ((collection,) + path,
                                 keymap.torch_shape(collection, path,
                                                    tuple(leaf.shape)),
                                 functools.partial(keymap.from_torch,
                                                   collection, path))
  return keymap.gather(
      state_dict,
      expected,
      source,
      IGNORED_TORCH_KEYS,
      hint=_variant_hint(state_dict, variant_name))


def to_state_dict(variables) -> dict:
  """PyTorch-layout state dict (numpy) of converted variables."""
  return {
      torch_key(collection, path):
          keymap.to_torch(collection, path, np.asarray(leaf))
      for (collection, path), leaf in keymap.flat_leaves(variables).items()
  }


# ----------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------


def file_sha256(path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as file:
    for block in iter(lambda: file.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def check_name_hash(path, sha256: str) -> None:
  """A file named `<name>-<sha256 prefix>.pth` must have that sha256 prefix.

  Otherwise it is corrupt (e.g. a truncated download): always an error.
  """
  named = _HASH_IN_NAME.search(pathlib.Path(path).name)
  if named and not sha256.startswith(named.group(1)):
    raise WeightsFileError(
        f'{path}: sha256 {sha256[:16]}... does not start with {named.group(1)}'
        ' as the file name says: the file is corrupt or incomplete; download '
        'it again')


def check_official(path, variant_name: str, sha256: str,
                   allow_unofficial: bool) -> bool:
  """Whether `path` is the published file of the variant (by sha256 prefix).

  Other weights give numbers that are not comparable with published ones:
  an error unless `allow_unofficial`, then a warning.
  """
  official = OFFICIAL_FILES[variant_name]
  if sha256.startswith(official.sha256_prefix):
    return True
  message = (f'{path}: sha256 {sha256[:16]}... is not that of the official '
             f'{variant_name!r} weights {official.name} (prefix '
             f'{official.sha256_prefix}); metrics will not be comparable with '
             'published ones')
  if not allow_unofficial:
    raise WeightsFileError(message + ' (--allow-unofficial or '
                           'allow_unofficial=True to use them anyway)')
  warnings.warn(message)
  return False


def load_pth(path, variant_name: str, allow_unofficial: bool = False):
  """`(variables, metadata)` from a `.pth` file, checksum-checked.

  Problems are reported in the order that helps most: a corrupt download,
  a file that is no checkpoint, keys or shapes of another network, and only
  then weights that are not the official ones.

  Raises:
    WeightsFileError, pth_reader.CheckpointReadError or
    keymap.StateDictMismatchError, each with a one-line message.
  """
  inception.get_variant(variant_name)
  sha256 = file_sha256(path)
  check_name_hash(path, sha256)
  state_dict = pth_reader.load_state_dict(path)
  variables = convert(state_dict, variant_name, source=str(path))
  official = check_official(path, variant_name, sha256, allow_unofficial)
  metadata = {
      'variant': variant_name,
      'source_file': pathlib.Path(path).name,
      'source_sha256': sha256,
      'official': official,
  }
  return variables, metadata


def save(directory, variables, metadata: dict) -> pathlib.Path:
  """Writes a converted directory atomically (`runtime.atomic_dir`)."""
  staging = atomic_dir.create_staging(directory)
  try:
    (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(staging / VARIABLES_DIR,
                      jax.tree_util.tree_map(np.asarray, variables))
    checkpointer.wait_until_finished()
  except BaseException:
    atomic_dir.discard(staging)
    raise
  return atomic_dir.commit(staging, directory)


def load(directory):
  """`(variables, metadata)` of a directory written by `save`."""
  directory = pathlib.Path(directory).absolute()
  meta_path = directory / METADATA_FILE
  if not meta_path.is_file():
    raise WeightsFileError(
        f'{directory} holds no converted Inception weights (no '
        f'{METADATA_FILE}): run tools/convert_inception.py first')
  metadata = json.loads(meta_path.read_text())
  target = inception.abstract_variables(metadata['variant'])
  try:
    variables = ocp.StandardCheckpointer().restore(directory / VARIABLES_DIR,
                                                   target)
  except (FileNotFoundError, ValueError, KeyError) as error:
    raise WeightsFileError(
        f'{directory}: variables are incomplete or do not match variant '
        f'{metadata["variant"]!r} ({type(error).__name__}: '
        f'{str(error)[:200]})') from None
  return variables, metadata


def identity(metadata: Mapping) -> str:
  """Feature-extractor identity for caches: variant + weights sha256."""
  return f'inception-{metadata["variant"]}-{metadata["source_sha256"]}'
