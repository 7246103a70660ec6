"""train_and_evaluate(config, workdir): the configured stages, in order.

Workdir layout (one folder per stage):

    WORKDIR/config.json
    WORKDIR/<stage>/checkpoints/{latest,best}/   orbax, for resuming
    WORKDIR/<stage>/samples/step_XXXXXXX.png      fixed-z grids, a row a class
    WORKDIR/<stage>/samples/best.png              ... at the best evaluation
    WORKDIR/<stage>/model/                        the stage's exported models
                                                  (`export`: final or best)
    WORKDIR/<stage>/model_best/                   ... at its best evaluation
    WORKDIR/<stage>/model_final/                  ... at the end (export=best)
    WORKDIR/<stage>/model_ema/                    the EMA generator and D (EMA on)
    WORKDIR/<stage>/summary.json                  steps, wall time, metrics
    WORKDIR/<stage>/events.out.tfevents.*         TensorBoard scalars/images

A stage whose `summary.json` exists is complete and skipped on a rerun; an
interrupted stage resumes from its newest checkpoint. A run holds
WORKDIR/.cgt_jax.lock while it runs (`runtime.workdir_lock`): a second run
on the same workdir stops at once. On several processes
every process trains and saves (orbax checkpoints are collective); only
process 0 writes the other files and logs.
"""

import dataclasses
import json
import pathlib
import shutil
import time

import jax
import numpy as np
from absl import logging

from cgt_jax.analysis import visualize
from cgt_jax.convert import keymap
from cgt_jax.data import datasets
from cgt_jax.data import pipeline
from cgt_jax.data import splits
from cgt_jax.evaluation import comparison
from cgt_jax.evaluation import evaluator as evaluator_lib
from cgt_jax.models import model_io
from cgt_jax.runtime import parallel
from cgt_jax.runtime import workdir_lock
from cgt_jax.training import checkpointing
from cgt_jax.training import closing
from cgt_jax.training import health
from cgt_jax.training import reporting
from cgt_jax.training import resume_check
from cgt_jax.training import state as state_lib
from cgt_jax.training import steps
from cgt_jax.transfer import methods
from cgt_jax.transfer import stages

TrainingDiverged = health.TrainingDiverged


class Preempted(RuntimeError):
  """SIGTERM arrived; the state was saved."""


# Mistakes a user can fix: commands report them in one line, no traceback.
USER_ERRORS = (stages.ConfigError, datasets.DatasetError,
               model_io.ModelDirError, keymap.StateDictMismatchError,
               methods.MethodError, TrainingDiverged,
               workdir_lock.WorkdirLocked, workdir_lock.WorkdirUnwritable,
               resume_check.SettingsChanged,
               checkpointing.CheckpointWriteFailed)
# The exit status of a run stopped by SIGTERM with its state saved
# (sysexits' EX_TEMPFAIL): a scheduler requeues it; 0 means finished.
PREEMPTED_STATUS = 75


def train_and_evaluate(config,
                       workdir,
                       accept_config_changes: bool = False) -> pathlib.Path:
  """Runs the stages of `config`; returns the last stage's model directory.

  A workdir with progress resumes it, with the settings it started with
  (`resume_check`; `accept_config_changes` lets a rerun change them).
  """
  plan = stages.resolve(config)
  workdir = pathlib.Path(workdir).absolute()
  primary = jax.process_index() == 0
  if primary:
    workdir_lock.make_workdir(workdir)
  # Before the first write: a second run must not touch this one's files.
  with workdir_lock.held(workdir, enabled=primary):
    return _train_and_evaluate(plan, workdir, accept_config_changes)


def _train_and_evaluate(plan, workdir, accept_config_changes) -> pathlib.Path:
  resume_check.check_settings(workdir, plan, accept_config_changes)
  resume_check.check_progress(workdir, plan)
  preemption = checkpointing.Preemption()
  try:
    return _run_stages(plan, workdir, preemption)
  finally:
    preemption.close()


def _run_stages(plan, workdir, preemption) -> pathlib.Path:
  mesh = parallel.make_mesh()
  with reporting.phase('[data]', f'loading {plan.config.data.name} images'):
    data = splits.load(
        plan.config.data,
        need_source=plan.needs_source_data,
        resolution=plan.config.model.resolution,
        target_first_label=plan.target_first_label())
  logging.info('[data] %s', _describe(data))
  if jax.process_index() == 0:  # the run's settings, once they all check out
    resume_check.record(workdir, plan.config)
  previous = plan.source_checkpoint
  for stage in plan.stages:
    if preemption.requested():
      raise Preempted(f'stopped by SIGTERM before stage {stage}; nothing new '
                      'to save: rerun the same command to resume')
    previous = run_stage(stage, plan, workdir, mesh, data,
                         start_model(plan, stage, previous), preemption)
  if jax.process_index() == 0:
    _write_comparison(workdir, plan.stages[-1])
    for line in closing.lines(closing.summarize(workdir, plan.stages)):
      logging.info('%s', line)
  return pathlib.Path(previous)


def _describe(data) -> str:
  parts = [(data.source, 'source'), (data.target, 'new')]
  return '; '.join(f'{d.num_classes} {kind} classes, {len(d.images)} images '
                   f'(labels {d.label_range[0]}..{d.label_range[1] - 1})'
                   for d, kind in parts
                   if d is not None)


def _write_comparison(workdir, stage):
  """comparison.{md,png}: the last stage's metric over training."""
  if (workdir / stage / 'eval_history.json').exists():
    comparison.compare([workdir], stage=stage, out=workdir)


def start_model(plan, stage: str, previous):
  """The model `stage` starts from, given the previous stage's `model`."""
  if previous is None or stage != 'finetune':
    return previous
  # A method that derives its second stage from the transfer's settings
  # (MineGAN: miners + G after mining) continues the first one's end.
  return finetune_start(previous,
                        plan.stage_config(stage).get('start_from', 'final'))


def finetune_start(model_dir, start_from: str):
  """Fine-tuning starts from the transferred model of the best evaluation
  (`start_from='best'`, when there was one: model_best beside
  `model_dir`) or the final one (model_final when the stage exported its
  best model as `model`)."""
  other = pathlib.Path(model_dir).with_name(f'model_{start_from}')
  return other if other.exists() else model_dir


def run_stage(stage, plan, workdir, mesh, data, previous_model, preemption):
  """Trains one stage (resuming if possible); returns its model directory."""
  stage_dir = workdir / stage
  reached, finished = resume_check.stage_progress(stage_dir)
  num_steps = plan.stage_config(stage).num_steps
  if finished and reached == num_steps:
    logging.info('[%s] already complete (%s); skipping', stage,
                 stage_dir / 'summary.json')
    return stage_dir / 'model'
  if finished:  # `resume_check.check_progress`: more steps than it trained
    logging.info('[%s] finished at step %d; training on to step %d', stage,
                 reached, num_steps)
  with reporting.phase(f'[{stage}]', 'building the models'):
    spec = stages.stage_spec(stage, plan, data, previous_model, stage_dir)
    state = state_lib.create(spec.setup, spec.g_variables, spec.d_variables,
                             plan.config.seed)
    state = jax.device_put(state, parallel.replicated(mesh))
  evaluate = None
  if plan.stage_config(stage).eval_every or plan.config.eval.final:
    with reporting.phase(f'[{stage}]', 'setting up the evaluation'):
      evaluate = evaluator_lib.make(plan.config, spec.generator, spec.dataset,
                                    data, mesh)
  metric, mode = evaluator_lib.best_metric(plan.config)
  checkpoints = checkpointing.StageCheckpoints(
      stage_dir / 'checkpoints',
      best_metric=metric if evaluate else '',
      best_mode=mode)
  if checkpoints.latest_step() is not None:
    state = checkpoints.restore_latest(
        checkpointing.abstract_like(state, parallel.replicated(mesh)))
    logging.info('[%s] resumed from step %d', stage, int(state.step))
  checkpoints.forget_best_after(int(state.step))
  c = plan.stage_config(stage)
  run = _StageRun(
      spec, plan.config, c, mesh, checkpoints, reporting.make_writer(stage_dir),
      stage_dir, evaluate,
      health.Guard(stage, c.divergence_bound,
                   c.divergence_patience), preemption)
  start = time.perf_counter()
  try:
    state, metrics = _loop(run, state)
    best = checkpoints.restore_best(
        checkpointing.abstract_like(state, parallel.replicated(mesh)))
    checkpoints.close()  # raises if the last write failed: no export then
  finally:
    checkpoints.close()
    run.writer.close()  # also when the stage fails: no open event file
  return _export(run, state, metrics,
                 time.perf_counter() - start, best, previous_model)


@dataclasses.dataclass
class _StageRun:
  """What the loop of one stage works with."""
  spec: stages.StageSpec
  config: object
  stage_config: object
  mesh: object
  checkpoints: checkpointing.StageCheckpoints
  writer: object
  stage_dir: pathlib.Path
  evaluate: object
  guard: health.Guard
  preemption: checkpointing.Preemption

  @property
  def stage(self) -> str:
    return self.spec.stage


def _loop(run, state):
  """The step loop: no host sync except at log/sample/eval/checkpoint steps."""
  c, setup = run.stage_config, run.spec.setup
  sampler = pipeline.BatchSampler(
      run.spec.dataset,
      setup.real_per_step,
      seed=run.config.data.seed + run.config.seed)
  sharding = parallel.data_sharding(run.mesh)
  first = int(state.step)
  train_step = steps.make_train_step(setup, run.mesh)
  if first < c.num_steps:
    train_step = _compiled(train_step, state, _batch(sampler, first, sharding),
                           run.stage)
  sample_grid = _grid_sampler(setup, run.config)
  progress = reporting.Progress(run.stage, c.num_steps, run.writer, first)
  metrics = {}
  for step in range(first, c.num_steps):
    state, metrics = train_step(state, _batch(sampler, step, sharding))
    done = step + 1
    if done % c.log_every == 0 or done == c.num_steps:
      scalars = _checked(metrics, done, run)
      run.writer.write_scalars(done, scalars)
      progress.log(done, scalars)
      run.checkpoints.raise_if_failed()  # a write that ended unfinished
    _periodic(run, state, metrics, done, sample_grid)
    if _due(c.eval_every, done):
      progress.restart(done)  # steps/s counts training, not evaluations
  _finish(run, state, sample_grid)
  return state, _host_means(metrics)


def _batch(sampler, step, sharding):
  images, labels = sampler.process_batch(step)
  return pipeline.to_device(images, labels, sharding)


def _compiled(train_step, state, batch, stage):
  """`train_step` compiled ahead of its first call, so that the log says
  what the first minute(s) of a stage go to (the same program the first
  call would compile)."""
  with reporting.phase(f'[{stage}]', 'compiling the train step'):
    return train_step.lower(state, batch).compile()


def _periodic(run, state, metrics, done, sample_grid):
  """Grids, evaluations and checkpoints due at step `done`."""
  c = run.stage_config
  if _due(c.sample_every, done):
    _write_samples(sample_grid, state, done, run)
  if _due(c.eval_every, done):
    _evaluate(run, state, done, sample_grid)
  stop = run.preemption.reached(done, run.checkpoints)
  if _due(c.checkpoint_every, done) or stop:
    _checked(metrics, done, run)
    _save_if_healthy(run, state, done)
  if stop:
    run.checkpoints.close()  # the save is on disk before the process exits
    raise Preempted(f'[{run.stage}] stopped by SIGTERM at step {done}; '
                    f'state of step {run.checkpoints.latest_step_on_disk()} '
                    f'saved in {run.stage_dir}/checkpoints: rerun the same '
                    'command to resume')


def _save_if_healthy(run, state, step):
  """Checkpoints `state` unless a value is beyond the divergence bound: the
  checkpoints kept must include one from before the trouble."""
  if run.guard.healthy:
    run.checkpoints.save(step, state)
  else:
    logging.warning(
        '[%s] step %d not checkpointed: values beyond the divergence '
        'bound since step %d', run.stage, step, run.guard.streak_start)


def _due(every: int, step: int) -> bool:
  return bool(every) and step % every == 0


def _finish(run, state, sample_grid):
  """Final checkpoint, grid and evaluation, unless the loop just did them."""
  c, last = run.stage_config, run.stage_config.num_steps
  if run.checkpoints.latest_step() != last:
    run.checkpoints.save(last, state)  # the guard passed the last step
  if not _due(c.sample_every, last):
    _write_samples(sample_grid, state, last, run)
  if run.evaluate is not None and not _due(c.eval_every, last):
    _evaluate(run, state, last, sample_grid)


def _evaluate(run, state, step, sample_grid):
  """Evaluates, logs, keeps the best checkpoint (and its grid,
  samples/best.png), appends to the history."""
  if run.evaluate is None:
    return None
  start = time.perf_counter()
  results = run.evaluate(state.g_variables())
  scalars = {k: v for k, v in results.items() if not isinstance(v, list)}
  run.writer.write_scalars(step, {f'eval/{k}': v for k, v in scalars.items()})
  run.checkpoints.save_if_best(step, state, scalars)
  if run.checkpoints.is_best(step):
    _write_samples(sample_grid, state, step, run, name='best.png')
  if jax.process_index() == 0:
    history_file = run.stage_dir / 'eval_history.json'
    history = (
        json.loads(history_file.read_text()) if history_file.exists() else [])
    history = [h for h in history if h['step'] < step]  # a resumed run redoes
    history.append({'step': step, 'wall_time': time.time(), **results})
    history_file.write_text(json.dumps(history, indent=1))
  shown = ', '.join(f'{k} {v:.4g}' for k, v in scalars.items())
  logging.info('[%s] eval at step %d: %s (%.0fs)', run.stage, step, shown,
               time.perf_counter() - start)
  return results


def _host_means(metrics) -> dict:
  """The step's per-chunk metrics as floats, averaged over the chunks."""
  return {k: float(np.mean(v)) for k, v in jax.device_get(metrics).items()}


def _checked(metrics, step, run) -> dict:
  """Metrics on the host; stops a run that failed (`health.Guard`)."""
  scalars = _host_means(metrics)
  last = run.checkpoints.latest_step()
  kept = (f'the last good checkpoint (step {last}) is kept in '
          f'{run.stage_dir}/checkpoints'
          if last is not None else 'no checkpoint was written yet')
  run.guard.check(scalars, step, run.stage_config.num_steps, kept)
  return scalars


def _grid_sampler(setup, config):
  """A jitted `variables -> images` for a fixed grid of z, one class a row."""
  low, high = setup.fake_labels
  rows = np.unique(
      np.linspace(low, high - 1, min(config.sample.max_rows,
                                     high - low)).round())
  cols = config.sample.columns
  labels = np.repeat(rows.astype(np.int32), cols)
  z = jax.random.normal(
      jax.random.key(config.seed + 1), (labels.shape[0], setup.generator.dim_z))
  train_mode = config.sample.train_mode

  def sample(variables):
    out = steps.jitted_generate(
        setup.generator, variables, z, labels, train=train_mode)
    return out[0] if train_mode else out

  sample.rows = len(rows)
  return sample


def _write_samples(sample_grid, state, step, run, name=None):
  variables = parallel.local_copy(state.g_variables(), run.mesh)
  picture = visualize.grid(sample_grid(variables), sample_grid.rows)
  run.writer.write_images(
      step, {'best_samples' if name else 'samples': picture[None]})
  if jax.process_index() == 0:
    visualize.save_png(
        picture, run.stage_dir / 'samples' / (name or f'step_{step:07d}.png'))


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


def _save_models(spec, directory, state):
  # A model there is this stage's own, from an export cut short or a
  # stage now trained further.
  return model_io.save(
      directory,
      model_io.module_arch(spec.generator),
      state.g_variables(),
      model_io.module_arch(spec.discriminator),
      state.d_variables(),
      overwrite=True,
      classes=spec.model_classes)


def _export(run, state, metrics, seconds, best, previous_model):
  """Writes the stage's model directories and summary (marks it complete).

  `best`: `(step, state)` of the best evaluation, exported as model_best.
  `model` holds what the stage config's `export` names: the final state,
  or the best one (then model_final holds the final state).
  """
  spec, stage_dir = run.spec, run.stage_dir
  generator_arch = model_io.module_arch(spec.generator)
  exported = _exported(run.stage_config, state, best)
  model_dir = _save_models(spec, stage_dir / 'model', exported[1])
  if best is not None:
    _save_models(spec, stage_dir / 'model_best', best[1])
  if exported[0] != int(state.step):
    _save_models(spec, stage_dir / 'model_final', state)
  elif jax.process_index() == 0:
    # From an earlier export='best' of this stage: `model` is final now, and
    # a stale model_final would be what a 'final' fine-tuning starts from.
    shutil.rmtree(stage_dir / 'model_final', ignore_errors=True)
  ema = {}
  if state.g_ema:
    # With the stage's D, so that it is a source model like `model` (what
    # BigGAN-PyTorch pairs too: G_ema with D).
    model_io.save(
        stage_dir / 'model_ema',
        generator_arch,
        state.g_ema,
        model_io.module_arch(spec.discriminator),
        state.d_variables(),
        overwrite=True,
        classes=spec.model_classes)
    if run.evaluate is not None:
      ema = {'final_eval_ema': run.evaluate(state.g_ema)}
  if jax.process_index() == 0:
    summary = {
        'stage': spec.stage,
        'steps': int(state.step),
        'wall_seconds': round(seconds, 1),
        'final_metrics': metrics,
        'method': run.config.method,
        'augment': run.config.get('augment', ''),
        'classes': spec.class_names,
        'first_label': spec.label_range[0],
        'started_from': str(previous_model) if previous_model else None,
        'best_model_step': best[0] if best is not None else None,
        'export': run.stage_config.get('export', 'final'),
        'exported_step': exported[0],
        'trainable_parameters': spec.trainable_counts(),
        'eval_reference': (evaluator_lib.reference_name(run.config)
                           if run.evaluate is not None else None),
        **_eval_summary(stage_dir, run.config),
        **ema,
    }
    (stage_dir / 'summary.json').write_text(json.dumps(summary, indent=2))
  parallel.sync('export ' + str(stage_dir))
  logging.info('[%s] done: %d steps in %.0fs; model (step %d) in %s',
               spec.stage, int(state.step), seconds, exported[0], model_dir)
  return model_dir


def _exported(stage_config, state, best) -> tuple:
  """`(step, state)` the stage exports as `model` (`export`: 'final', or
  'best' when there was an evaluation)."""
  if stage_config.get('export', 'final') == 'best' and best is not None:
    return int(best[0]), best[1]
  return int(state.step), state
