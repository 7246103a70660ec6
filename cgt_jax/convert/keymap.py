"""PyTorch BigGAN / cGANTransfer state-dict keys <-> cgt_jax Flax variables.

Numpy in, Flax variables out; no torch import. The mapping is derived from
the Flax model's own variable tree (an abstract one from `jax.eval_shape` is
enough): every Flax leaf names exactly one PyTorch key, so missing,
unexpected and mis-shaped keys are found by comparing the two sets.

Renames (Flax path element -> PyTorch module name):

    block_i -> blocks.i.0        attention_i -> blocks.i.1
    output_bn -> output_layer.0  output_conv -> output_layer.2
    kp/similarity_{gamma,beta} -> comb_layer_{g,b}
    kp/prior_{gamma,beta}      -> prev_knowledge_{g,b}
    kp/z_proj_{gamma,beta}     -> z_layer_{g,b}
    kp/residual_{gamma,beta}   -> res_{g,b}
    (BSA's `bsa/residual_*`, `bsa/z_proj_*` alike, as cGANTransfer layers)

Leaves: `kernel` -> `weight` (Dense `[in, out]` = weight.T; conv HWIO =
OIHW transposed), `embedding` -> `weight`, `scale` -> `gain` (output BN),
`batch_stats/{mean, var}` -> `stored_{mean, var}`, `sn/u` `[out]` -> `u0`
`[1, out]`. The logging-only `sv0` buffers and cGANTransfer's
`pretrain_embedding_w` (an alias of `shared.weight`) are ignored.
"""

import functools
import re
from typing import Mapping

import numpy as np
from flax import traverse_util

from cgt_jax.models import bsa
from cgt_jax.models import kp

_MODULE_RENAMES = (
    (re.compile(r'block_(\d+)'), r'blocks.\1.0'),
    (re.compile(r'attention_(\d+)'), r'blocks.\1.1'),
    (re.compile(r'output_bn'), 'output_layer.0'),
    (re.compile(r'output_conv'), 'output_layer.2'),
)
# cGANTransfer's names of the knowledge-propagation parts.
_KP_TORCH_NAMES = {
    kp.Part.SIMILARITY: 'comb_layer',
    kp.Part.PRIOR: 'prev_knowledge',
    kp.Part.Z_PROJECTION: 'z_layer',
    kp.Part.RESIDUAL: 'res',
}
# New-class layers whose parts are direct children of the torch ccbn.
_FLATTENED_MODULES = (kp.MODULE, bsa.MODULE)
_LEAF_RENAMES = {
    ('params', 'kernel'): 'weight',
    ('params', 'embedding'): 'weight',
    ('params', 'scale'): 'gain',
    ('params', 'bias'): 'bias',
    ('params', 'gamma'): 'gamma',
    ('batch_stats', 'mean'): 'stored_mean',
    ('batch_stats', 'var'): 'stored_var',
    ('sn', 'u'): 'u0',
}
# Keys a PyTorch checkpoint may hold that carry nothing the model needs.
IGNORED_TORCH_KEYS = re.compile(r'(\.sv\d+|\.pretrain_embedding_w)$')


class StateDictMismatchError(ValueError):
  """A state dict does not fit the model; `.problems` lists every mismatch."""

  def __init__(self, source: str, problems: list):
    self.problems = problems
    more = f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''
    super().__init__(f'{source}: {problems[0]}{more}')


def torch_key(collection: str, path: tuple) -> str:
  """The PyTorch state-dict key of the Flax leaf `collection/path`."""
  modules = []
  for element in path[:-1]:
    if element in _FLATTENED_MODULES:
      continue
    modules.append(_torch_module(element, path))
  leaf = _LEAF_RENAMES.get((collection, path[-1]))
  if leaf is None:
    raise ValueError(f'no PyTorch name for {collection}/{"/".join(path)}')
  return '.'.join(modules + [leaf])


def _torch_module(element: str, path: tuple) -> str:
  """The PyTorch module name of one Flax path element."""
  if element.startswith(kp.SHARED_PREFIX):
    raise ValueError(f'{"/".join(path)} (shared similarity) has no '
                     'PyTorch equivalent')
  part = kp.parse_layer(element)
  if part is not None:
    return f'{_KP_TORCH_NAMES[part[0]]}_{part[1][0]}'
  for pattern, replacement in _MODULE_RENAMES:
    if pattern.fullmatch(element):
      return pattern.sub(replacement, element)
  return element


def torch_shape(collection: str, path: tuple, flax_shape: tuple) -> tuple:
  """The PyTorch shape of a Flax leaf of shape `flax_shape`."""
  if collection == 'sn':
    return (1,) + tuple(flax_shape)
  if path[-1] == 'kernel' and len(flax_shape) == 2:
    return tuple(reversed(flax_shape))
  if path[-1] == 'kernel' and len(flax_shape) == 4:
    kh, kw, cin, cout = flax_shape
    return (cout, cin, kh, kw)
  return tuple(flax_shape)


def from_torch(collection: str, path: tuple, value: np.ndarray) -> np.ndarray:
  """A PyTorch tensor (numpy) in the layout of the Flax leaf."""
  if collection == 'sn':
    return value.reshape(-1)
  if path[-1] == 'kernel' and value.ndim == 2:
    return value.T
  if path[-1] == 'kernel' and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  return value


def to_torch(collection: str, path: tuple, value: np.ndarray) -> np.ndarray:
  """Inverse of `from_torch`."""
  if collection == 'sn':
    return value.reshape(1, -1)
  if path[-1] == 'kernel' and value.ndim == 2:
    return value.T
  if path[-1] == 'kernel' and value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  return value


# Collections with PyTorch counterparts. `source_stats` (frozen source-class
# BN statistics of an extended generator) has none: see `load_state_dict`.
TORCH_COLLECTIONS = ('params', 'batch_stats', 'sn')


def flat_leaves(variables: Mapping) -> dict:
  """{(collection, path): leaf} over the collections PyTorch also has."""
  out = {}
  for collection, tree in variables.items():
    if collection not in TORCH_COLLECTIONS:
      continue
    for path, leaf in traverse_util.flatten_dict(dict(tree)).items():
      out[(collection, path)] = leaf
  return out


def gather(state_dict: Mapping[str, np.ndarray],
           expected: Mapping,
           source: str,
           ignored=None,
           hint: str = '') -> dict:
  """Flax variables from a state dict, given what the model expects.

  Shared by every converter (BigGAN, BigGAN-deep, Inception).

  Args:
    state_dict: PyTorch key -> numpy array.
    expected: PyTorch key -> `(flax_key, torch_shape, convert)`, where
      `flax_key` is `(collection, *path)` and `convert(value)` returns the
      array in Flax layout.
    source: a name for error messages (usually the file name).
    ignored: a compiled regex of extra keys to accept silently.
    hint: appended to the first problem (e.g. "wrong variant?").
  Raises:
    StateDictMismatchError naming each missing, unexpected or mis-shaped key
    with both shapes.
  """
  problems, flat = [], {}
  for key, (flax_key, want, convert) in expected.items():
    if key not in state_dict:
      problems.append(f'missing key {key!r} (model expects shape {want})')
      continue
    value = np.asarray(state_dict[key])
    if tuple(value.shape) != tuple(want):
      problems.append(f'key {key!r} has shape {tuple(value.shape)} but the '
                      f'model expects {tuple(want)}')
      continue
    flat[flax_key] = convert(value).astype(np.float32)
  for key in state_dict:
    if key not in expected and not (ignored and ignored.search(key)):
      shape = tuple(np.shape(state_dict[key]))
      problems.append(f'unexpected key {key!r} with shape {shape}')
  if problems:
    problems[0] += hint
    raise StateDictMismatchError(source, problems)
  return traverse_util.unflatten_dict(flat)


def load_state_dict(state_dict: Mapping[str, np.ndarray],
                    abstract_variables,
                    source: str = 'state dict') -> dict:
  """Flax variables from a PyTorch state dict, checked against the model.

  Args:
    state_dict: PyTorch key -> numpy array.
    abstract_variables: the model's variables (arrays or ShapeDtypeStructs),
      e.g. `jax.eval_shape(model.init, ...)`; fixes which keys must exist.
    source: a name for error messages (usually the file name).
  Returns:
    {'params': ..., 'batch_stats': ..., 'sn': ...} of float32 numpy arrays,
    plus `source_stats` if the model has them: a cGANTransfer checkpoint
    holds only the statistics of the classes it was trained on, so the
    source classes' ones are taken to be those too (the best estimate).
  Raises:
    StateDictMismatchError naming each missing, unexpected or mis-shaped key
    with both shapes.
  """
  expected = {}
  for (collection, path), leaf in flat_leaves(abstract_variables).items():
    expected[torch_key(collection,
                       path)] = ((collection,) + path,
                                 torch_shape(collection, path,
                                             tuple(leaf.shape)),
                                 functools.partial(from_torch, collection,
                                                   path))
  variables = gather(state_dict, expected, source, IGNORED_TORCH_KEYS)
  if 'source_stats' in abstract_variables:
    variables['source_stats'] = _copy_tree(variables['batch_stats'])
  return variables


def _copy_tree(tree):
  """A deep copy of a nested dict of numpy arrays."""
  return {
      k: _copy_tree(v) if isinstance(v, Mapping) else np.array(v)
      for k, v in tree.items()
  }


def to_state_dict(variables, aliases: bool = False) -> dict:
  """PyTorch-layout state dict (numpy) of Flax variables (no `sv0`).

  `aliases=True` also writes cGANTransfer's `<ccbn>.pretrain_embedding_w`,
  the ImageNet form's per-layer alias of `shared.weight`, so that the result
  has every key the authors' `state_dict()` has except `sv0`.
  """
  state = {
      torch_key(collection, path): to_torch(collection, path, np.asarray(leaf))
      for (collection, path), leaf in flat_leaves(variables).items()
  }
  if aliases and 'shared.weight' in state:
    for key in [k for k in state if k.endswith('.prev_knowledge_g.u0')]:
      layer = key[:-len('.prev_knowledge_g.u0')]
      state[f'{layer}.pretrain_embedding_w'] = state['shared.weight']
  return state
