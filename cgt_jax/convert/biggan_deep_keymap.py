"""pytorch-pretrained-BigGAN (BigGAN-deep) state-dict keys -> Flax variables.

Numpy in, Flax variables out; no torch import. As `keymap` does for BigGAN,
the expected keys are derived from the model's own (abstract) variable
tree, so missing, unexpected and mis-shaped keys are all reported.

Renames (Flax -> PyTorch), `p` the attention position:

    embeddings                  -> embeddings.weight         (transposed)
    gen_z, bn, conv_to_rgb      -> generator.<same>
    block_i                     -> generator.layers.{i, or i + 1 if i >= p}
    attention                   -> generator.layers.{p}
    attention/{theta, phi, g, o} -> snconv1x1_{theta, phi, g, o_conv}
    kernel -> weight_orig (spectrally normalised layers), `bn/scale` ->
    `bn.weight`, `sn/{u, v}` -> `weight_{u, v}`; batch_stats keep their names.

Layouts: Dense kernel `[in, out]` = weight.T; conv HWIO = OIHW transposed,
and a conv's `weight_v` (indexed like PyTorch's `[O, I*kh*kw]` matrix
columns, I-major) is permuted to the HWI order of the Flax kernel matrix.
"""

import functools
import re
from typing import Mapping, Optional

import numpy as np

from cgt_jax.convert import keymap

_ATTENTION_CONVS = {
    'theta': 'snconv1x1_theta',
    'phi': 'snconv1x1_phi',
    'g': 'snconv1x1_g',
    'o': 'snconv1x1_o_conv',
}
_LEAF_RENAMES = {
    ('params', 'kernel'): 'weight_orig',
    ('params', 'bias'): 'bias',
    ('params', 'gamma'): 'gamma',
    ('params', 'scale'): 'weight',  # the unconditional output BN
    ('batch_stats', 'running_means'): 'running_means',
    ('batch_stats', 'running_vars'): 'running_vars',
    ('sn', 'u'): 'weight_u',
    ('sn', 'v'): 'weight_v',
}
_BLOCK = re.compile(r'block_(\d+)')


def _torch_module(element: str, attention_position: Optional[int]) -> str:
  """The PyTorch module name of one Flax path element."""
  match = _BLOCK.fullmatch(element)
  if match:
    index = int(match.group(1))
    after = attention_position is not None and index >= attention_position
    return f'layers.{index + 1 if after else index}'
  if element == 'attention':
    return f'layers.{attention_position}'
  return _ATTENTION_CONVS.get(element, element)


def torch_key(collection: str, path: tuple,
              attention_position: Optional[int]) -> str:
  """The PyTorch state-dict key of the Flax leaf `collection/path`."""
  if path == ('embeddings',):
    return 'embeddings.weight'
  leaf = _LEAF_RENAMES.get((collection, path[-1]))
  if leaf is None:
    raise ValueError(f'no PyTorch name for {collection}/{"/".join(path)}')
  modules = [_torch_module(e, attention_position) for e in path[:-1]]
  return '.'.join(['generator'] + modules + [leaf])


def torch_shape(path: tuple, flax_shape: tuple) -> tuple:
  """The PyTorch shape of a Flax leaf of shape `flax_shape`."""
  if path == ('embeddings',) or (path[-1] == 'kernel' and len(flax_shape) == 2):
    return tuple(reversed(flax_shape))
  if path[-1] == 'kernel' and len(flax_shape) == 4:
    kh, kw, cin, cout = flax_shape
    return (cout, cin, kh, kw)
  return tuple(flax_shape)


def _from_torch(path: tuple, value: np.ndarray,
                kernel_shape: Optional[tuple]) -> np.ndarray:
  """A PyTorch tensor in the layout of the Flax leaf at `path`.

  `kernel_shape` is the Flax kernel shape of the leaf's module (for `v`).
  """
  if path == ('embeddings',) or (path[-1] == 'kernel' and value.ndim == 2):
    return value.T
  if path[-1] == 'kernel' and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if path[-1] == 'v' and kernel_shape is not None and len(kernel_shape) == 4:
    kh, kw, cin, _ = kernel_shape
    return value.reshape(cin, kh, kw).transpose(1, 2, 0).reshape(-1)
  return value


def load_state_dict(state_dict: Mapping[str, np.ndarray],
                    abstract_variables,
                    attention_position: Optional[int],
                    source: str = 'state dict') -> dict:
  """Flax variables of `biggan_deep.Generator` from a PyTorch state dict.

  Args:
    state_dict: PyTorch key -> numpy array (`BigGAN.state_dict()`).
    abstract_variables: `biggan_deep.abstract_variables(generator)`.
    attention_position: the generator's `attention_position`.
    source: a name for error messages (usually the file name).
  Returns:
    {'params', 'batch_stats', 'sn'} of float32 numpy arrays.
  Raises:
    keymap.StateDictMismatchError naming every missing, unexpected or
    mis-shaped key with both shapes.
  """
  leaves = keymap.flat_leaves(abstract_variables)
  kernels = {
      path[:-1]: tuple(leaf.shape)
      for (collection, path), leaf in leaves.items()
      if collection == 'params' and path[-1] == 'kernel'
  }
  expected = {}
  for (collection, path), leaf in leaves.items():
    expected[torch_key(
        collection, path,
        attention_position)] = ((collection,) + path,
                                torch_shape(path, tuple(leaf.shape)),
                                functools.partial(
                                    _from_torch,
                                    path,
                                    kernel_shape=kernels.get(path[:-1])))
  return keymap.gather(state_dict, expected, source)
