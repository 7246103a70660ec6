"""Hyper-Modulation as a method (`methods.HyperModulation`): what trains and
at which rate, the frozen bits through a train step, self-alignment, the
D head and its losses (R1, the two augmented views), and the errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from cgt_jax import default_config
from cgt_jax.models import biggan
from cgt_jax.models import hypermod
from cgt_jax.models import model_io
from cgt_jax.training import augment
from cgt_jax.training import loop
from cgt_jax.training import losses
from cgt_jax.training import state as state_lib
from cgt_jax.training import steps
from cgt_jax.transfer import groups
from cgt_jax.transfer import methods
from cgt_jax.transfer import self_alignment
from cgt_jax.transfer import stages
from cgt_jax.transfer import surgery
from tests import reference_cases as rc
from tests.test_train import interrupt_at
from tests.test_train import save_models
from tests.test_train import tiny_config
from tests.test_train import transfer_spec

BLOCKS = 3  # of the 32 px BigGAN
# Exactly what trains: the class network and, per block, the hypernetworks
# of both modulated 3x3 convolutions (full rank: gamma, beta, delta_b).
EXPECTED_G = ({'class_network/embedding'} | {
    f'class_network/linear_{i}/{p}' for i in range(4)
    for p in ('kernel', 'bias')
} | {
    f'block_{b}/{conv}_mod/{part}/{p}' for b in range(BLOCKS)
    for conv in ('conv1', 'conv2') for part in ('gamma', 'beta', 'delta_bias')
    for p in ('kernel', 'bias')
})
FROZEN_D = {
    'block_0/conv1/kernel', 'block_0/conv1/bias', 'block_0/conv_sc/kernel',
    'block_0/conv_sc/bias'
}


def hypermod_config(**options):
  """The tiny config with the authors' settings of Hyper-Modulation (the
  demo config, which tiny_config starts from, changes two of them)."""
  config = tiny_config()
  config.model.conditional = False
  config.method = 'hypermod'
  defaults = default_config.get_config()
  config.method_options.hypermod = defaults.method_options.hypermod
  config.method_overrides.hypermod = defaults.method_overrides.hypermod
  config.method_options.hypermod.start = 'closed_form'
  config.method_options.hypermod.update(options)
  return config


@pytest.fixture(scope='module')
def unconditional_source(tmp_path_factory):
  """A saved random one-class source model (G and D without projection)."""
  return save_models(
      stages.fresh_models(tiny_config(), 1, projection=False),
      tmp_path_factory.mktemp('source') / 'model')


@pytest.fixture(scope='module')
def spec(unconditional_source):
  return transfer_spec(hypermod_config(), unconditional_source)[2]


def _flat(tree):
  return traverse_util.flatten_dict(jax.device_get(tree), sep='/')


def test_exactly_the_hand_written_parameters_train(spec):
  g_trained = {p for p, t in _flat(spec.g_trainable).items() if t}
  assert g_trained == EXPECTED_G
  d_flat = _flat(spec.d_trainable)
  assert {p for p, t in d_flat.items() if not t} == FROZEN_D
  # The K-logit head replaces the source's output layer.
  assert 'class_heads/kernel' in d_flat and not any(
      p.startswith(('linear/', 'embed/', 'new_embed/')) for p in d_flat)
  assert spec.discriminator.class_heads
  assert spec.setup.losses == losses.HyperModulationLosses(
      losses.NonSaturating(), 10.0, 0.01, 5e-3)
  assert spec.label_range == (1, 3)  # after the source's one class


def test_class_network_trains_at_a_thousandth_of_the_rate(spec):
  """Adam's first step moves each parameter by about its learning rate."""
  params = spec.g_variables['params']
  optimizer = spec.setup.g_optimizer
  # One program for the whole update, not one per operation and leaf.
  first_update = jax.jit(lambda p: optimizer.update(
      jax.tree_util.tree_map(jnp.ones_like, p), optimizer.init(p), p)[0])
  updates = first_update(params)
  steps_taken = {p: float(np.max(np.abs(u))) for p, u in _flat(updates).items()}
  for path, size in steps_taken.items():
    if path.startswith('class_network/'):
      np.testing.assert_allclose(size, 2e-6, rtol=1e-3)
    elif path in EXPECTED_G:
      np.testing.assert_allclose(size, 2e-3, rtol=1e-3)
    else:
      assert size == 0.0, path


def test_a_train_step_keeps_every_frozen_parameter_bit_identical(spec):
  setup = spec.setup
  state = state_lib.create(setup, spec.g_variables, spec.d_variables, 0)
  before_g, before_d = _flat(state.g_params), _flat(state.d_params)
  rng = np.random.default_rng(0)
  batch = {
      'image':
          rng.uniform(-1, 1,
                      (setup.real_per_step, 32, 32, 3)).astype(np.float32),
      'label':
          np.ones((setup.real_per_step,), np.int32),
  }
  step = jax.jit(lambda s, b: steps.train_step(s, b, setup=setup))
  # Two steps: the closed-form start's hypernetwork kernels are zero, so
  # the class network's gradient is zero until they have moved once.
  for _ in range(2):
    state, metrics = step(state, batch)
  after_g, after_d = _flat(state.g_params), _flat(state.d_params)
  for path, value in before_g.items():
    changed = not np.array_equal(value, after_g[path])
    assert changed == (path in EXPECTED_G), path
  for path, value in before_d.items():
    changed = not np.array_equal(value, after_d[path])
    assert changed == (path not in FROZEN_D), path
  for term in ('d_r1', 'd_barlow_twins_real', 'd_barlow_twins_fake'):
    assert np.all(np.isfinite(metrics[term])) and np.all(metrics[term] > 0)


def _one_class_modulated():
  source = biggan.Generator(resolution=32, num_classes=1, ch=2, dim_z=16)
  z = jnp.zeros((2, 16))
  source_vars = rc.random_variables(
      rc.abstract_variables(source, z, jnp.zeros(2, jnp.int32)), 3)
  dummy = source.clone(num_new_classes=1, new_classes=hypermod.Modulation())
  fresh = dummy.init(jax.random.key(1), z, jnp.zeros(2, jnp.int32))
  variables = surgery.start_modulated_convs(
      surgery.init_from_source(source_vars, fresh), source.sn_eps, False)
  return dummy, variables


def test_self_alignment_lowers_the_l1_and_trains_only_the_hypermod_layers():
  dummy, variables = _one_class_modulated()
  aligned, report = self_alignment.align(
      dummy,
      variables,
      num_steps=8,
      batch_size=8,
      lr=2e-3,
      class_network_factor=1e-2,
      seed=0,
      log_every=7)
  assert report['l1_last'] < 0.8 * report['l1_first']
  before, after = _flat(variables), _flat(aligned)
  for path, value in before.items():
    trained = path.startswith('params/') and groups.group_of(
        path[len('params/'):]) in groups.HYPER_MODULATION
    assert (not np.array_equal(value, after[path])) == trained, path
  # The dummy class's embedding row goes to every new class.
  target = dummy.clone(num_new_classes=3)
  target_vars = target.init(
      jax.random.key(2), jnp.zeros((2, 16)), jnp.zeros(2, jnp.int32))
  spread = self_alignment.to_classes(aligned, target_vars)
  table = spread['params']['class_network']['embedding']
  assert table.shape[0] == 3
  row = aligned['params']['class_network']['embedding'][0]
  for k in range(3):
    np.testing.assert_array_equal(table[k], row)
  z = jax.random.normal(jax.random.key(5), (3, 16))
  np.testing.assert_array_equal(
      target.apply(spread, z, jnp.array([1, 2, 3])),
      dummy.apply(aligned, z, jnp.array([1, 1, 1])))


def test_r1_of_a_linear_critic_is_its_squared_weight_norm():
  weights = jnp.arange(12.0).reshape(1, 2, 2, 3) / 10.0

  def critic(images, labels):
    del labels
    logits = jnp.sum(images * weights, axis=(1, 2, 3))[:, None]
    return logits, logits

  images = jax.random.normal(jax.random.key(0), (5, 2, 2, 3))
  np.testing.assert_allclose(
      losses.r1_penalty(critic, images, jnp.zeros(5, jnp.int32)),
      float(jnp.sum(weights**2)),
      rtol=1e-6)


def test_augmentations_keep_shape_and_range_and_each_step_is_exact():
  images = jax.random.uniform(jax.random.key(0), (6, 16, 16, 3), minval=-1.0)
  for view in augment.VIEWS:
    out = view(jax.random.key(1), images)
    assert out.shape == images.shape
    assert float(out.min()) >= -1.0 - 1e-5 and float(out.max()) <= 1.0 + 1e-5
    assert not np.allclose(out, images)
  x = (np.asarray(images[0]) + 1) / 2
  gray = x @ np.array([0.299, 0.587, 0.114])
  np.testing.assert_allclose(
      augment.grayscale(x), np.stack([gray] * 3, -1), rtol=1e-6)
  np.testing.assert_array_equal(
      augment.solarize(x, 0.5), np.where(x < 0.5, x, 1 - x))
  np.testing.assert_allclose(augment.rotate_hue(x, 0.0), x, atol=1e-5)
  # A full-size crop with ratio 1 is the image itself.
  crop = augment.random_resized_crop(
      jax.random.key(2), images[0], (1.0, 1.0), (1.0, 1.0))
  np.testing.assert_allclose(crop, images[0], atol=1e-5)
  # The blur is the separable 3x3 Gaussian on the reflected border.
  taps = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * 1.05**2))
  kernel = np.outer(taps, taps) / taps.sum()**2
  padded = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode='reflect')
  expected = sum(kernel[i, j] * padded[i:i + 16, j:j + 16]
                 for i in range(3)
                 for j in range(3))
  np.testing.assert_allclose(
      augment.gaussian_blur(x, 1.05), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('change,message', [
    ({
        'conditional': True
    }, 'transfers an UNCONDITIONAL source: set '
     r'config.model.conditional=False'),
    ({
        'rank': 40
    }, r'config.method_options.hypermod.rank: hypermod rank 40 does not '
     r'fit a 8 -> 8 convolution: use 0 \(full rank, the paper\) or a rank '
     'from 1 to 8'),
    ({
        'start': 'zeros'
    }, r"start='zeros' is not valid: use one of \['self_alignment', "
     r"'closed_form'\]"),
])
def test_bad_hypermod_settings_are_explained_in_one_line(change, message):
  config = hypermod_config()
  config.model.conditional = change.pop('conditional', False)
  config.method_options.hypermod.update(change)
  with pytest.raises(stages.ConfigError, match=message) as error:
    stages.resolve(config)
  assert '\n' not in str(error.value)


def test_a_conditional_source_model_is_refused(tmp_path):
  conditional = save_models(
      stages.fresh_models(tiny_config(), 4), tmp_path / 'conditional')
  with pytest.raises(
      stages.ConfigError,
      match='conditional=False needs an unconditional source'):
    transfer_spec(hypermod_config(), conditional)


def test_the_method_is_registered_with_its_unconditional_source():
  assert 'hypermod' in methods.NAMES
  assert not methods.conditional_source('hypermod')
  assert methods.conditional_source('kp')


def test_an_unconditional_source_where_a_conditional_one_is_needed(
    unconditional_source):
  with pytest.raises(
      stages.ConfigError,
      match=r'has 1 classes but the config names 4 source classes.*\(a '
      r'one-class model is unconditional: set '
      r'config.model.conditional=False\)') as error:
    transfer_spec(tiny_config(), unconditional_source)  # kp, conditional
  assert '\n' not in str(error.value)


def test_an_interrupted_transfer_resumes_bit_for_bit(unconditional_source,
                                                     tmp_path, monkeypatch):
  """R1's and the views' randomness comes from the step's key, and the
  self-alignment is kept in the stage folder: SIGTERM, rerun, same model."""
  config = hypermod_config(start='self_alignment', alignment_steps=2)
  config.stages = ('transfer',)
  config.source_checkpoint = str(unconditional_source)
  config.transfer.num_steps = 3
  config.transfer.eval_every = 0  # no evaluation: only the models matter
  whole = loop.train_and_evaluate(config, tmp_path / 'whole')
  with monkeypatch.context() as patch:
    interrupt_at(patch, 2)
    with pytest.raises(loop.Preempted):
      loop.train_and_evaluate(config, tmp_path / 'resumed')
  kept = tmp_path / 'resumed' / 'transfer' / 'self_alignment'
  assert (kept / self_alignment.SUMMARY).exists()
  resumed = loop.train_and_evaluate(config, tmp_path / 'resumed')
  expected, actual = (_flat(model_io.load(d)[2]) for d in (whole, resumed))
  assert expected.keys() == actual.keys()
  for key, value in expected.items():
    np.testing.assert_array_equal(actual[key], value, err_msg=key)
