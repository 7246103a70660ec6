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

import dataclasses
import json
import pathlib
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np

from cgt_jax import checkpointing
from cgt_jax import comparison
from cgt_jax import data as data_lib
from cgt_jax import datasets
from cgt_jax import evaluator as evaluator_lib
from cgt_jax import input_pipeline
from cgt_jax import methods
from cgt_jax import model_io
from cgt_jax import parallel
from cgt_jax import reporting
from cgt_jax import stages
from cgt_jax import state as state_lib
from cgt_jax import steps
from cgt_jax import visualize
from cgt_jax.convert import keymap


class TrainingDiverged(RuntimeError):
  """A loss became NaN or infinite."""


class Preempted(RuntimeError):
  """SIGTERM arrived; the state was saved."""


# Mistakes a user can fix: commands report them in one line, no traceback.
USER_ERRORS = (stages.ConfigError, datasets.DatasetError,
               model_io.ModelDirError, keymap.StateDictMismatchError,
               methods.MethodError, TrainingDiverged)


def train_and_evaluate(config, workdir) -> pathlib.Path:
  """Runs `config.stages`; returns the last stage's model directory."""
  config = methods.resolve(config)
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
      need_source=stages.needs_source_data(config),
      resolution=config.model.resolution)
  previous = config.source_checkpoint or None
  for stage in run_stages:
    previous = run_stage(stage, config, workdir, mesh, data, previous)
  _write_comparison(workdir, run_stages[-1])
  return pathlib.Path(previous)


def _write_comparison(workdir, stage):
  """comparison.{md,png}: the last stage's metric over training."""
  if (workdir / stage / 'eval_history.json').exists():
    comparison.compare([workdir], stage=stage, out=workdir)


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
  evaluate = None
  if config[stage].eval_every or config.eval.final:
    evaluate = evaluator_lib.make(config, stage, models, data, mesh)
  metric, mode = evaluator_lib.best_metric(config)
  checkpoints = checkpointing.StageCheckpoints(
      stage_dir / 'checkpoints',
      best_metric=metric if evaluate else '',
      best_mode=mode)
  if checkpoints.latest_step() is not None:
    state = checkpoints.restore_latest(
        checkpointing.abstract_like(state, parallel.replicated(mesh)))
    print(f'[{stage}] resumed from step {int(state.step)}', flush=True)
  run = _StageRun(stage, config, config[stage],
                  setup, models, mesh, checkpoints,
                  reporting.make_writer(stage_dir), stage_dir, evaluate)
  start = time.perf_counter()
  try:
    state, metrics = _loop(run, state, dataset)
  finally:
    checkpoints.close()
    run.writer.flush()
  return _export(stage, config, setup, state, stage_dir, models, metrics,
                 time.perf_counter() - start)


@dataclasses.dataclass
class _StageRun:
  """What the loop of one stage works with."""
  stage: str
  config: object
  stage_config: object
  setup: state_lib.StageSetup
  models: stages.StageModels
  mesh: object
  checkpoints: checkpointing.StageCheckpoints
  writer: object
  stage_dir: pathlib.Path
  evaluate: object


def _loop(run, state, dataset):
  """The step loop: no host sync except at log/sample/eval/checkpoint steps."""
  c = run.stage_config
  sampler = input_pipeline.BatchSampler(
      dataset,
      run.setup.real_per_step,
      seed=run.config.data.seed + run.config.seed)
  sharding = parallel.data_sharding(run.mesh)
  train_step = steps.make_train_step(run.setup, run.mesh)
  sample_grid = _grid_sampler(run.setup, run.config)
  progress = reporting.Progress(run.stage, int(state.step), c.num_steps)
  preemption = _PreemptionFlag()
  metrics = {}
  for step in range(int(state.step), c.num_steps):
    images, labels = sampler.process_batch(step)
    batch = input_pipeline.to_device(
        images, labels, sharding, label_offset=run.models.label_offset)
    state, metrics = train_step(state, batch)
    done = step + 1
    if done % c.log_every == 0 or done == c.num_steps:
      scalars = _checked(metrics, done, run)
      scalars['steps_per_sec'] = progress.report(done, scalars)
      run.writer.write_scalars(done, scalars)
    if _due(c.sample_every, done):
      _write_samples(sample_grid, state, done, run)
    if _due(c.eval_every, done):
      _evaluate(run, state, done)
    if _due(c.checkpoint_every, done) or preemption.raised:
      _checked(metrics, done, run)
      run.checkpoints.save(done, state)
    if preemption.raised:
      raise Preempted(f'[{run.stage}] stopped by SIGTERM at step {done}; '
                      f'state saved in {run.stage_dir}/checkpoints: rerun '
                      'the same command to resume')
  preemption.restore()
  _finish(run, state, sample_grid)
  return state, _host_means(metrics)


def _due(every: int, step: int) -> bool:
  return bool(every) and step % every == 0


def _finish(run, state, sample_grid):
  """Final checkpoint, grid and evaluation, unless the loop just did them."""
  c, last = run.stage_config, run.stage_config.num_steps
  if run.checkpoints.latest_step() != last:
    run.checkpoints.save(last, state)
  if not _due(c.sample_every, last):
    _write_samples(sample_grid, state, last, run)
  if run.evaluate is not None and not _due(c.eval_every, last):
    _evaluate(run, state, last)


def _evaluate(run, state, step):
  """Evaluates, logs, keeps the best checkpoint, appends to the history."""
  if run.evaluate is None:
    return None
  start = time.perf_counter()
  results = run.evaluate(state.g_variables())
  scalars = {k: v for k, v in results.items() if not isinstance(v, list)}
  run.writer.write_scalars(step, {f'eval/{k}': v for k, v in scalars.items()})
  run.checkpoints.save_if_best(step, state, scalars)
  history_file = run.stage_dir / 'eval_history.json'
  history = (
      json.loads(history_file.read_text()) if history_file.exists() else [])
  history = [h for h in history if h['step'] < step]  # a resumed run redoes
  history.append({'step': step, 'wall_time': time.time(), **results})
  history_file.write_text(json.dumps(history, indent=1))
  shown = ', '.join(f'{k} {v:.4g}' for k, v in scalars.items())
  print(
      f'[{run.stage}] eval at step {step}: {shown} '
      f'({time.perf_counter() - start:.0f}s)',
      flush=True)
  return results


def _host_means(metrics) -> dict:
  """The step's per-chunk metrics as floats, averaged over the chunks."""
  return {k: float(np.mean(v)) for k, v in jax.device_get(metrics).items()}


def _checked(metrics, step, run) -> dict:
  """Metrics on the host; stops training on a NaN/inf loss."""
  scalars = _host_means(metrics)
  bad = sorted(k for k, v in scalars.items() if not np.isfinite(v))
  if bad:
    last = run.checkpoints.latest_step()
    kept = (f'the last good checkpoint (step {last}) is kept in '
            f'{run.stage_dir}/checkpoints'
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


def _grid_sampler(setup, config):
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


def _write_samples(sample_grid, state, step, run):
  picture = visualize.grid(sample_grid(state.g_variables()), sample_grid.rows)
  path = visualize.save_png(picture,
                            run.stage_dir / 'samples' / f'step_{step:07d}.png')
  run.writer.write_images(step, {'samples': picture[None]})
  return path


def _eval_summary(stage_dir, config) -> dict:
  """The final evaluation and the best one (with its iteration), if any."""
  history_file = stage_dir / 'eval_history.json'
  if not history_file.exists():
    return {}
  history = json.loads(history_file.read_text())
  metric, mode = evaluator_lib.best_metric(config)
  pick = min if mode == 'min' else max
  best = pick(history, key=lambda h: h.get(metric, float('nan')))
  return {
      'final_eval': history[-1],
      'best_eval': {
          'metric': metric,
          'step': best['step'],
          'value': best.get(metric)
      },
      'evaluations': len(history)
  }


def _trainable_counts(stage, config, models) -> dict:
  """Scalars that train in each network (the parameter cost of a method)."""
  masks = stages.trainable_masks(stage, config, models)
  params = (models.g_variables['params'], models.d_variables['params'])
  return {
      name:
          sum(
              int(np.size(p)) for p, t in zip(
                  jax.tree_util.tree_leaves(tree),
                  jax.tree_util.tree_leaves(mask)) if t)
      for name, tree, mask in zip(('generator', 'discriminator'), params, masks)
  }


def _export(stage, config, setup, state, stage_dir, models, metrics, seconds):
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
      'method': config.method,
      'classes': models.class_names,
      'label_offset': models.label_offset,
      'trainable_parameters': _trainable_counts(stage, config, models),
      **_eval_summary(stage_dir, config),
  }
  (stage_dir / 'summary.json').write_text(json.dumps(summary, indent=2))
  print(
      f'[{stage}] done: {int(state.step)} steps in {seconds:.0f}s; '
      f'model in {model_dir}',
      flush=True)
  return model_dir
