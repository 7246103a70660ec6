"""The training job on tiny configs: sharding, freezing, resume, data paths,
and the errors a user can make."""

import copy
import dataclasses
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

from cgt_jax.data import pipeline
from cgt_jax.data import splits
from cgt_jax.models import biggan
from cgt_jax.models import model_io
from cgt_jax.runtime import parallel
from cgt_jax.runtime import xla_cpu
from cgt_jax.transfer import stages
from cgt_jax.training import checkpointing
from cgt_jax.training import state as state_lib
from cgt_jax.training import steps
from cgt_jax.training import loop
from cgt_jax.training import optim
from configs import demo

SOURCE = ['red_square', 'green_disc', 'blue_cross', 'yellow_ring']
TARGET = ['red_disc', 'green_square']


def tiny_config(**stage_steps):
  """A 32 px BigGAN with 8 channels on 6 synthetic classes."""
  config = demo.get_config('scratch')
  config.stages = ('pretrain', 'transfer')
  config.augment = ''  # the DiffAugment tests switch it on
  config.model.g_ch = config.model.d_ch = 2
  config.model.dim_z = 16
  config.data.source_classes = tuple(SOURCE)
  config.data.target_classes = tuple(TARGET)
  config.data.synthetic_images_per_class = 8
  config.data.target_images_per_class = 4
  config.sample.columns = 2
  config.eval.final = False  # one test below evaluates
  config.eval.num_samples = 16
  config.eval.batch_size = 8
  config.eval.classifier_steps = 20
  for stage in ('pretrain', 'transfer', 'finetune'):
    c = config[stage]
    c.num_steps = stage_steps.get(stage, 2)
    c.batch_size = 8
    # One D chunk: the chunked step has its own tests (the sharded step
    # below, tests/test_replay.py), and half the program compiles faster.
    c.num_d_steps, c.num_d_accumulations = 1, 1
    c.log_every = c.sample_every = 1
    # Each stage ends with a checkpoint; one per step would cost an orbax
    # save a step (the checkpoint tests set their own).
    c.checkpoint_every = 1000
  return config


def flat(tree):
  return traverse_util.flatten_dict(jax.device_get(tree), sep='/')


def test_demo_starts_from_the_shipped_source_one_switch_from_scratch():
  config = demo.get_config()
  assert config.source_checkpoint == str(demo.SHIPPED_SOURCE)
  plan = stages.resolve(config)
  assert 'pretrain' not in plan.stages  # a source model skips pretraining
  generator, discriminator, variables = model_io.load(demo.SHIPPED_SOURCE)
  assert generator.num_classes == len(config.data.source_classes) == 48
  assert (generator.ch, generator.dim_z) == (config.model.g_ch,
                                             config.model.dim_z)
  assert discriminator is not None and 'discriminator' in variables
  scratch = demo.get_config('scratch')
  assert scratch.source_checkpoint == ''
  assert stages.resolve(scratch).stages[0] == 'pretrain'
  recipe = demo.get_config('source')
  assert recipe.stages == ('pretrain',) and recipe.pretrain.ema_decay > 0
  with pytest.raises(ValueError, match='configs/demo.py:scratch'):
    demo.get_config('scratchh')


def test_demo_pipeline_runs_and_exports_every_stage(tmp_path, eval_cache):
  config = tiny_config()
  config.stages = ('pretrain', 'transfer', 'finetune')
  config.eval.final = True
  config.eval.cache_dir = str(eval_cache)
  config.transfer.eval_every = 1
  model_dir = loop.train_and_evaluate(config, tmp_path)
  assert model_dir == tmp_path / 'finetune' / 'model'
  generator, discriminator, variables = model_io.load(model_dir)
  assert (generator.num_classes, generator.num_new_classes) == (4, 2)
  assert discriminator.num_new_classes == 2
  for stage in config.stages:
    assert (tmp_path / stage / 'summary.json').exists()
    grids = sorted((tmp_path / stage / 'samples').glob('step_*.png'))
    assert grids  # one row per class, PNG
  pretrain_grid = Image.open(grids[0])
  assert pretrain_grid.height > pretrain_grid.width / 2
  # The transfer stage trained only KP layers: every source parameter of
  # the pretrained generator is bitwise unchanged in the transferred one.
  _, _, pretrained = model_io.load(tmp_path / 'pretrain' / 'model')
  _, _, transferred = model_io.load(tmp_path / 'transfer' / 'model')
  after = flat(transferred['generator']['params'])
  for key, value in flat(pretrained['generator']['params']).items():
    np.testing.assert_array_equal(after[key], value, err_msg=key)
  assert any('/kp/' in k for k in after)
  # Evaluation: offline domain-classifier metrics (never called FID), one
  # per eval step, the best checkpoint kept by domain_fd.
  history = json.loads(
      (tmp_path / 'transfer' / 'eval_history.json').read_text())
  assert [h['step'] for h in history] == [1, 2]
  assert {'domain_fd', 'class_accuracy', 'per_class_accuracy'} <= set(
      history[0]) and 'fid' not in history[0]
  assert len(history[0]['per_class_accuracy']) == 2
  # Per class on the same features: intra-class FD for both new classes;
  # their 4 real images are too few for k = 5 neighbours, so PRDC is NaN.
  assert len(history[0]['per_class_domain_intra_fd']) == 2
  assert np.isfinite(history[0]['domain_intra_fd'])
  assert np.isnan(history[0]['domain_coverage'])
  assert list((tmp_path / 'transfer' / 'checkpoints' / 'best').iterdir())
  # The best evaluation's model and grid; fine-tuning started from it.
  assert (tmp_path / 'transfer' / 'samples' / 'best.png').exists()
  _, _, best_model = model_io.load(tmp_path / 'transfer' / 'model_best')
  finetune = json.loads((tmp_path / 'finetune' / 'summary.json').read_text())
  assert finetune['started_from'] == str(tmp_path / 'transfer' / 'model_best')
  assert finetune['eval_reference'] == 'the training images'
  summary = json.loads((tmp_path / 'transfer' / 'summary.json').read_text())
  assert summary['final_eval']['step'] == 2
  best = min(history, key=lambda h: h['domain_fd'])
  assert summary['best_eval'] == {
      'metric': 'domain_fd',
      'step': best['step'],
      'value': best['domain_fd']
  }
  # ... and the run's comparison table and plot (tools/compare.py's).
  assert '| ' + tmp_path.name + ' |' in (tmp_path / 'comparison.md').read_text()
  assert (tmp_path / 'comparison.png').exists()
  # A rerun finds every stage complete and changes nothing.
  before = (tmp_path / 'transfer' / 'summary.json').read_text()
  loop.train_and_evaluate(config, tmp_path)
  assert (tmp_path / 'transfer' / 'summary.json').read_text() == before


def test_unconditional_source_pretrains_then_transfers(tmp_path, eval_cache):
  """config.model.conditional=False: one class of all source images, D
  without projection; the new classes follow it (labels 1..M) and D gains
  a projection for them alone."""
  config = tiny_config()
  config.model.conditional = False
  config.eval.final = True
  config.eval.cache_dir = str(eval_cache)
  loop.train_and_evaluate(config, tmp_path)
  generator, discriminator, variables = model_io.load(tmp_path / 'pretrain' /
                                                      'model')
  assert generator.num_classes == 1 and not discriminator.projection
  assert 'embed' not in variables['discriminator']['params']
  tables = [
      v for k, v in flat(variables['generator']['params']).items()
      if k.endswith('/gain/embedding')
  ]
  assert tables and all(t.shape[0] == 1 for t in tables)
  pretrain = json.loads((tmp_path / 'pretrain' / 'summary.json').read_text())
  assert pretrain['classes'] == [stages.UNCONDITIONAL]
  assert 'domain_fd' in pretrain['final_eval']
  assert 'class_accuracy' not in pretrain['final_eval']  # one merged class
  transfer = json.loads((tmp_path / 'transfer' / 'summary.json').read_text())
  assert transfer['first_label'] == 1
  assert 'class_accuracy' in transfer['final_eval']
  generator, discriminator, _ = model_io.load(tmp_path / 'transfer' / 'model')
  assert (generator.num_classes, generator.num_new_classes) == (1, 2)
  assert discriminator.projection and not discriminator.source_projection
  # A conditional source where an unconditional one is needed.
  conditional_source = save_models(
      stages.fresh_models(tiny_config(), 4), tmp_path / 'conditional')
  config.source_checkpoint = str(conditional_source)
  config.stages = ('transfer',)
  with pytest.raises(
      stages.ConfigError,
      match='conditional=False needs an unconditional source'):
    loop.train_and_evaluate(config, tmp_path / 'bad')


def save_models(models, directory):
  """A model directory of `methods.Models` (a saved source model)."""
  return model_io.save(directory, model_io.module_arch(models.generator),
                       models.g_variables,
                       model_io.module_arch(models.discriminator),
                       models.d_variables)


def _plan_and_data(config, source_dir, stage):
  config = copy.deepcopy(config)
  config.source_checkpoint = str(source_dir)
  config.stages = (stage,)
  plan = stages.resolve(config)
  data = splits.load(
      plan.config.data,
      need_source=True,
      resolution=32,
      target_first_label=plan.target_first_label())
  return plan, data


def transfer_spec(config, source_dir, stage='transfer'):
  """`(plan, data, StageSpec)` of `stage` from the saved source model."""
  plan, data = _plan_and_data(config, source_dir, stage)
  return plan, data, stages.stage_spec(stage, plan, data, str(source_dir))


def abstract_transfer_spec(config, source_dir, stage='transfer'):
  """`transfer_spec` whose variables are shapes (`jax.ShapeDtypeStruct`):
  the stage is traced but its inits and weight surgery are not compiled
  (0.1-0.3 s against 2.3-7.2 s for the tiny config's methods), for tests that read only what a spec
  is made of (modules, masks, losses, parameter paths)."""
  plan, data = _plan_and_data(config, source_dir, stage)
  built = []

  def variables():
    built.append(stages.stage_spec(stage, plan, data, str(source_dir)))
    return built[0].g_variables, built[0].d_variables

  g_variables, d_variables = jax.eval_shape(variables)
  # The traced variables are replaced by their shapes; the rest of the
  # spec (modules, masks, the static setup) holds no arrays.
  return plan, data, dataclasses.replace(
      built[0], g_variables=g_variables, d_variables=d_variables)


def _setup_and_state(directory, learning_rate=None):
  """A tiny transfer stage built from fresh random source variables."""
  config = tiny_config()
  config.transfer.num_d_accumulations = 2  # chunks drawn from every device
  if learning_rate:  # Adam turns float noise into lr-sized steps: keep small
    config.transfer.g_lr = config.transfer.d_lr = learning_rate
  source_dir = save_models(
      stages.fresh_models(config, len(SOURCE)), directory / 'source')
  plan, data, spec = transfer_spec(config, source_dir)
  state = state_lib.create(spec.setup, spec.g_variables, spec.d_variables, 0)
  return plan.config, data, spec, spec.setup, state


def _data(config):
  return splits.load(config.data, need_source=True, resolution=32)


def test_equal_setups_share_one_jitted_step(monkeypatch):
  """A stage set up again (a resume, another seed, another test) reuses
  its traced step; a different setup, loop form or cleared cache does not."""
  config = tiny_config()

  def setup(g_lr=config.transfer.g_lr):
    c = copy.deepcopy(config.transfer)
    c.g_lr = g_lr
    mask = {'w': True, 'v': False}
    g_opt, d_opt = state_lib.optimizers(c, mask, mask)
    return state_lib.StageSetup(
        generator=biggan.Generator(resolution=32, num_classes=2, ch=2),
        discriminator=biggan.Discriminator(resolution=32, num_classes=2, ch=2),
        g_optimizer=g_opt,
        d_optimizer=d_opt,
        fake_labels=(0, 2),
        batch_size=8)

  mesh = parallel.make_mesh()
  step = steps.make_train_step(setup(), mesh)
  assert setup() == setup() and setup() is not setup()
  assert steps.make_train_step(setup(), mesh) is step
  assert steps.make_train_step(setup(g_lr=1.0), mesh) is not step
  assert steps.make_train_step(setup(), mesh, with_draws=True) is not step
  monkeypatch.setattr(xla_cpu, 'unrolled_loops_pay', lambda: False)
  scanned = steps.make_train_step(setup(), mesh)
  assert scanned is not step
  with steps.unrolled_loops():
    assert steps.make_train_step(setup(), mesh) is not scanned
  steps.clear_train_step_cache()
  assert steps.make_train_step(setup(), mesh) is not scanned


def test_sharded_step_equals_single_device_step(tmp_path):
  config, data, models, setup, state = _setup_and_state(
      tmp_path, learning_rate=1e-5)
  sampler = pipeline.BatchSampler(data.target, setup.real_per_step, 0)
  images, labels = sampler.batch(0)
  mesh = parallel.make_mesh()
  assert mesh.size == 8
  single = steps.make_train_step(setup)
  sharded = steps.make_train_step(setup, mesh)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  batch_1 = pipeline.to_device(
      images, labels,
      parallel.data_sharding(parallel.make_mesh(jax.devices()[:1])))
  batch_8 = pipeline.to_device(images, labels, parallel.data_sharding(mesh))
  assert len(batch_8['image'].sharding.device_set) == 8
  # Copies: the steps donate (and so delete) their input state.
  state_8 = jax.device_put(
      jax.tree_util.tree_map(np.array, state), parallel.replicated(mesh))
  state_1 = jax.device_put(jax.tree_util.tree_map(np.array, state), one)
  for _ in range(2):
    state_1, metrics_1 = single(state_1, batch_1)
    state_8, metrics_8 = sharded(state_8, batch_8)
  for key in metrics_1:
    np.testing.assert_allclose(
        metrics_8[key], metrics_1[key], rtol=1e-4, atol=1e-5, err_msg=key)
  for name in ('g_params', 'd_params', 'g_state', 'd_state'):
    a, b = flat(getattr(state_1, name)), flat(getattr(state_8, name))
    for key in a:
      np.testing.assert_allclose(
          b[key], a[key], rtol=1e-4, atol=1e-5, err_msg=f'{name}/{key}')


def test_frozen_parameters_are_bit_identical_and_hold_no_adam_state(tmp_path):
  config, data, models, setup, state = _setup_and_state(tmp_path)
  before = flat(state.g_params)
  sampler = pipeline.BatchSampler(data.target, setup.real_per_step, 0)
  step_fn = steps.make_train_step(setup)
  for step in range(3):
    batch = {
        'image': jnp.asarray(sampler.batch(step)[0] / 127.5 - 1, jnp.float32),
        'label':
            jnp.asarray(sampler.batch(step)[1])  # global labels
    }
    state, _ = step_fn(state, batch)
  after = flat(state.g_params)
  trained = [k for k in before if '/kp/' in k]
  frozen = [k for k in before if '/kp/' not in k]
  assert trained and frozen
  for key in frozen:
    np.testing.assert_array_equal(after[key], before[key], err_msg=key)
  assert all(not np.array_equal(after[k], before[k]) for k in trained)
  # Adam moments exist exactly for the trained (KP) parameters.
  # Paths look like ('train', <param path>) under optax.multi_transform;
  # the only other leaf is Adam's step count.
  moments = []
  for path, _ in jax.tree_util.tree_flatten_with_path(state.g_opt_state)[0]:
    keys = [p.key for p in path if isinstance(p, jax.tree_util.DictKey)]
    if len(keys) > 1:
      assert keys[0] == 'train'
      moments.append('/'.join(keys[1:]))
  assert sorted(moments) == sorted(trained * 2)  # mu and nu each


def interrupt_at(monkeypatch, step_to_stop):
  """SIGTERM arrives while the loop fetches the batch of `step_to_stop`."""
  original = pipeline.BatchSampler.process_batch

  def fetch(self, step):
    if step == step_to_stop:
      os.kill(os.getpid(), signal.SIGTERM)
    return original(self, step)

  monkeypatch.setattr(pipeline.BatchSampler, 'process_batch', fetch)


def test_interrupted_and_resumed_run_equals_uninterrupted(
    tmp_path, monkeypatch):
  config = tiny_config(pretrain=4, transfer=3)
  config.pretrain.checkpoint_every = config.transfer.checkpoint_every = 100
  whole = loop.train_and_evaluate(config, tmp_path / 'whole')
  with monkeypatch.context() as patch:
    interrupt_at(patch, 2)  # preempted during pretraining step 3
    with pytest.raises(loop.Preempted, match='rerun the same command'):
      loop.train_and_evaluate(config, tmp_path / 'resumed')
  assert not (tmp_path / 'resumed' / 'pretrain' / 'summary.json').exists()
  resumed = loop.train_and_evaluate(config, tmp_path / 'resumed')
  _, _, expected = model_io.load(whole)
  _, _, actual = model_io.load(resumed)
  a, b = flat(expected), flat(actual)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(b[key], a[key], err_msg=key)


def test_tfds_cifar100_path_under_mock_data(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  config = tiny_config(pretrain=1, transfer=1)
  config.data.name = 'cifar100'
  # As many classes as the other tiny runs: the same compiled programs.
  config.data.source_classes = ('apple', 'bicycle', 'castle', 'dolphin')
  config.data.target_classes = ('bear', 'wolf')
  config.data.target_images_per_class = 0
  with tfds.testing.mock_data(
      policy=tfds.testing.MockPolicy.USE_CODE, num_examples=1000):
    model_dir = loop.train_and_evaluate(config, tmp_path)
  generator, _, _ = model_io.load(model_dir)
  assert (generator.num_classes, generator.num_new_classes) == (4, 2)


def _write_folder(root, classes, count=6, size=(40, 52)):
  rng = np.random.default_rng(0)
  for i, name in enumerate(classes):
    (root / name).mkdir(parents=True)
    for k in range(count):
      pixels = rng.integers(0, 255, size + (3,), dtype=np.uint8)
      pixels[..., i % 3] = 255
      Image.fromarray(pixels).save(root / name / f'{k}.png')


def test_image_folder_path(tmp_path):
  _write_folder(tmp_path / 'images',
                ['alley', 'arch', 'cat', 'dog', 'eel', 'fox'])
  config = tiny_config(pretrain=1, transfer=1)
  config.data.name = 'image_folder'
  config.data.root = str(tmp_path / 'images')
  config.data.source_classes = ('cat', 'dog', 'eel', 'fox')
  config.data.target_classes = ('alley', 'arch')
  config.data.target_images_per_class = 5
  model_dir = loop.train_and_evaluate(config, tmp_path / 'work')
  generator, _, _ = model_io.load(model_dir)
  assert (generator.num_classes, generator.num_new_classes) == (4, 2)


@pytest.mark.parametrize('change,message', [
    (lambda c: setattr(c.transfer, 'd_chunk_reduction', 'avg'),
     r"config\.transfer\.d_chunk_reduction='avg' is not valid: use one of "
     r"\['mean', 'sum'\]"),
    (lambda c: setattr(c.pretrain, 'batch_size', 10),
     r'config\.pretrain\.batch_size 10 does not split over 8 devices: use 8 '
     r'or 16'),
    (lambda c: setattr(c, 'stages', ('transfer',)),
     r"stage 'transfer' needs a model to start from"),
    (lambda c: setattr(c.model, 'init', 'xavier'), r'config\.model\.init'),
])
def test_bad_config_values_are_explained(tmp_path, change, message):
  config = tiny_config()
  change(config)
  with pytest.raises(stages.ConfigError, match=message):
    loop.train_and_evaluate(config, tmp_path)


def test_missing_dataset_is_explained(tmp_path):
  config = tiny_config()
  config.data.name = 'image_folder'
  config.data.root = str(tmp_path / 'nowhere')
  from cgt_jax.data import datasets
  with pytest.raises(datasets.DatasetError, match='nowhere does not exist'):
    loop.train_and_evaluate(config, tmp_path / 'work')


def test_class_count_mismatch_with_checkpoint_is_explained(tmp_path):
  config = tiny_config()
  source = save_models(stages.fresh_models(config, 4), tmp_path / 'source')
  config.stages = ('transfer',)
  config.source_checkpoint = str(source)
  config.data.source_classes = tuple(SOURCE[:3])
  with pytest.raises(
      stages.ConfigError, match=r'has 4 classes but the config names 3 source'):
    loop.train_and_evaluate(config, tmp_path / 'work')


def test_cli_reports_user_errors_in_one_line(tmp_path):
  result = subprocess.run([
      sys.executable, '-m', 'cgt_jax.main', '--config=configs/demo.py',
      f'--workdir={tmp_path}', '--config.transfer.d_chunk_reduction=avg'
  ],
                          capture_output=True,
                          text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)),
                          env={
                              **os.environ, 'XLA_FLAGS': ''
                          })
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr
  assert "error: config.transfer.d_chunk_reduction='avg'" in result.stderr


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  config = tiny_config(pretrain=4)
  config.stages = ('pretrain',)
  config.pretrain.checkpoint_every = 1
  config.pretrain.g_lr = 1e30  # G explodes after its first update
  with pytest.raises(
      loop.TrainingDiverged,
      match=r'non-finite .* at step \d; the last good '
      r'checkpoint \(step \d\) is kept'):
    loop.train_and_evaluate(config, tmp_path)
  kept = sorted((tmp_path / 'pretrain' / 'checkpoints' / 'latest').iterdir())
  assert kept
  assert not (tmp_path / 'pretrain' / 'summary.json').exists()


def test_ema_update_copies_until_start_then_averages():
  ema, current = {'w': np.float32(1.0)}, {'w': np.float32(3.0)}
  before = optim.ema_update(ema, current, 0.9, step=2, start=3)
  after = optim.ema_update(ema, current, 0.9, step=3, start=3)
  assert float(before['w']) == 3.0  # a copy of G before ema_start
  np.testing.assert_allclose(float(after['w']), 0.9 * 1.0 + 0.1 * 3.0)


def test_ema_generator_is_exported_and_evaluated(tmp_path, eval_cache):
  config = tiny_config(pretrain=2)
  config.stages = ('pretrain',)
  config.pretrain.ema_decay = 0.5
  config.pretrain.ema_start = 1  # a copy at step 0, an average at step 1
  config.eval.final = True
  config.eval.cache_dir = str(eval_cache)
  loop.train_and_evaluate(config, tmp_path)
  stage = tmp_path / 'pretrain'
  _, _, model = model_io.load(stage / 'model')
  generator, discriminator, ema = model_io.load(stage / 'model_ema')
  # The EMA of G, with the stage's D: a source model like `model`.
  assert discriminator is not None
  a, b = flat(model['generator']), flat(ema['generator'])
  assert a.keys() == b.keys()
  assert not all(np.array_equal(a[k], b[k]) for k in a)
  d_final, d_ema = flat(model['discriminator']), flat(ema['discriminator'])
  for key, value in d_final.items():
    np.testing.assert_array_equal(d_ema[key], value, err_msg=key)
  summary = json.loads((stage / 'summary.json').read_text())
  final = {
      k: v
      for k, v in summary['final_eval'].items()
      if k not in ('step', 'wall_time')
  }
  assert summary['final_eval_ema'].keys() == final.keys()
  assert summary['final_eval_ema'] != final  # the EMA G was evaluated


def test_a_best_checkpoint_after_the_resumed_step_is_evaluated_again(tmp_path):
  # A run killed after an evaluation saved a best checkpoint (step 4) but
  # before its next periodic save resumes from an earlier step (here none)
  # and evaluates step 4 again: orbax refused to save that step twice.
  state = {'w': np.arange(3.0, dtype=np.float32)}
  killed = checkpointing.StageCheckpoints(
      tmp_path, best_metric='domain_fd', best_mode='min')
  killed.save_if_best(4, state, {'domain_fd': 7.0})
  killed.close()
  resumed = checkpointing.StageCheckpoints(
      tmp_path, best_metric='domain_fd', best_mode='min')
  assert resumed.latest_step() is None
  resumed.forget_best_after(0)
  resumed.save_if_best(4, {'w': state['w'] + 1}, {'domain_fd': 6.0})
  step, restored = resumed.restore_best(checkpointing.abstract_like(state))
  resumed.close()
  assert step == 4
  np.testing.assert_array_equal(restored['w'], state['w'] + 1)
