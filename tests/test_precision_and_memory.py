"""The accelerator switches: `config.dtype='bfloat16'` (mixed precision) and
`config.remat` (rematerialised G and D blocks), tested on CPU."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgt_jax.data import pipeline
from cgt_jax.models import biggan
from cgt_jax.models import model_io
from cgt_jax.training import state as state_lib
from cgt_jax.training import steps
from tests import reference_cases as rc
from tests.test_train import flat
from tests.test_train import tiny_config
from tests.test_train import transfer_spec

# bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2%), and
# every layer adds its own; on the fixture models (measured, worst case
# cgt128): images differ by 0.003 on average and 0.051 at most on [-1, 1];
# D's logits by 2.9% of their largest.
IMAGE_MEAN_ERROR = 0.01
IMAGE_MAX_ERROR = 0.1
LOGIT_RELATIVE_ERROR = 0.06
# Losses of a bfloat16 run against the float32 one, step by step
# (measured: within 1%).
LOSS_RELATIVE_GAP = 0.05


@pytest.mark.parametrize('name', rc.CASES)
def test_bfloat16_networks_stay_close_to_float32_on_the_fixture_models(name):
  case = rc.load(name)
  as_bf16 = lambda module: module.clone(dtype=jnp.bfloat16)
  # Jitted: one compilation instead of one per operation.
  generate = lambda g: jax.jit(g.apply)(case.g_variables, case.z, case.y)
  discriminate = lambda d: jax.jit(d.apply)(case.d_variables, case.x_real, case.
                                            y_d)
  images_32 = generate(case.generator)
  images_16 = generate(as_bf16(case.generator))
  assert images_16.dtype == jnp.float32  # tanh in float32
  error = np.abs(np.asarray(images_16) - np.asarray(images_32))
  assert error.mean() < IMAGE_MEAN_ERROR and error.max() < IMAGE_MAX_ERROR
  assert error.max() > 0  # bfloat16 did run
  logits_32 = discriminate(case.discriminator)
  logits_16 = discriminate(as_bf16(case.discriminator))
  assert logits_16.dtype == jnp.float32
  assert (np.abs(logits_16 - logits_32).max()
          < LOGIT_RELATIVE_ERROR * np.abs(logits_32).max())


def test_bfloat16_convolutions_are_bfloat16_in_the_program():
  case = rc.load('cgt32')
  generator = case.generator.clone(dtype=jnp.bfloat16)
  text = jax.jit(generator.apply).lower(case.g_variables, case.z,
                                        case.y).as_text()
  convolutions = re.findall(r'stablehlo\.convolution.*', text)
  assert convolutions and all('bf16' in line for line in convolutions)


def _run(config, source, num_steps=4):
  """`(per-step metrics, final state)` of a tiny transfer."""
  _, data, spec = transfer_spec(config, source)
  setup = spec.setup
  state = state_lib.create(setup, spec.g_variables, spec.d_variables, 0)
  sampler = pipeline.BatchSampler(data.target, setup.real_per_step, 0)
  step = steps.make_train_step(setup)
  history = []
  for index in range(num_steps):
    images, labels = sampler.batch(index)
    state, metrics = step(state, {
        'image': jnp.asarray(images),
        'label': jnp.asarray(labels)
    })
    history.append(jax.device_get(metrics))
  return history, state


@pytest.fixture(scope='module')
def float32_run(random_source):
  return _run(tiny_config(), random_source)


def test_bfloat16_training_is_finite_tracks_float32_and_keeps_float32_state(
    random_source, float32_run):
  config = tiny_config()
  config.dtype = 'bfloat16'
  history, state = _run(config, random_source)
  reference, _ = float32_run
  for metrics, expected in zip(history, reference):
    for key in ('d_loss', 'g_loss'):
      value, target = np.mean(metrics[key]), np.mean(expected[key])
      assert np.isfinite(value)
      assert abs(value -
                 target) <= LOSS_RELATIVE_GAP * max(abs(target), 1), (key,
                                                                      value,
                                                                      target)
    assert all(np.asarray(v).dtype == np.float32 for v in metrics.values())
  # Parameters, Adam moments, BN statistics, spectral-norm vectors: float32.
  floats = [
      leaf for leaf in jax.tree_util.tree_leaves(state)
      if jnp.issubdtype(leaf.dtype, jnp.floating)
  ]
  assert floats and all(leaf.dtype == jnp.float32 for leaf in floats)


def _remat_count(jaxpr) -> int:
  return len(re.findall(r'\b(?:remat2?|checkpoint)\[', str(jaxpr)))


def test_remat_recomputes_every_block_and_changes_no_number(
    random_source, float32_run):
  config = tiny_config()
  config.remat = True
  history, state = _run(config, random_source)
  reference, reference_state = float32_run
  for metrics, expected in zip(history, reference):
    for key in expected:
      np.testing.assert_allclose(
          metrics[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)
  a, b = flat(reference_state.g_params), flat(state.g_params)
  for key in a:
    np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-7)
  # The switch reaches the program: one checkpointed call per G and D block.
  g = biggan.Generator(resolution=32, num_classes=3, ch=2, dim_z=16)
  d = biggan.Discriminator(resolution=32, num_classes=3, ch=2)
  z, y = jnp.zeros((2, 16)), jnp.zeros((2,), jnp.int32)
  x = jnp.zeros((2, 32, 32, 3))
  for module, inputs, blocks in ((g, (z, y), 3), (d, (x, y), 4)):
    variables = module.init(jax.random.key(0), *inputs)
    plain = _gradient_jaxpr(module, variables, inputs)
    remat = _gradient_jaxpr(module.clone(remat=True), variables, inputs)
    assert (_remat_count(plain), _remat_count(remat)) == (0, blocks)
    # The same variables fit: remat is not part of the architecture.
    assert 'remat' not in model_io.module_arch(module.clone(remat=True))


def _gradient_jaxpr(module, variables, inputs):
  """The jaxpr of the gradient of a train-mode forward's sum."""

  def loss(params):
    out, _ = module.apply({
        **variables, 'params': params
    },
                          *inputs,
                          train=True,
                          mutable=['batch_stats', 'sn'])
    return out.sum()

  return jax.make_jaxpr(jax.grad(loss))(variables['params'])
