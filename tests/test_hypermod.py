"""Hyper-Modulation's modulated convolution (`models/hypermod.py`): the
per-sample kernels against a hand computation, the closed-form start
against the pretrained spectrally normalised convolution, the low-rank
option and its bad ranks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgt_jax.models import hypermod
from cgt_jax.models import layers

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

  def modulation(name, row):
    if not rank:
      dense = p[name]
      return (row @ dense['kernel'] + dense['bias']).reshape(IN, OUT)
    left, right = p[f'{name}_left'], p[f'{name}_right']
    a = (row @ left['kernel'] + left['bias']).reshape(IN, rank)
    b = (row @ right['kernel'] + right['bias']).reshape(rank, OUT)
    return p[f'{name}_base'] + a @ b

  for i in range(BATCH):
    weights = w_hat * modulation('gamma', v[i]) + modulation('beta', v[i])
    delta = v[i] @ p['delta_bias']['kernel'] + p['delta_bias']['bias']
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
