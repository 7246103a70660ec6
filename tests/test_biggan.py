"""BigGAN architecture at every resolution, with attention anywhere listed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgt_jax.models import biggan
from cgt_jax.models import model_io
from tests import reference_cases as rc


@pytest.mark.parametrize('resolution', sorted(biggan.G_ARCH))
def test_generator_shapes_with_attention_at_each_resolution(resolution):
  for attention in biggan.G_ARCH[resolution][2]:
    dim_z = 20 * (len(biggan.G_ARCH[resolution][0]) + 1)
    g = biggan.Generator(
        resolution=resolution,
        num_classes=5,
        num_new_classes=2,
        ch=8,
        dim_z=dim_z,
        shared_dim=16,
        hier=True,
        attention=(attention,))
    z, labels = jnp.zeros((2, dim_z)), jnp.array([1, 6])
    variables = jax.eval_shape(lambda: g.init(jax.random.key(0), z, labels))
    assert f'attention_{biggan.G_ARCH[resolution][2].index(attention)}' in (
        variables['params'])
    out = jax.eval_shape(lambda v: g.apply(v, z, labels), variables)
    assert out.shape == (2, resolution, resolution, 3)


@pytest.mark.parametrize('resolution', sorted(biggan.D_ARCH))
def test_discriminator_shapes_with_attention_at_each_resolution(resolution):
  for attention in sorted(set(biggan.D_ARCH[resolution][3])):
    d = biggan.Discriminator(
        resolution=resolution,
        num_classes=5,
        num_new_classes=2,
        ch=8,
        attention=(attention,))
    x, labels = jnp.zeros((2, resolution, resolution, 3)), jnp.array([1, 6])
    variables = jax.eval_shape(lambda: d.init(jax.random.key(0), x, labels))
    out = jax.eval_shape(lambda v: d.apply(v, x, labels), variables)
    assert out.shape == (2, 1)


def test_channel_plan_at_64():
  g = biggan.Generator(resolution=64, num_classes=3, ch=2)
  variables = rc.random_variables(
      rc.abstract_variables(g, jnp.ones((2, 128)), jnp.array([0, 2])))
  convs = [
      variables['params'][f'block_{i}']['conv1']['kernel'].shape[-1]
      for i in range(4)
  ]
  assert convs == [32, 16, 8, 4]  # [16, 8, 4, 2] * ch
  images = jax.jit(g.apply)(variables, jnp.ones((2, 128)), jnp.array([0, 2]))
  assert images.shape == (2, 64, 64, 3)
  assert np.all(np.abs(images) <= 1)


def test_bad_architecture_requests_are_explained():
  z, labels = jnp.zeros((1, 100)), jnp.zeros((1,), jnp.int32)
  cases = [
      (dict(resolution=48), 'resolution 48 is not supported'),
      (dict(resolution=128, shared_dim=8,
            hier=True), 'dim_z=100 must split into 6'),
      (dict(resolution=128, hier=True), 'hier=True needs a shared class'),
      (dict(resolution=32, attention=(64,)), 'attention at resolution'),
      (dict(resolution=128, ch=4,
            attention=(128,)), 'attention needs at least 8 channels'),
  ]
  for kwargs, message in cases:
    g = biggan.Generator(num_classes=2, dim_z=100, **kwargs)
    with pytest.raises(ValueError, match=message):
      jax.eval_shape(g.init, jax.random.key(0), z, labels)


def test_abstract_variables_trace_an_architecture_once_and_return_copies():
  g = biggan.Generator(resolution=32, num_classes=3, ch=2, dim_z=16)
  d = biggan.Discriminator(resolution=32, num_classes=3, ch=2)
  first = model_io.abstract_generator_variables(g)
  d_first = model_io.abstract_discriminator_variables(d)
  traced = jax.eval_shape(lambda: g.init(
      jax.random.key(0), jnp.zeros((1, 16)), jnp.zeros((1,), jnp.int32)))
  assert first == traced
  first['params'].clear()  # a caller editing its tree
  d_first['params'].clear()
  # An equal module (another instance) hits the cache, unedited.
  cache = model_io._abstract_generator_variables  # pylint: disable=protected-access
  hits = cache.cache_info().hits
  again = model_io.abstract_generator_variables(g.clone())
  assert cache.cache_info().hits == hits + 1
  assert again == traced
  assert model_io.abstract_discriminator_variables(d.clone())['params']
