"""Layer semantics: PyTorch batch norm, BigGAN spectral norm, attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgt_jax.models import layers


def test_batch_norm_uses_biased_variance_and_updates_unbiased():
  x = jax.random.normal(jax.random.key(0), (4, 3, 3, 5)) * 3 + 2
  bn = layers.AffineBatchNorm(eps=1e-5)
  variables = bn.init(jax.random.key(1), x)
  out, state = bn.apply(variables, x, train=True, mutable=['batch_stats'])
  flat = np.asarray(x).reshape(-1, 5).astype(np.float64)
  mean, biased = flat.mean(0), flat.var(0)
  np.testing.assert_allclose(
      np.asarray(out).reshape(-1, 5), (flat - mean) / np.sqrt(biased + 1e-5),
      atol=1e-5)
  n = flat.shape[0]
  stats = state['batch_stats']
  np.testing.assert_allclose(stats['mean'], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(
      stats['var'], 0.9 + 0.1 * biased * n / (n - 1), rtol=1e-5)
  # Eval mode normalises with the running statistics.
  evaluated = bn.apply({**variables, **state}, x)
  np.testing.assert_allclose(
      np.asarray(evaluated).reshape(-1, 5),
      (flat - 0.1 * mean) / np.sqrt(stats['var'] + 1e-5),
      atol=1e-4)


def test_spectral_norm_converges_to_top_singular_value():
  dense = layers.SNDense(6, eps=1e-12)
  x = jnp.ones((1, 9))
  variables = dense.init(jax.random.key(0), x)
  kernel = np.asarray(variables['params']['kernel'], np.float64)
  top = np.linalg.svd(kernel, compute_uv=False)[0]
  state = {'sn': variables['sn']}
  sigmas = []
  for _ in range(30):
    u = np.asarray(state['sn']['u'])
    sigmas.append(
        layers.power_iteration(
            jnp.asarray(kernel.T, jnp.float32), jnp.asarray(u), 1e-12)[0])
    _, state = dense.apply({
        **variables,
        **state
    },
                           x,
                           train=True,
                           mutable=['sn'])
  assert abs(float(sigmas[0]) - top) > 1e-3  # one iteration is not converged
  np.testing.assert_allclose(float(sigmas[-1]), top, rtol=1e-4)
  # The forward divides the weight by the estimate.
  out = dense.apply({**variables, **state}, x)
  u = np.asarray(state['sn']['u'])
  sigma = layers.power_iteration(
      jnp.asarray(kernel.T, jnp.float32), jnp.asarray(u), 1e-12)[0]
  np.testing.assert_allclose(
      out, x @ (kernel / float(sigma)) + variables['params']['bias'], rtol=1e-5)


def test_spectral_norm_u_only_advances_in_train_mode_when_used():
  dense = layers.SNDense(4)
  x = jnp.ones((2, 3))
  variables = dense.init(jax.random.key(0), x)
  u0 = np.asarray(variables['sn']['u'])
  _, evaluated = dense.apply(variables, x, train=False, mutable=['sn'])
  np.testing.assert_array_equal(evaluated['sn']['u'], u0)
  _, unused = dense.apply(
      variables, x, train=True, used=jnp.bool_(False), mutable=['sn'])
  np.testing.assert_array_equal(unused['sn']['u'], u0)
  _, trained = dense.apply(variables, x, train=True, mutable=['sn'])
  assert not np.allclose(trained['sn']['u'], u0)
  np.testing.assert_allclose(np.linalg.norm(trained['sn']['u']), 1, rtol=1e-6)


def test_attention_starts_as_identity_and_attends_over_pooled_keys():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
  attention = layers.Attention()
  variables = attention.init(jax.random.key(1), x)
  np.testing.assert_array_equal(attention.apply(variables, x), x)
  assert variables['params']['phi']['kernel'].shape == (1, 1, 16, 2)
  assert variables['params']['g']['kernel'].shape == (1, 1, 16, 8)
  params = {**variables['params'], 'gamma': jnp.float32(1.0)}
  out = attention.apply({**variables, 'params': params}, x)
  assert not np.allclose(out, x)


def test_attention_position_must_exist():
  assert layers.attention_positions([8, 16, 32, 64], [64]) == (3,)
  with pytest.raises(ValueError, match=r'attention at resolution\(s\) \[48\]'):
    layers.attention_positions([8, 16, 32, 64], [48])


@pytest.mark.parametrize('shape,kernel_size', [((3, 8, 8, 5), 3),
                                               ((2, 7, 5, 4), 3),
                                               ((3, 8, 8, 5), 1),
                                               ((2, 4, 4, 3), 4)])
def test_conv_gradients_equal_xla_convolution_gradients(shape, kernel_size):
  """conv2d_same computes its kernel gradient as per-tap matmuls (faster on
  XLA:CPU); values and the input gradient must be XLA's own."""
  x = jax.random.normal(jax.random.key(0), shape)
  kernel = jax.random.normal(
      jax.random.key(1), (kernel_size, kernel_size, shape[-1], 6))

  def xla_conv(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  loss = lambda conv: lambda x, k: jnp.sum(jnp.sin(conv(x, k)))
  # The custom-VJP convolution itself: conv2d_same uses it from 128
  # channels on, too wide for a quick test.
  conv = layers._conv_same  # pylint: disable=protected-access
  ours = jax.grad(loss(conv), (0, 1))(x, kernel)
  expected = jax.grad(loss(xla_conv), (0, 1))(x, kernel)
  for got, want in zip(ours, expected):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(conv(x, kernel), xla_conv(x, kernel))


def test_matmul_kernel_gradient_only_for_wide_convolutions_on_eigen(
    monkeypatch):
  pays = layers._matmul_kernel_grad_pays  # pylint: disable=protected-access
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  # Narrow convolutions (the demo's) keep XLA's gradient exactly.
  assert not pays((3, 3, 32, 32))
  assert pays((3, 3, 256, 256))
  assert pays((3, 3, 3, 256))
  # With YNNPACK convolutions XLA's own kernel gradient is the faster one.
  monkeypatch.setenv('XLA_FLAGS',
                     '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise')
  assert not pays((3, 3, 256, 256))
