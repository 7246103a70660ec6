"""PyTorch key mapping: full-size key dumps, round trips and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgt_jax.convert import keymap
from cgt_jax.models import biggan
from tests import reference_cases as rc

KEYS = rc.FIXTURES / 'keys'
IMAGENET = dict(
    resolution=128, ch=96, attention=(64,), weights_init='ortho', sn_eps=1e-6)
DUMPS = {
    'biggan_pytorch_C32_ch64_80cls': (dict(resolution=32, num_classes=80),
                                      dict(resolution=32, num_classes=80)),
    'cgantransfer_C32_80to20':
        (dict(resolution=32, num_classes=80, num_new_classes=20),
         dict(
             resolution=32,
             num_classes=80,
             num_new_classes=20,
             source_projection=False)),
    'biggan_pytorch_I128_ch96':
        (dict(IMAGENET, num_classes=1000, dim_z=120, shared_dim=128,
              hier=True), dict(IMAGENET, num_classes=1000)),
    'cgantransfer_I128_1000to5': (dict(
        IMAGENET,
        num_classes=1000,
        num_new_classes=5,
        dim_z=120,
        shared_dim=128,
        hier=True),
                                  dict(
                                      IMAGENET,
                                      num_classes=1000,
                                      num_new_classes=5,
                                      source_projection=False)),
}


def read_dump(name: str):
  """{net: {key: shape}} and {net: total params} from a reference dump."""
  keys, totals = {'G': {}, 'D': {}}, {}
  for line in (KEYS / f'{name}_G_D_keys.tsv').read_text().splitlines():
    net, key, shape = line.split('\t')[:3]
    if key == 'TOTAL_PARAMS':
      totals[net] = int(shape)
    elif not keymap.IGNORED_TORCH_KEYS.search(key):
      keys[net][key] = tuple(int(s) for s in shape.strip('()').split(',') if s)
  return keys, totals


def mapped_shapes(model, *inputs):
  variables = rc.abstract_variables(model, *inputs)
  shapes = {}
  for (collection, names), leaf in keymap.flat_leaves(variables).items():
    shapes[keymap.torch_key(collection, names)] = keymap.torch_shape(
        collection, names, leaf.shape)
  return shapes, variables


@pytest.mark.parametrize('name', sorted(DUMPS))
def test_full_size_models_map_onto_the_reference_keys(name):
  g_kwargs, d_kwargs = DUMPS[name]
  keys, totals = read_dump(name)
  g = biggan.Generator(**g_kwargs)
  d = biggan.Discriminator(**d_kwargs)
  labels = jnp.full((2,), g.num_labels - 1)
  g_shapes, g_vars = mapped_shapes(g, jnp.zeros((2, g.dim_z)), labels)
  res = g_kwargs['resolution']
  d_shapes, d_vars = mapped_shapes(d, jnp.zeros((2, res, res, 3)), labels)
  assert g_shapes == keys['G']
  assert d_shapes == keys['D']
  # The dumps count unique parameters (not buffers): so must we.
  count = lambda v: sum(
      np.prod(x.shape) for x in jax.tree_util.tree_leaves(v['params']))
  assert count(g_vars) == totals['G']
  assert count(d_vars) == totals['D']


def test_missing_key_is_named_with_expected_shape():
  case = rc.load('cgt32')
  state = case.state_dict('G.pth')
  del state['blocks.1.0.conv2.weight']
  abstract = rc.abstract_variables(case.generator, case.z, case.y)
  with pytest.raises(
      keymap.StateDictMismatchError,
      match=r"^G\.pth: missing key 'blocks\.1\.0\.conv2\.weight'"
      r" \(model expects shape \(64, 64, 3, 3\)\)$"):
    keymap.load_state_dict(state, abstract, 'G.pth')


def test_unexpected_key_is_named_with_its_shape():
  case = rc.load('biggan32')
  state = case.state_dict('D.pth')
  state['blocks.9.0.conv1.weight'] = np.zeros((2, 3, 3, 3), np.float32)
  abstract = rc.abstract_variables(case.discriminator, case.x_real, case.y_d)
  with pytest.raises(
      keymap.StateDictMismatchError,
      match=r"unexpected key 'blocks\.9\.0\.conv1\.weight' "
      r"with shape \(2, 3, 3, 3\)"):
    keymap.load_state_dict(state, abstract, 'D.pth')


def test_shape_mismatch_names_key_and_both_shapes():
  case = rc.load('cgt128')
  state = case.state_dict('G.pth')
  state['blocks.0.0.bn1.res_g.weight'] = np.zeros((64, 5), np.float32)
  state['linear.bias'] = np.zeros((7,), np.float32)
  abstract = rc.abstract_variables(case.generator, case.z, case.y)
  with pytest.raises(keymap.StateDictMismatchError) as error:
    keymap.load_state_dict(state, abstract, 'G.pth')
  assert len(error.value.problems) == 2
  assert ("key 'blocks.0.0.bn1.res_g.weight' has shape (64, 5) but the model "
          'expects (64, 3)') in error.value.problems
  assert "key 'linear.bias' has shape (7,) but the model expects (1024,)" in (
      error.value.problems)
  assert '\n' not in str(error.value)


@pytest.mark.parametrize('name', rc.CASES)
def test_state_dicts_round_trip_bitwise(name):
  case = rc.load(name)
  for filename, variables in (('G.pth', case.g_variables), ('D.pth',
                                                            case.d_variables)):
    original = case.state_dict(filename)
    back = keymap.to_state_dict(variables)
    kept = {k for k in original if not keymap.IGNORED_TORCH_KEYS.search(k)}
    assert set(back) == kept
    for key in kept:
      np.testing.assert_array_equal(back[key], original[key], err_msg=key)
