"""train_and_evaluate(config, workdir): the configured stages, in order.

Workdir layout (one folder per stage):

    WORKDIR/config.json
    WORKDIR/<stage>/checkpoints/{latest,best}/   orbax, for resuming
    WORKDIR/<stage>/samples/step_XXXXXXX.png      fixed-z grids, a row a class
    WORKDIR/<stage>/model/                        the stage's exported models
    WORKDIR/<stage>/summary.json                  steps, wall time, metrics
    WORKDIR/<stage>/events.out.tfevents.*         TensorBoard scalars/images

A stage whose `summary.json` exists is complete and skipped on a rerun; an
interrupted stage resumes from its newest checkpoint.
"""

import json
import pathlib
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np

from cgt_jax import checkpointing
from cgt_jax import data as data_lib
from cgt_jax import input_pipeline
from cgt_jax import model_io
from cgt_jax import parallel
from cgt_jax import reporting
from cgt_jax import stages
from cgt_jax import state as state_lib
from cgt_jax import steps
from cgt_jax import visualize


class TrainingDiverged(RuntimeError):
  """A loss became NaN or infinite."""


class Preempted(RuntimeError):
  """SIGTERM arrived; the state was saved."""


def train_and_evaluate(config, workdir) -> pathlib.Path:
  """Runs `config.stages`; returns the last stage's model directory."""
  stages.validate_config(config)
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  mesh = parallel.make_mesh()
  run_stages = [
      s for s in config.stages
      if not (s == 'pretrain' and config.source_checkpoint)
  ]
  data = data_lib.load(
      config.data,
      need_source='pretrain' in run_stages,
      resolution=config.model.resolution)
  previous = config.source_checkpoint or None
  for stage in run_stages:
    previous = run_stage(stage, config, workdir, mesh, data, previous)
  return pathlib.Path(previous)


def run_stage(stage, config, workdir, mesh, data, previous_model):
  """Trains one stage (resuming if possible); returns its model directory."""
  stage_dir = workdir / stage
  summary_file = stage_dir / 'summary.json'
  if summary_file.exists():
    print(f'[{stage}] already complete ({summary_file}); skipping', flush=True)
    return stage_dir / 'model'
  models = stages.initial_models(stage, config, data, previous_model)
  dataset = data.source if stage == 'pretrain' else data.target
  setup = stages.make_setup(stage, config, models)
  state = state_lib.create(setup, models.g_variables, models.d_variables,
                           config.seed)
  state = jax.device_put(state, parallel.replicated(mesh))
  checkpoints = checkpointing.StageCheckpoints(stage_dir / 'checkpoints')
  if checkpoints.latest_step() is not None:
    state = checkpoints.restore_latest(
        checkpointing.abstract_like(state, parallel.replicated(mesh)))
    print(f'[{stage}] resumed from step {int(state.step)}', flush=True)
  writer = reporting.make_writer(stage_dir)
  start = time.perf_counter()
  try:
    state, metrics = _loop(stage, config, setup, state, dataset, models, mesh,
                           checkpoints, writer, stage_dir)
  finally:
    checkpoints.close()
    writer.flush()
  return _export(stage, setup, state, stage_dir, models, metrics,
                 time.perf_counter() - start)


def _loop(stage, config, setup, state, dataset, models, mesh, checkpoints,
          writer, stage_dir):
  """The step loop: no host sync except at log/sample/checkpoint steps."""
  stage_config = config[stage]
  num_steps = stage_config.num_steps
  sampler = input_pipeline.BatchSampler(
      dataset, setup.real_per_step, seed=config.data.seed + config.seed)
  sharding = parallel.data_sharding(mesh)
  train_step = steps.make_train_step(setup, mesh)
  sample_grid = _grid_sampler(setup, config, models)
  progress = reporting.Progress(stage, int(state.step), num_steps)
  preemption = _PreemptionFlag()
  metrics = {}
  for step in range(int(state.step), num_steps):
    images, labels = sampler.process_batch(step)
    batch = input_pipeline.to_device(
        images, labels, sharding, label_offset=models.label_offset)
    state, metrics = train_step(state, batch)
    done = step + 1
    if done % stage_config.log_every == 0 or done == num_steps:
      scalars = _checked(metrics, done, checkpoints, stage_dir)
      scalars['steps_per_sec'] = progress.report(done, scalars)
      writer.write_scalars(done, scalars)
    if stage_config.sample_every and done % stage_config.sample_every == 0:
      _write_samples(sample_grid, state, done, stage_dir, writer)
    if done % stage_config.checkpoint_every == 0 or preemption.raised:
      _checked(metrics, done, checkpoints, stage_dir)
      checkpoints.save(done, state)
    if preemption.raised:
      raise Preempted(f'[{stage}] stopped by SIGTERM at step {done}; state '
                      f'saved in {stage_dir}/checkpoints: rerun the same '
                      'command to resume')
  preemption.restore()
  if checkpoints.latest_step() != num_steps:
    checkpoints.save(num_steps, state)
  if not (stage_config.sample_every and
          num_steps % stage_config.sample_every == 0):
    _write_samples(sample_grid, state, num_steps, stage_dir, writer)
  return state, {k: float(v) for k, v in jax.device_get(metrics).items()}


def _checked(metrics, step, checkpoints, stage_dir) -> dict:
  """Metrics on the host; stops training on a NaN/inf loss."""
  scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
  bad = sorted(k for k, v in scalars.items() if not np.isfinite(v))
  if bad:
    last = checkpoints.latest_step()
    kept = (f'the last good checkpoint (step {last}) is kept in '
            f'{stage_dir}/checkpoints'
            if last is not None else 'no checkpoint was written yet')
    raise TrainingDiverged(
        f'non-finite {", ".join(bad)} at step {step}; {kept}. Lower the '
        'learning rates (g_lr/d_lr) or check the data, then rerun')
  return scalars


class _PreemptionFlag:
  """Turns SIGTERM into a flag the loop checks after each step."""

  def __init__(self):
    self.raised = False
    self._previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def _grid_sampler(setup, config, models):
  """A jitted `variables -> images` for a fixed grid of z, one class a row."""
  low, high = setup.fake_labels
  rows = np.unique(
      np.linspace(low, high - 1, min(config.sample.max_rows,
                                     high - low)).round())
  cols = config.sample.columns
  labels = jnp.asarray(np.repeat(rows.astype(np.int32), cols))
  z = jax.random.normal(
      jax.random.key(config.seed + 1), (labels.shape[0], setup.generator.dim_z))
  train_mode = config.sample.train_mode

  @jax.jit
  def sample(variables):
    out = steps.generate(setup.generator, variables, z, labels, train_mode)
    return out[0] if train_mode else out

  sample.rows = len(rows)
  return sample


def _write_samples(sample_grid, state, step, stage_dir, writer):
  picture = visualize.grid(sample_grid(state.g_variables()), sample_grid.rows)
  path = visualize.save_png(picture,
                            stage_dir / 'samples' / f'step_{step:07d}.png')
  writer.write_images(step, {'samples': picture[None]})
  return path


def _export(stage, setup, state, stage_dir, models, metrics, seconds):
  """Writes the stage's model directory and summary (marks it complete)."""
  model_dir = model_io.save(stage_dir / 'model',
                            model_io.module_arch(setup.generator),
                            state.g_variables(),
                            model_io.module_arch(setup.discriminator),
                            state.d_variables())
  if state.g_ema:
    model_io.save(stage_dir / 'model_ema',
                  model_io.module_arch(setup.generator), state.g_ema)
  summary = {
      'stage': stage,
      'steps': int(state.step),
      'wall_seconds': round(seconds, 1),
      'final_metrics': metrics,
      'classes': models.class_names,
      'label_offset': models.label_offset,
  }
  (stage_dir / 'summary.json').write_text(json.dumps(summary, indent=2))
  print(
      f'[{stage}] done: {int(state.step)} steps in {seconds:.0f}s; '
      f'model in {model_dir}',
      flush=True)
  return model_dir
