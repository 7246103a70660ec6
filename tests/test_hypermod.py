"""Hyper-Modulation's modulated convolution (`models/hypermod.py`): the
per-sample kernels against a hand computation, the closed-form start
against the pretrained spectrally normalised convolution, the low-rank
option and its bad ranks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from cgt_jax.models import biggan
from cgt_jax.models import hypermod
from cgt_jax.models import layers
from cgt_jax.training import losses
from cgt_jax.transfer import groups
from cgt_jax.transfer import surgery
from tests import reference_cases as rc

IN, OUT, K, BATCH = 5, 6, 3, 4


def _conv(x, kernel):
  """One NHWC image through one HWIO kernel, 'same' padding (numpy in,
  XLA's convolution)."""
  return np.asarray(
      jax.lax.conv_general_dilated(
          jnp.asarray(x)[None],
          jnp.asarray(kernel), (1, 1),
          'SAME',
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))[0])


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(BATCH, 8, 8, IN)).astype(np.float32)
  v = rng.normal(size=(BATCH, hypermod.TASK_DIM)).astype(np.float32)
  kernel = rng.normal(size=(K, K, IN, OUT)).astype(np.float32)
  bias = rng.normal(size=(OUT,)).astype(np.float32)
  return x, v, kernel, bias


def _random(tree, seed):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda a: (0.1 * rng.normal(size=a.shape)).astype(np.float32), tree)


@pytest.mark.parametrize('rank', [0, 2])
def test_each_sample_is_convolved_with_its_hand_computed_kernel(rank):
  x, v, kernel, bias = _inputs()
  conv = hypermod.ModulatedConv(OUT, K, rank=rank)
  variables = conv.init(jax.random.key(0), x, v)
  params = _random(variables['params'], 1)
  constants = hypermod.constants_from(kernel, bias)
  got = np.asarray(
      conv.apply({
          'params': params,
          hypermod.CONSTANTS: constants
      }, x, v))
  # By hand, in numpy.
  p = jax.tree_util.tree_map(np.asarray, params)
  w_hat = (kernel - kernel.mean((0, 1))) / kernel.std((0, 1))
  b_hat = (bias - bias.mean()) / bias.std()
  np.testing.assert_allclose(constants['kernel'], w_hat, rtol=1e-5, atol=1e-6)

  # Every linear layer has an equalised learning rate: W sqrt(2 / fan_in).
  def linear(row, dense):
    return row @ dense['kernel'] * np.sqrt(2 / row.shape[-1]) + dense['bias']

  def modulation(name, row):
    if not rank:
      return linear(row, p[name]).reshape(IN, OUT)
    a = linear(row, p[f'{name}_left']).reshape(IN, rank)
    b = linear(row, p[f'{name}_right']).reshape(rank, OUT)
    return p[f'{name}_base'] + a @ b

  for i in range(BATCH):
    weights = (w_hat * modulation('gamma', v[i]) +
               modulation('beta', v[i])) * np.sqrt(2 / (K * K * IN))
    delta = linear(v[i], p['delta_bias'])
    expected = _conv(x[i], weights) + b_hat + delta
    np.testing.assert_allclose(got[i], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('rank', [0, 3])
def test_the_closed_form_start_draws_the_pretrained_layer_for_every_class(rank):
  """gamma = s, beta = m: the spectrally normalised source convolution, in
  eval mode, for any class vector."""
  x, v, _, _ = _inputs(2)
  source = layers.SNConv(OUT, K, eps=1e-8)
  source_vars = source.init(jax.random.key(3), x)
  source_vars = {
      'params': _random(source_vars['params'], 4),
      'sn': source_vars['sn']
  }
  expected = np.asarray(source.apply(source_vars, x))
  kernel = hypermod.pretrained_kernel(source_vars, 1e-8)
  bias = source_vars['params']['bias']
  conv = hypermod.ModulatedConv(OUT, K, rank=rank)
  params = hypermod.closed_form_start(
      _random(conv.init(jax.random.key(0), x, v)['params'], 5), kernel, bias)
  got = conv.apply(
      {
          'params': params,
          hypermod.CONSTANTS: hypermod.constants_from(kernel, bias)
      }, x, v)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_constant_taps_keep_their_value():
  kernel = np.ones((K, K, 2, 2), np.float32) * 0.3
  w_hat, mean, std = hypermod.standardize_kernel(kernel)
  np.testing.assert_array_equal(w_hat, 0)
  np.testing.assert_allclose(w_hat * std + mean, kernel, rtol=1e-7)


def test_class_network_gives_one_vector_per_class():
  net = hypermod.ClassNetwork(num_classes=3)
  labels = jnp.array([0, 2, 2])
  v = net.apply(net.init(jax.random.key(0), labels), labels)
  assert v.shape == (3, hypermod.TASK_DIM)
  np.testing.assert_array_equal(v[1], v[2])
  assert not np.allclose(v[0], v[1])


@pytest.mark.parametrize('rank', [-1, 6])
def test_a_rank_the_layer_cannot_take_is_explained(rank):
  x, v, _, _ = _inputs()
  conv = hypermod.ModulatedConv(OUT, K, rank=rank)
  with pytest.raises(
      ValueError,
      match=rf'hypermod rank {rank} does not fit a 5 -> 6 '
      r'convolution: use 0 \(full rank, the paper\) or a rank '
      r'from 1 to 5'):
    conv.init(jax.random.key(0), x, v)


def _modulated_generator(closed_form, shared_dim=0, hier=False):
  """A one-class (unconditional) source BigGAN and its Hyper-Modulation
  generator with 3 classes (labels 1..3), variables from the source."""
  source = biggan.Generator(
      resolution=32,
      num_classes=1,
      ch=2,
      dim_z=20,
      shared_dim=shared_dim,
      hier=hier)
  z = jax.random.normal(jax.random.key(0), (6, 20))
  source_vars = rc.random_variables(
      rc.abstract_variables(source, z, jnp.zeros(6, jnp.int32)), 7)
  modulated = source.clone(num_new_classes=3, new_classes=hypermod.Modulation())
  labels = jnp.array([0, 1, 2, 3, 1, 0])
  fresh = modulated.init(jax.random.key(1), z, labels)
  variables = surgery.start_modulated_convs(
      surgery.init_from_source(source_vars, fresh), source.sn_eps, closed_form)
  return source, source_vars, modulated, variables, z, labels


@pytest.mark.parametrize('shared_dim,hier', [(0, False), (8, True)])
def test_the_closed_form_start_draws_the_unconditional_source_for_every_class(
    shared_dim, hier):
  source, source_vars, modulated, variables, z, labels = (
      _modulated_generator(True, shared_dim, hier))
  expected = source.apply(source_vars, z, jnp.zeros_like(labels))
  got = modulated.apply(variables, z, labels)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-6)
  # The source's own label is the source model, bit for bit.
  np.testing.assert_array_equal(got[labels == 0], expected[labels == 0])
  trained = {
      p for p in _flat(variables['params'])
      if groups.group_of(p) in groups.HYPER_MODULATION
  }
  assert trained == {
      p for p in _flat(variables['params'])
      if p.startswith('class_network/') or '_mod/' in p
  }
  twins = {p.split('/')[1] for p in trained if '_mod/' in p}
  assert twins == {'conv1_mod', 'conv2_mod'}


def test_without_the_closed_form_the_classes_differ_from_the_source():
  source, source_vars, modulated, variables, z, labels = (
      _modulated_generator(False))
  got = np.asarray(modulated.apply(variables, z, labels))
  expected = np.asarray(source.apply(source_vars, z, jnp.zeros_like(labels)))
  np.testing.assert_array_equal(got[labels == 0], expected[labels == 0])
  assert not np.allclose(got[labels > 0], expected[labels > 0], atol=1e-3)


def _flat(tree):
  return traverse_util.flatten_dict(tree, sep='/')


def test_barlow_twins_equals_a_hand_computation():
  a = np.array(
      [[1.0, 2.0, 0.5], [0.0, -1.0, 2.0], [3.0, 0.5, -1.0], [-2.0, 1.0, 0.0]],
      np.float32)
  b = np.array(
      [[0.5, 1.0, 1.0], [1.0, -2.0, 0.0], [2.0, 1.5, -0.5], [-1.0, 0.0, 1.0]],
      np.float32)

  def bn(x):  # BatchNorm1d(affine=False) in train mode, written out
    return (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)

  c = bn(a).T @ bn(b) / len(a)
  expected = sum((1 - c[i, i])**2 for i in range(3)) + 5e-3 * sum(
      c[i, j]**2 for i in range(3) for j in range(3) if i != j)
  np.testing.assert_allclose(losses.barlow_twins(a, b), expected, rtol=1e-5)
  # Identical views of decorrelated features: the minimum, 0.
  white = np.linalg.qr(np.random.default_rng(0).normal(size=(8, 3)))[0]
  assert float(losses.barlow_twins(white, white)) < 1e-3
