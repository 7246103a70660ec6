"""MineGAN (`config.method = 'minegan'`): the miners, their two stages,
the non-saturating loss, the single-target set-up and the bad options."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

from cgt_jax.analysis import similarity
from cgt_jax.data import pipeline
from cgt_jax.models import biggan
from cgt_jax.models import minegan
from cgt_jax.models import model_io
from cgt_jax.training import losses
from cgt_jax.training import loop
from cgt_jax.training import state as state_lib
from cgt_jax.training import steps
from cgt_jax.transfer import methods
from cgt_jax.transfer import stages
from tests import reference_cases as rc
from tests.test_train import abstract_transfer_spec
from tests.test_train import interrupt_at
from tests.test_train import save_models
from tests.test_train import tiny_config
from tests.test_train import transfer_spec

NUM_SOURCE, NUM_NEW, DIM_Z = 4, 2, 16
BLOCKS = 3  # the tiny 32 px generator
# The miner's layers (each [M, in, out] kernel + [M, out] bias).
MINER = {
    f'miner/classes/{branch}_{i}/{p}' for branch in ('z', 'class')
    for i in range(4) for p in ('kernel', 'bias')
}
# Every parameter of the tiny CIFAR-form source generator, written out.
SOURCE_G = ({
    'linear/kernel', 'linear/bias', 'output_bn/scale', 'output_bn/bias',
    'output_conv/kernel', 'output_conv/bias'
} | {
    f'block_{i}/{conv}/{p}' for i in range(BLOCKS)
    for conv in ('conv1', 'conv2', 'conv_sc') for p in ('kernel', 'bias')
} | {
    f'block_{i}/bn{j}/{t}/embedding' for i in range(BLOCKS) for j in (1, 2)
    for t in ('gain', 'bias')
})


def minegan_config(**options):
  config = tiny_config()
  config.method = 'minegan'
  config.transfer.num_steps = 3
  config.method_options.minegan.mining_steps = 1
  config.method_options.minegan.update(options)
  return config


@pytest.fixture(scope='module')
def source_dir(random_source):
  """A saved random 4-class source model (G and D)."""
  return random_source


def flat(tree):
  return traverse_util.flatten_dict(jax.device_get(tree), sep='/')


def train_steps(spec, data, count=2):
  """`(state before, state after)` of `count` steps of a stage."""
  state = state_lib.create(spec.setup, spec.g_variables, spec.d_variables, 0)
  before = jax.device_get(state)  # the step donates its input
  sampler = pipeline.BatchSampler(data.target, spec.setup.real_per_step, 0)
  step_fn = steps.make_train_step(spec.setup)
  for step in range(count):
    images, labels = sampler.batch(step)
    state, _ = step_fn(
        state, {
            'image': jnp.asarray(images / 127.5 - 1, jnp.float32),
            'label': jnp.asarray(labels)
        })
  return before, state


def adam_moments(opt_state) -> list:
  """Parameter paths that hold Adam moments (optax.multi_transform)."""
  moments = []
  for path, _ in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
    keys = [p.key for p in path if isinstance(p, jax.tree_util.DictKey)]
    if len(keys) > 1 and keys[0] == 'train':
      moments.append('/'.join(keys[1:]))
  return moments


def source_images(variables, generator, labels, seed=3):
  z = jax.random.normal(jax.random.key(seed), (len(labels), DIM_Z))
  return np.asarray(steps.generate(generator, variables, z, jnp.array(labels)))


def test_mining_freezes_g_and_trains_the_miners(source_dir):
  plan, data, spec = transfer_spec(minegan_config(), source_dir)
  assert isinstance(spec.generator.new_classes, minegan.Miners)
  g_trained = {p for p, t in flat(spec.g_trainable).items() if t}
  assert g_trained == MINER
  assert set(flat(spec.g_trainable)) == MINER | SOURCE_G
  assert all(flat(spec.d_trainable).values())  # all of D, as the authors'
  assert spec.setup.losses == losses.NonSaturating()
  c = plan.stage_config('transfer')
  assert (c.num_steps, c.g_lr, c.d_lr, c.adam_eps) == (1, 1e-4, 4e-4, 1e-6)
  before, after = train_steps(spec, data)
  old, new = flat(before.g_params), flat(after.g_params)
  for path in SOURCE_G:
    np.testing.assert_array_equal(new[path], old[path], err_msg=path)
  for path in MINER:
    assert not np.array_equal(new[path], old[path]), path
  assert sorted(adam_moments(after.g_opt_state)) == sorted(list(MINER) * 2)
  # G keeps the source model's BN statistics and SN vectors: source
  # classes render exactly as the source model's.
  generator, _, source = model_io.load(source_dir)
  for name in ('batch_stats', 'sn'):
    state = flat(after.g_state[name])
    for path, value in flat(source['generator'][name]).items():
      np.testing.assert_array_equal(state[path], value, err_msg=path)
  labels = list(range(NUM_SOURCE))
  np.testing.assert_array_equal(
      source_images(
          jax.device_get(after.g_variables()), spec.generator, labels),
      source_images(source['generator'], generator, labels))
  # D: the source projection gets no gradient from new-class batches.
  d_old, d_new = flat(before.d_params), flat(after.d_params)
  np.testing.assert_array_equal(d_new['embed/embedding'],
                                d_old['embed/embedding'])
  assert not np.array_equal(d_new['new_embed/embedding'],
                            d_old['new_embed/embedding'])


def test_stage_two_trains_miners_and_all_of_g(source_dir, tmp_path):
  config = minegan_config()
  _, _, mined = transfer_spec(config, source_dir)
  mined_dir = save_models(
      methods.Models(mined.generator, mined.discriminator, mined.g_variables,
                     mined.d_variables), tmp_path / 'mined')
  plan, data, spec = transfer_spec(config, mined_dir, stage='finetune')
  assert {p for p, t in flat(spec.g_trainable).items() if t} == MINER | SOURCE_G
  c = plan.stage_config('finetune')
  assert (c.num_steps, c.g_lr, c.d_lr) == (2, 1e-4, 4e-4)
  _, after = train_steps(spec, data)
  old, new = flat(spec.g_variables['params']), flat(after.g_params)
  for path in MINER | SOURCE_G - {p for p in SOURCE_G if '/bn' in p}:
    assert not np.array_equal(new[path], old[path]), path


def _miner_module(form_width, mixture):
  return minegan.Miners().front(NUM_SOURCE, NUM_NEW, DIM_Z, form_width, mixture,
                                1e-8, 'ortho')


@pytest.mark.parametrize('mixture,width', [(True, NUM_SOURCE), (False, 8)])
def test_the_miner_is_affine_with_the_published_layer_shapes(mixture, width):
  miners = _miner_module(width, mixture)
  labels = jnp.array([4, 5, 4, 5, 0])  # the last one is a source sample
  u = jax.random.normal(jax.random.key(0), (3, 5, DIM_Z))
  variables = miners.init(jax.random.key(1), u[0], labels, NUM_SOURCE)
  if mixture:  # a non-trivial last layer (it starts at zero weights)
    variables = rc.random_variables(variables, 2)
  shapes = {p: v.shape for p, v in flat(variables['params']).items()}
  for i in range(4):
    assert shapes[f'classes/z_{i}/kernel'] == (NUM_NEW, DIM_Z, DIM_Z)
  for i in range(3):
    assert shapes[f'classes/class_{i}/kernel'] == (NUM_NEW, DIM_Z, DIM_Z)
  assert shapes['classes/class_3/kernel'] == (NUM_NEW, DIM_Z, width)
  assert len(shapes) == 16
  mine = lambda x: miners.apply(variables, x, labels, NUM_SOURCE)[:2]
  zero = mine(jnp.zeros_like(u[0]))
  for got, a, b, c in zip(mine(u[0] + u[1]), mine(u[0]), mine(u[1]), zero):
    np.testing.assert_allclose(got, a + b - c, rtol=1e-4, atol=1e-4)
  z, _, mined = miners.apply(variables, u[0], labels, NUM_SOURCE)
  assert mined.tolist() == [True] * 4 + [False]
  np.testing.assert_array_equal(z[4], u[0][4])  # source latents untouched
  assert not np.allclose(z[:4], u[0][:4])


def _identity_miner(params, sn, source_class):
  """Miner weights: z' = u, and a class branch whose output is the one-hot
  of `source_class` (for both new classes)."""
  params, sn = dict(params), dict(sn)
  eye = np.broadcast_to(
      np.eye(DIM_Z, dtype=np.float32), (NUM_NEW,) + (DIM_Z,) * 2)
  unit = np.zeros((NUM_NEW, DIM_Z), np.float32)
  unit[:, 0] = 1  # the SN power iteration of the identity gives exactly 1
  for path in params:
    layer = path.rsplit('/', 1)[0]
    if path.endswith('/kernel'):
      params[path] = eye if 'class_3' not in layer else np.zeros_like(
          params[path])
    else:
      params[path] = np.zeros_like(params[path])
    if f'{layer}/u' in sn:
      sn[f'{layer}/u'] = unit
  onehot = np.zeros((NUM_NEW, NUM_SOURCE), np.float32)
  onehot[:, source_class] = 1
  params['miner/classes/class_3/bias'] = onehot
  return params, sn


@pytest.mark.parametrize('source_class', [0, 3])
def test_a_one_hot_miner_draws_the_source_class(source_dir, source_class):
  """CIFAR form: identity z branch + one-hot class vector k = source class
  k's images, for the same latents."""
  _, _, spec = transfer_spec(minegan_config(), source_dir)
  variables = flat(spec.g_variables)
  params, sn = _identity_miner(
      {
          k[len('params/'):]: v
          for k, v in variables.items()
          if k.startswith('params/miner')
      }, {
          k[len('sn/'):]: v
          for k, v in variables.items()
          if k.startswith('sn/miner')
      }, source_class)
  variables.update({f'params/{k}': v for k, v in params.items()})
  variables.update({f'sn/{k}': v for k, v in sn.items()})
  variables = traverse_util.unflatten_dict(variables, sep='/')
  generator, _, source = model_io.load(source_dir)
  mined = source_images(variables, spec.generator, [4, 5, 4])
  expected = source_images(source['generator'], generator, [source_class] * 3)
  np.testing.assert_array_equal(mined, expected)


def test_non_saturating_loss_equals_the_hand_computation():
  d_real = np.array([[2.0], [-1.0], [0.5]], np.float32)
  d_fake = np.array([[-3.0], [0.25], [4.0]], np.float32)
  softplus = lambda x: np.log1p(np.exp(x))
  loss, terms = losses.NonSaturating().discriminator(d_real, d_fake)
  np.testing.assert_allclose(
      terms['d_loss_real'], np.mean(softplus(-d_real)), rtol=1e-6)
  np.testing.assert_allclose(
      terms['d_loss_fake'], np.mean(softplus(d_fake)), rtol=1e-6)
  np.testing.assert_allclose(
      loss, np.mean(softplus(-d_real)) + np.mean(softplus(d_fake)), rtol=1e-6)
  g_loss, g_terms = losses.NonSaturating().generator(d_fake, {})
  expected = np.mean(-np.log(1 / (1 + np.exp(-d_fake))))
  np.testing.assert_allclose(g_loss, expected, rtol=1e-6)
  assert g_terms == {'g_non_saturating': g_loss}


def test_the_loss_is_a_choice_for_every_method(source_dir):
  config = tiny_config()
  config.loss = 'non_saturating'
  _, _, spec = abstract_transfer_spec(config, source_dir)
  assert spec.setup.losses == losses.KnowledgePropagationLosses(
      0.01, 0.01, losses.NonSaturating())
  config = minegan_config()
  config.loss = 'hinge'
  plan = stages.resolve(config)
  assert plan.loss == 'hinge'
  assert stages.resolve(minegan_config()).loss == 'non_saturating'
  assert stages.resolve(tiny_config()).loss == 'hinge'


def test_single_target_drops_the_projection(source_dir):
  config = minegan_config(single_target=True)
  config.data.target_classes = config.data.target_classes[:1]
  _, data, spec = transfer_spec(config, source_dir)
  assert not spec.discriminator.projection
  assert 'new_embed' in spec.d_variables['params']  # kept, unused
  before, after = train_steps(spec, data, count=1)
  d_old, d_new = flat(before.d_params), flat(after.d_params)
  np.testing.assert_array_equal(d_new['new_embed/embedding'],
                                d_old['new_embed/embedding'])
  assert not np.array_equal(d_new['linear/kernel'], d_old['linear/kernel'])


@pytest.mark.parametrize('change,message', [
    ({
        'loss': 'wasserstein'
    }, "config.loss='wasserstein' is not valid: use one of"),
    ({
        'mining_steps': 3
    }, 'mining_steps=3 must be between 1 and config.transfer.num_steps - 1'),
    ({
        'single_target': True
    }, 'single_target=True is the published set-up for ONE target class'),
    ({
        'overrides': {
            'g_lr': 1e-3
        }
    }, "method_overrides.minegan sets \\['g_lr'\\], which MineGAN takes "
     'from config.method_options.minegan'),
])
def test_bad_minegan_settings_are_explained_in_one_line(change, message):
  config = minegan_config()
  for key, value in change.items():
    if key == 'loss':
      config.loss = value
    elif key == 'overrides':
      config.method_overrides.minegan = value
    else:
      config.method_options.minegan[key] = value
  with pytest.raises(stages.ConfigError, match=message) as error:
    stages.resolve(config)
  assert '\n' not in str(error.value)


def test_minegan_runs_both_stages_and_samples_through_the_miners(
    tmp_path, source_dir, monkeypatch):
  config = minegan_config()
  config.source_checkpoint = str(source_dir)
  config.stages = ('transfer',)
  model_dir = loop.train_and_evaluate(config, tmp_path)
  assert model_dir == tmp_path / 'finetune' / 'model'
  # Preempted in stage 2 and rerun: the same model, bit for bit.
  with monkeypatch.context() as patch:
    interrupt_at(patch, 1)  # step 1 exists in stage 2 only
    with pytest.raises(loop.Preempted):
      loop.train_and_evaluate(config, tmp_path / 'resumed')
  resumed = flat(
      model_io.load(loop.train_and_evaluate(config, tmp_path / 'resumed'))[2])
  for key, value in flat(model_io.load(model_dir)[2]).items():
    np.testing.assert_array_equal(resumed[key], value, err_msg=key)
  for stage, steps_run in (('transfer', 1), ('finetune', 2)):
    summary = (tmp_path / stage / 'summary.json').read_text()
    assert f'"steps": {steps_run}' in summary
    assert sorted((tmp_path / stage / 'samples').glob('step_*.png'))
  generator, _, source = model_io.load(source_dir)
  mined_g, mined_d, mined = model_io.load(tmp_path / 'transfer' / 'model')
  assert isinstance(mined_g.new_classes, minegan.Miners)
  assert mined_d.projection
  labels = list(range(NUM_SOURCE))
  # Until stage 2 the source classes are the source model's; stage 2
  # changes them (G trains).
  np.testing.assert_array_equal(
      source_images(mined['generator'], mined_g, labels),
      source_images(source['generator'], generator, labels))
  tuned_g, _, tuned = model_io.load(model_dir)
  assert not np.array_equal(
      source_images(tuned['generator'], tuned_g, labels),
      source_images(source['generator'], generator, labels))
  # tools/sample.py draws the new classes through the miners: a grid row
  # per new class.
  sample = rc.load_tool('sample')
  out, grid = tmp_path / 'new.npz', tmp_path / 'new.png'
  assert sample.main([
      '--checkpoint',
      str(tmp_path), '--out',
      str(out), '--grid',
      str(grid), '--columns', '3'
  ]) == 0
  images = np.load(out)['images']
  assert images.shape == (NUM_NEW * 3, 32, 32, 3) and grid.is_file()
  assert np.isfinite(images).all()


def test_the_generator_takes_the_miner_form_in_the_imagenet_form():
  """Shared embedding + hierarchical z: the mined class vector replaces
  `shared(y)`; source labels are unchanged."""
  source = biggan.Generator(
      resolution=32, num_classes=3, ch=4, dim_z=20, shared_dim=8, hier=True)
  z = jax.random.normal(jax.random.key(0), (4, 20))
  labels = jnp.array([0, 1, 3, 4])
  mined = source.clone(num_new_classes=2, new_classes=minegan.Miners())
  variables = rc.random_variables(rc.abstract_variables(mined, z, labels))
  shapes = {p: v.shape for p, v in flat(variables['params']).items()}
  assert shapes['miner/classes/class_3/kernel'] == (2, 20, 8)
  source_vars = {
      name: {
          k: v for k, v in tree.items() if k != 'miner'
      } for name, tree in variables.items()
  }
  got = mined.apply(variables, z, labels)
  np.testing.assert_array_equal(got[:2],
                                source.apply(source_vars, z[:2], labels[:2]))
  assert np.isfinite(np.asarray(got)).all()
  # The similarity analysis is kp's: the notebook skips it for miners.
  assert not similarity.applies_to(mined)
  assert not similarity.applies_to(source)
  assert similarity.applies_to(source.clone(num_new_classes=2))
