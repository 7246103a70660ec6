"""What the data-parallel train step sends between devices, read from the
compiled program on 8 fake CPU devices: gradients and batch-norm
statistics, nothing else (docs/PERFORMANCE.md, "Communication")."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgt_jax.data import pipeline
from cgt_jax.runtime import parallel
from cgt_jax.training import checkpointing
from cgt_jax.training import diffaugment
from cgt_jax.training import state as state_lib
from cgt_jax.training import steps
from tests.test_train import abstract_transfer_spec
from tests.test_train import flat
from tests.test_train import tiny_config
from tests.test_train import transfer_spec

COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all',
               'collective-permute')
BYTES = {'f32': 4, 's32': 4, 'u32': 4, 'bf16': 2, 'f16': 2, 'pred': 1}
# Scalars the step also reduces: loss terms, the projection's "is any
# sample of this table" flags.
SCALAR_SLACK_BYTES = 1024


def collectives(hlo: str) -> list:
  """`(kind, bytes)` of every collective of a compiled HLO module's text:
  the bytes of its result (a tuple when XLA combined several)."""
  found = []
  pattern = re.compile(r'^\s*%\S+ = (.*?) (' + '|'.join(COLLECTIVES) +
                       r')(?:-start)?\(')
  for line in hlo.splitlines():
    match = pattern.match(line)
    if match:
      shapes = re.findall(r'\b(f32|s32|u32|bf16|f16|pred)\[([0-9,]*)\]',
                          match.group(1))
      size = sum(BYTES[dtype] *
                 int(np.prod([int(d)
                              for d in dims.split(',')
                              if d]))
                 for dtype, dims in shapes)
      found.append((match.group(2), size))
  return found


def _trained_bytes(variables, mask) -> int:
  leaves = jax.tree_util.tree_leaves(variables['params'])
  return sum(x.size * x.dtype.itemsize
             for x, trained in zip(leaves, jax.tree_util.tree_leaves(mask))
             if trained)


def analytic_bytes(spec) -> int:
  """What one iteration must all-reduce: every D chunk's D gradient (XLA
  reduces each chunk's before adding it), the G step's G gradient of the
  trained parameters, and the batch statistics of G's BN layers (mean and
  variance per channel) in each train-mode G forward (one per D chunk and
  per G chunk) and their two per-channel sums in each G backward."""
  setup = spec.setup
  d_chunks = setup.num_d_steps * setup.num_d_accumulations
  g_chunks = setup.num_g_accumulations
  bn_pass = sum(x.size * 4 for x in jax.tree_util.tree_leaves(
      spec.g_variables['batch_stats']))  # f32 mean + var per BN layer
  return (d_chunks * _trained_bytes(spec.d_variables, spec.d_trainable) +
          g_chunks * _trained_bytes(spec.g_variables, spec.g_trainable) +
          (d_chunks + g_chunks) * bn_pass + g_chunks * bn_pass)


def compiled_step_hlo(spec, mesh) -> str:
  """The compiled sharded train step (state replicated, batch split)."""
  setup = spec.setup
  state = jax.eval_shape(lambda g, d: state_lib.create(setup, g, d, 0),
                         spec.g_variables, spec.d_variables)
  n = setup.real_per_step
  batch = {
      'image': jax.ShapeDtypeStruct((n, 32, 32, 3), jnp.float32),
      'label': jax.ShapeDtypeStruct((n,), jnp.int32),
  }
  step = steps.make_train_step(setup, mesh)
  lowered = step.lower(
      checkpointing.abstract_like(state, parallel.replicated(mesh)),
      checkpointing.abstract_like(batch, parallel.data_sharding(mesh)))
  return lowered.compile().as_text()


@pytest.fixture(scope='module')
def two_chunk_spec(random_source):
  """The spec with variable shapes only: what is sent depends on shapes."""
  config = tiny_config()
  config.transfer.num_d_accumulations = 2  # the per-chunk term counts
  return abstract_transfer_spec(config, random_source)[2]


def test_sharded_step_sends_only_gradients_and_batch_statistics(two_chunk_spec):
  mesh = parallel.make_mesh()
  assert mesh.size == 8
  sent = collectives(compiled_step_hlo(two_chunk_spec, mesh))
  kinds = {kind for kind, _ in sent}
  # No activation or parameter is gathered, scattered or moved.
  assert kinds == {'all-reduce'}, sent
  expected = analytic_bytes(two_chunk_spec)
  total = sum(size for _, size in sent)
  assert expected <= total <= expected + SCALAR_SLACK_BYTES, (total, expected)
  # Counted: at most one all-reduce per BN statistic per pass, one per
  # trained parameter array per chunk, and a few for scalars (XLA may
  # combine several into one).
  setup = two_chunk_spec.setup
  chunks = setup.num_d_accumulations + setup.num_g_accumulations
  bn_layers = len(
      jax.tree_util.tree_leaves(two_chunk_spec.g_variables['batch_stats'])) // 2
  arrays = sum(jax.tree_util.tree_leaves(two_chunk_spec.d_trainable)) + sum(
      jax.tree_util.tree_leaves(two_chunk_spec.g_trainable))
  assert len(sent) <= 2 * bn_layers * (chunks + 1) + arrays * chunks + 16


def test_an_activation_gather_is_caught(two_chunk_spec, monkeypatch):
  """The check above fails when the step gathers its fakes on every device
  (what the plain [fake; real] concatenation did, as an all-to-all)."""
  original = steps.generate_train_mode

  def gathering(*args, **kwargs):
    images, state = original(*args, **kwargs)
    return jax.lax.with_sharding_constraint(images,
                                            jax.sharding.PartitionSpec()), state

  monkeypatch.setattr(steps, 'generate_train_mode', gathering)
  sent = collectives(compiled_step_hlo(two_chunk_spec, parallel.make_mesh()))
  assert {kind for kind, _ in sent} - {'all-reduce'}, sent


def test_joined_batches_keep_rows_on_their_devices_and_split_back():
  mesh = parallel.make_mesh()
  fake = jnp.arange(16.0)
  real = 100 + jnp.arange(8.0)

  @jax.jit
  def join(fake, real):
    joined = parallel.concat_batches([fake, real])
    return joined, parallel.split_batches(joined, [16, 8])

  with jax.set_mesh(mesh):
    joined, (fake_back, real_back) = join(fake, real)
    order = parallel.batch_order([16, 8])
  plain = np.concatenate([fake, real])
  # Device d's shard holds its shard of each part: fakes 2d, 2d+1, real d.
  np.testing.assert_array_equal(joined[:3], [0, 1, 100])
  np.testing.assert_array_equal(joined, plain[order])
  np.testing.assert_array_equal(fake_back, fake)
  np.testing.assert_array_equal(real_back, real)
  assert parallel.batch_order([16, 8]) is None  # no mesh: the plain order


def test_diffaugment_gives_each_image_its_draws_in_any_row_order():
  policy = diffaugment.Policy.parse('color,translation,cutout')
  images = jax.random.uniform(jax.random.key(1), (6, 8, 8, 3), minval=-1)
  order = np.array([3, 0, 5, 1, 4, 2])
  key = jax.random.key(2)
  np.testing.assert_array_equal(
      policy(images[order], key, order),
      policy(images, key)[order])


def test_sharded_step_with_diffaugment_equals_single_device_step(random_source):
  config = tiny_config()
  config.augment = 'color,translation,cutout'
  config.transfer.g_lr = config.transfer.d_lr = 1e-5
  _, data, spec = transfer_spec(config, random_source)
  setup = spec.setup
  state = state_lib.create(setup, spec.g_variables, spec.d_variables, 0)
  images, labels = pipeline.BatchSampler(data.target, setup.real_per_step,
                                         0).batch(0)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = parallel.make_mesh(devices)
    copy = jax.device_put(
        jax.tree_util.tree_map(np.array, state), parallel.replicated(mesh))
    batch = pipeline.to_device(images, labels, parallel.data_sharding(mesh))
    results.append(steps.make_train_step(setup, mesh)(copy, batch))
  (one, metrics_1), (eight, metrics_8) = results
  for key in metrics_1:
    np.testing.assert_allclose(
        metrics_8[key], metrics_1[key], rtol=1e-4, atol=1e-5, err_msg=key)
  a, b = flat(one.d_params), flat(eight.d_params)
  for key in a:
    np.testing.assert_allclose(
        b[key], a[key], rtol=1e-4, atol=1e-5, err_msg=key)
