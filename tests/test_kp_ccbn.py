"""Knowledge-propagation conditional BN: structure, initialisation, labels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from cgt_jax.models import biggan
from cgt_jax.models import kp
from cgt_jax.transfer import surgery
from tests import reference_cases as rc

MUTABLE = ['batch_stats', 'sn']


def kp_count(**kwargs):
  g = biggan.Generator(**kwargs)
  z = jnp.zeros((2, g.dim_z))
  variables = rc.abstract_variables(g, z, jnp.zeros((2,), jnp.int32))
  return kp.count_parameters(variables['params'])


@pytest.mark.parametrize('form', ['cifar', 'imagenet'])
def test_kp_parameter_count_is_linear_in_new_classes(form):
  if form == 'cifar':
    kwargs = dict(resolution=32, num_classes=10, ch=16)
    layers_, channels = 6, [64] * 6
  else:
    kwargs = dict(
        resolution=128,
        num_classes=12,
        ch=4,
        dim_z=120,
        shared_dim=128,
        hier=True,
        attention=(64,),
        weights_init='ortho')
    layers_, channels = 10, [64, 64, 64, 32, 32, 16, 16, 8, 8, 4]
  counts = [kp_count(num_new_classes=m, **kwargs) for m in (1, 2, 3, 7)]
  n = kwargs['num_classes']
  # Per layer and per gamma/beta, a new class adds one similarity column
  # (N scores) and one residual (C entries); the prior does not grow.
  per_class = sum(2 * (n + c) for c in channels)
  assert len(channels) == layers_
  assert np.diff(counts).tolist() == [per_class, per_class, 4 * per_class]


def onehot_similarity(params, new_class: int, source_class: int):
  """Params whose similarity picks source_class for new_class, no offsets."""
  flat = traverse_util.flatten_dict(params, sep='/')
  out = {}
  for key, value in flat.items():
    value = np.array(value)
    if key.endswith(('similarity_gamma/kernel', 'similarity_beta/kernel')):
      value[:] = 0
      value[new_class, source_class] = 1
    elif '/kp/' in key and not key.endswith('prior_gamma/kernel') and (
        not key.endswith('prior_beta/kernel')):
      value[:] = 0  # similarity/prior biases and residuals
    out[key] = value
  return traverse_util.unflatten_dict(out, sep='/')


def test_onehot_similarity_reproduces_source_class_cifar():
  case = rc.load('cgt32')
  g = case.generator
  n = g.num_classes
  for new_class, source_class in ((0, 7), (3, 2)):
    params = onehot_similarity(case.g_variables['params'], new_class,
                               source_class)
    variables = {**case.g_variables, 'params': params}
    batch = case.z.shape[0]
    new = g.apply(variables, case.z, jnp.full((batch,), n + new_class))
    source = g.apply(variables, case.z, jnp.full((batch,), source_class))
    np.testing.assert_allclose(new, source, rtol=0, atol=1e-6)
    # And the propagated parameters themselves equal class k's.
    bn = params['block_1']['bn2']
    onehot = jax.nn.one_hot(jnp.array([new_class]), g.num_new_classes)
    gain, bias = kp.KnowledgePropagation(
        features=64, num_source_classes=n,
        variant=kp.CIFAR).apply({'params': bn['kp']}, onehot)
    np.testing.assert_allclose(
        gain[0], 1 + bn['gain']['embedding'][source_class], atol=1e-6)
    np.testing.assert_allclose(
        bias[0], bn['bias']['embedding'][source_class], atol=1e-6)


@pytest.mark.parametrize('source_name,cgt_name', [('biggan32', 'cgt32'),
                                                  ('biggan128', 'cgt128')])
def test_source_labels_reproduce_source_generator_exactly(
    source_name, cgt_name):
  source, extended = rc.load(source_name), rc.load(cgt_name)
  z, y = source.z, source.y  # source labels 0..N-1
  expected = source.generator.apply(source.g_variables, z, y)
  actual = extended.generator.apply(extended.g_variables, z, y)
  np.testing.assert_array_equal(actual, expected)
  expected, source_state = source.generator.apply(
      source.g_variables, z, y, train=True, mutable=MUTABLE)
  actual, ext_state = extended.generator.apply(
      extended.g_variables, z, y, train=True, mutable=MUTABLE)
  np.testing.assert_array_equal(actual, expected)
  ext_flat = traverse_util.flatten_dict(ext_state, sep='/')
  for key, value in traverse_util.flatten_dict(source_state, sep='/').items():
    np.testing.assert_array_equal(ext_flat[key], value, err_msg=key)
  # KP layers were not used by this batch, so their u vectors did not move.
  before = traverse_util.flatten_dict(extended.g_variables['sn'], sep='/')
  kp_keys = [k for k in ext_flat if '/kp/' in k]
  assert kp_keys or cgt_name == 'cgt32'  # the CIFAR variant has no SN in KP
  for key in kp_keys:
    np.testing.assert_array_equal(ext_flat[key], before[key.split('/', 1)[1]])


@pytest.mark.parametrize('source_name,cgt_name', [('biggan32', 'cgt32'),
                                                  ('biggan128', 'cgt128')])
def test_training_new_classes_leaves_source_classes_unchanged(
    source_name, cgt_name):
  """New-class batches move the running BN statistics (as in the
  reference), but eval-mode source classes keep the source statistics."""
  source, extended = rc.load(source_name), rc.load(cgt_name)
  z, y = source.z, source.y
  expected = source.generator.apply(source.g_variables, z, y)
  variables = dict(extended.g_variables)
  new_labels = extended.generator.num_classes + jnp.arange(z.shape[0]) % 2
  for _ in range(3):
    _, state = extended.generator.apply(
        variables, z * 3.0, new_labels, train=True, mutable=MUTABLE)
    # Only the statistics: the power iteration also refines the SN vectors
    # of the shared (frozen) convolutions, which no class owns.
    variables['batch_stats'] = state['batch_stats']
  moved = traverse_util.flatten_dict(variables['batch_stats'], sep='/')
  before = traverse_util.flatten_dict(
      extended.g_variables['batch_stats'], sep='/')
  assert all(not np.allclose(moved[k], before[k]) for k in before)
  actual = extended.generator.apply(variables, z, y)
  np.testing.assert_array_equal(actual, expected)
  # New classes are drawn with the moved statistics.
  with_source_stats = extended.generator.apply(
      {
          **variables, 'batch_stats': extended.g_variables['batch_stats']
      }, z, new_labels)
  assert not np.allclose(
      extended.generator.apply(variables, z, new_labels), with_source_stats)


@pytest.mark.parametrize('source_name,cgt_name', [('biggan32', 'cgt32'),
                                                  ('biggan128', 'cgt128')])
def test_init_from_source_matches_load_previous_knowledge(
    source_name, cgt_name):
  source, extended = rc.load(source_name), rc.load(cgt_name)
  # Fresh KP layers taken from the reference (they are random), prior and z
  # projection scrambled: init_from_source must rebuild them from the source.
  fresh = jax.tree_util.tree_map(np.array, extended.g_variables)
  flat = traverse_util.flatten_dict(fresh['params'], sep='/')
  rebuilt = [k for k in flat if '/kp/prior_' in k or '/kp/z_proj_' in k]
  rebuilt = [k for k in rebuilt if k.endswith('kernel')]
  for key in rebuilt:
    flat[key] = np.full_like(flat[key], 7.0)
  fresh['params'] = traverse_util.unflatten_dict(flat, sep='/')
  built = surgery.init_from_source(source.g_variables, fresh)
  expected = traverse_util.flatten_dict(extended.g_variables['params'], sep='/')
  got = traverse_util.flatten_dict(built['params'], sep='/')
  # CIFAR: 6 layers x 2 priors; ImageNet: 10 layers x (2 priors + 2 z).
  assert len(rebuilt) == (12 if cgt_name == 'cgt32' else 40)
  for key in rebuilt:
    np.testing.assert_allclose(
        got[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_init_from_source_rejects_mismatched_architecture():
  source = rc.load('biggan32')
  wide = biggan.Generator(
      resolution=32, num_classes=10, num_new_classes=4, ch=8)
  fresh = rc.random_variables(rc.abstract_variables(wide, source.z, source.y))
  with pytest.raises(
      ValueError,
      match=r'source variable \w+/block_0/\S+ has '
      r'shape \(.*64,?\) but the new extended generator expects '
      r'\(.*32,?\)'):
    surgery.init_from_source(source.g_variables, fresh)


def test_out_of_range_labels_are_rejected():
  case = rc.load('cgt32')
  g, d = case.generator, case.discriminator
  for bad in (g.num_labels, -1):
    labels = case.y.at[0].set(bad)
    with pytest.raises(ValueError, match=r'out of range.*0\.\.13'):
      g.apply(case.g_variables, case.z, labels)
  # This D (from cGANTransfer) has no source projection: only new classes.
  with pytest.raises(ValueError, match=r'out of range.*10\.\.13'):
    d.apply(case.d_variables, case.x_real, case.y_d.at[0].set(3))


def test_eval_mode_writes_no_state():
  case = rc.load('cgt128')
  _, state = case.generator.apply(
      case.g_variables, case.z, case.y, train=False, mutable=MUTABLE)
  for key, value in traverse_util.flatten_dict(state, sep='/').items():
    collection, path = key.split('/', 1)
    original = traverse_util.flatten_dict(case.g_variables[collection], sep='/')
    np.testing.assert_array_equal(value, original[path])


def ablation_generator(**options):
  return biggan.Generator(
      resolution=32,
      num_classes=10,
      num_new_classes=4,
      ch=16,
      new_classes=kp.KPOptions(**options))


def test_ablation_without_residuals_has_no_residuals():
  case = rc.load('cgt32')
  g = ablation_generator(use_residuals=False)
  variables = rc.random_variables(rc.abstract_variables(g, case.z, case.y))
  paths = traverse_util.flatten_dict(variables['params'], sep='/')
  assert not [p for p in paths if 'residual' in p]
  assert kp.regularizers(variables['params'])[1] == 0
  with_res = rc.abstract_variables(ablation_generator(), case.z, case.y)
  # Exactly the residual scalars are gone: 6 layers x 2 x (M x C).
  assert (kp.count_parameters(with_res['params']) -
          kp.count_parameters(variables['params'])) == 6 * 2 * 4 * 64


def test_shared_similarity_is_one_pair_for_all_layers():
  case = rc.load('cgt32')
  g = ablation_generator(shared_similarity=True)
  variables = rc.random_variables(rc.abstract_variables(g, case.z, case.y))
  paths = traverse_util.flatten_dict(variables['params'], sep='/')
  similarity = sorted(p for p in paths if 'similarity' in p)
  assert similarity == [
      'kp_similarity_beta/bias', 'kp_similarity_beta/kernel',
      'kp_similarity_gamma/bias', 'kp_similarity_gamma/kernel'
  ]
  # Changing the shared scores changes every layer's output: the new class
  # image moves, while a source class image stays bitwise the same.
  moved = jax.tree_util.tree_map(lambda a: a, variables)
  moved['params']['kp_similarity_gamma']['bias'] = (
      variables['params']['kp_similarity_gamma']['bias'] + 1.0)
  new_label, source_label = jnp.full((8,), 12), jnp.full((8,), 3)
  assert not np.allclose(
      g.apply(moved, case.z, new_label), g.apply(variables, case.z, new_label))
  np.testing.assert_array_equal(
      g.apply(moved, case.z, source_label),
      g.apply(variables, case.z, source_label))
  l1_shared = kp.regularizers(variables['params'])[0]
  expected = sum(
      np.mean(np.abs(variables['params'][f'kp_similarity_{w}'][p]))
      for w in ('gamma', 'beta')
      for p in ('kernel', 'bias'))
  np.testing.assert_allclose(l1_shared, expected, rtol=1e-6)


def test_mixed_batch_selects_per_sample():
  """In one batch, source samples match a source-only eval and new ones a
  new-only eval (eval mode, where samples are independent)."""
  case = rc.load('cgt128')
  g, v = case.generator, case.g_variables
  labels = jnp.array([0, 12, 5])
  mixed = g.apply(v, case.z, labels)
  for i, label in enumerate(labels.tolist()):
    alone = g.apply(v, case.z[i:i + 1], jnp.array([label]))
    np.testing.assert_allclose(mixed[i:i + 1], alone, atol=1e-5)
