"""Evaluates a finished stage's exported generator, outside training.

Its command line is tools/evaluate.py:

    python tools/evaluate.py --workdir DIR [--stage transfer]
        [--num_samples N] [--inception_dir D]

`evaluate` rebuilds the run's config from DIR/config.json, loads its data
and DIR/<stage>/model, and runs the same evaluator as training
(`evaluator.make`): the domain-classifier metrics, or FID/KMMD/IS with
Inception weights. It writes DIR/<stage>/evaluation.json and returns the
metrics (`format_table` makes the table the tool prints). The default stage
is the last finished one (finetune, transfer, pretrain).
"""

import json
import pathlib
import time

import ml_collections

from cgt_jax.data import splits
from cgt_jax import default_config
from cgt_jax.evaluation import evaluator as evaluator_lib
from cgt_jax.models import model_io
from cgt_jax.runtime import parallel


class EvaluateError(ValueError):
  """The workdir cannot be evaluated; the message says why."""


def finished_stages(workdir: pathlib.Path) -> list:
  """Stages of `workdir` with a summary.json and a model, in run order."""
  return [
      s for s in default_config.STAGES
      if (workdir / s / 'summary.json').is_file() and
      (workdir / s / 'model' / model_io.ARCHITECTURE_FILE).is_file()
  ]


def _stage(workdir: pathlib.Path, stage) -> str:
  """The requested stage, or the last finished one; checks it is finished."""
  if not workdir.is_dir():
    raise EvaluateError(f'no such workdir: {workdir}')
  done = finished_stages(workdir)
  if stage is None:
    if not done:
      raise EvaluateError(
          f'{workdir} has no finished stage (no <stage>/summary.json with '
          'an exported model): train it first with python -m cgt_jax.main')
    return done[-1]
  if stage not in done:
    raise EvaluateError(f'stage {stage!r} of {workdir} is not finished; '
                        f'finished stages: {done or "none"}')
  return stage


def load_config(workdir: pathlib.Path, num_samples=None, inception_dir=None):
  """The run's config (DIR/config.json) with the evaluation overrides."""
  path = workdir / 'config.json'
  if not path.is_file():
    raise EvaluateError(f'{path} is missing: is {workdir} a cgt_jax.main '
                        'workdir?')
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  if num_samples is not None:
    config.eval.num_samples = num_samples
  if inception_dir is not None:
    config.eval.inception_dir = inception_dir
  return config


def _runs_pretraining(config) -> bool:
  return 'pretrain' in config.stages and not config.source_checkpoint


def stage_evaluator(workdir: pathlib.Path,
                    stage: str,
                    num_samples=None,
                    inception_dir=None,
                    model: str = 'model'):
  """`(evaluator, generator variables)` of an exported model of a finished
  stage (`model`: 'model' or 'model_best'), evaluated as in training."""
  config = load_config(workdir, num_samples, inception_dir)
  summary = json.loads((workdir / stage / 'summary.json').read_text())
  pretrain = stage == 'pretrain'
  # The same data as training, so the classifier and statistics caches hit.
  need_source = (
      pretrain or _runs_pretraining(config) or
      config.eval.get('classifier_with_source', False))
  first_label = summary.get('first_label', summary.get('label_offset'))
  data = splits.load(
      config.data,
      need_source=need_source,
      resolution=config.model.resolution,
      target_first_label=None if pretrain else first_label)
  generator, _, variables = model_io.load(workdir / stage / model)
  evaluate_fn = evaluator_lib.make(config, generator,
                                   data.source if pretrain else data.target,
                                   data, parallel.make_mesh())
  return evaluate_fn, variables['generator']


def evaluate(workdir, stage=None, num_samples=None, inception_dir=None):
  """Evaluates `stage` of `workdir`; returns `(stage, metrics dict)`."""
  workdir = pathlib.Path(workdir).absolute()
  stage = _stage(workdir, stage)
  start = time.perf_counter()
  evaluate_fn, g_variables = stage_evaluator(workdir, stage, num_samples,
                                             inception_dir)
  config = load_config(workdir, num_samples, inception_dir)
  metrics = evaluate_fn(g_variables)
  record = {
      'stage': stage,
      'num_samples': config.eval.num_samples,
      'inception_dir': config.eval.inception_dir,
      'reference': evaluator_lib.reference_name(config),
      'wall_time': time.time(),
      'seconds': round(time.perf_counter() - start, 1),
      **metrics
  }
  (workdir / stage / 'evaluation.json').write_text(json.dumps(record, indent=1))
  return stage, metrics


def format_table(stage: str, metrics: dict) -> str:
  """A two-column markdown table of the scalar metrics."""
  lines = [f'| {stage} metric | value |', '|---|---|']
  for name, value in metrics.items():
    if not isinstance(value, list):
      lines.append(f'| {name} | {value:.4g} |')
  return '\n'.join(lines)
