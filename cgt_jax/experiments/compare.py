"""Every method on the same data and source model, one table: the paper's
Table 1 (and, with --methods=table2, its Table 2 ablation) on your data.

    python tools/compare_methods.py --config=configs/demo.py \\
        --workdir=DIR [--methods=scratch,transfergan,freezed,bsa,kp]

1. The source model is `config.source_checkpoint`, or a BigGAN pretrained
   once on the source classes in DIR/source.
2. Each method (`cgt_jax.transfer.methods`: a method or variant name, or the groups
   `baselines`, `table2`, `all`) runs the transfer stage from that source in
   DIR/<method>, a `cgt_jax.main` workdir: same data, seed, step budget and
   evaluator; only the method's own switches and
   `config.method_overrides.<method>` differ. A variant that continues
   another method's run (`kp_finetune`: fine-tuning after `kp`) starts from
   that method's transferred model (and runs it first if needed).
3. DIR/comparison.md (the table, also printed), DIR/comparison.json,
   DIR/comparison.png (metric against iteration, best marked) and
   DIR/samples.png (each method's final sample grid, a row per new class).

A method that diverges becomes a row saying so; the others still run. A
rerun skips finished runs and resumes an interrupted one.
"""

import copy
import dataclasses
import json
import pathlib
import time

from absl import logging

from cgt_jax.evaluation import comparison
from cgt_jax.training import loop
from cgt_jax.transfer import methods
from cgt_jax.transfer import stages


@dataclasses.dataclass
class MethodRun:
  """One method's outcome: its evaluation curve or why it has none."""
  name: str
  workdir: pathlib.Path
  stage_dirs: list  # the stages its curve runs through, in order
  error: str = ''
  loss: str = ''  # the adversarial loss it trained with


def source_model(config, workdir: pathlib.Path) -> str:
  """The source model directory: configured, or pretrained once here."""
  if config.source_checkpoint:
    return config.source_checkpoint
  source = copy.deepcopy(config)
  source.method = 'kp'  # any method with a source keeps the pretrain stage
  source.stages = ('pretrain',)
  return str(loop.train_and_evaluate(source, workdir / 'source'))


def run_method(name, config, workdir, source, done) -> MethodRun:
  """Trains `name`'s transfer stage, or, for a variant that continues
  another method's run, its fine-tuning stage from that run's model."""
  run = copy.deepcopy(config)
  run.method = name
  run.source_checkpoint = source
  stage, stage_dirs = 'transfer', []
  base = methods.continues_from(name)
  if base:
    if base not in done:
      done[base] = run_method(base, config, workdir, source, done)
    if done[base].error:
      return MethodRun(name, workdir / name, [], f'{base}: {done[base].error}',
                       done[base].loss)
    run.source_checkpoint = str(done[base].stage_dirs[0] / 'model')
    stage, stage_dirs = 'finetune', list(done[base].stage_dirs)
  run.stages = (stage,)
  plan = stages.resolve(run)  # MineGAN adds its second stage
  stage_dirs += [workdir / name / s for s in plan.stages]
  logging.info('== %s: %s', name, methods.summary(name))
  try:
    loop.train_and_evaluate(run, workdir / name)
  except loop.TrainingDiverged as error:
    return MethodRun(name, workdir / name, [], f'diverged: {error}', plan.loss)
  return MethodRun(name, workdir / name, stage_dirs, loss=plan.loss)


def method_curve(run: MethodRun, metric: str):
  """`(RunCurve, best-evaluation dict, trainable counts)` of a run; stages
  are chained with their iterations added up (kp_finetune)."""
  steps, values, entries, wall, offset = [], [], [], 0.0, 0
  trainable = {}
  for stage_dir in run.stage_dirs:
    history = comparison.read_history(stage_dir.parent, stage_dir.name)
    summary = json.loads((stage_dir / 'summary.json').read_text())
    for entry in history:
      if metric in entry:
        steps.append(offset + entry['step'])
        values.append(float(entry[metric]))
        entries.append(entry)
    offset += summary['steps']
    wall += summary.get('wall_seconds') or 0.0
    trainable = summary.get('trainable_parameters', trainable)
  if not values:
    raise comparison.CompareError(f'{run.workdir}: no {metric!r} evaluations')
  curve = comparison.RunCurve(run.name, steps, values, wall)
  return curve, entries[curve.best_index(metric)], trainable


def table(rows, metric: str) -> str:
  """Markdown: one row per method (errors included)."""
  direction = 'higher' if metric in comparison.HIGHER_IS_BETTER else 'lower'
  lines = [
      f'| method | what learns the new classes | loss | trainable G / D '
      f'params | best {metric} ({direction} is better) | iteration of best '
      f'| final {metric} | class accuracy at best | wall time (s) |',
      '|---|---|---|---|---|---|---|---|---|',
  ]
  for row in rows:
    if 'error' in row:
      lines.append(f'| {row["method"]} | {row["summary"]} | {row["loss"]} | '
                   f'- | {row["error"]} | - | - | - | - |')
      continue
    accuracy = row.get('class_accuracy_at_best')
    lines.append(
        f'| {row["method"]} | {row["summary"]} | {row["loss"]} | '
        f'{row["trainable_g"]:,} / {row["trainable_d"]:,} | '
        f'{row["best"]:.4g} | {row["best_step"]} | {row["final"]:.4g} | '
        f'{"-" if accuracy is None else f"{accuracy:.2f}"} | '
        f'{row["wall_seconds"]:.0f} |')
  return '\n'.join(lines)


def summarise(runs, metric):
  """Table rows and the curves of the runs that finished."""
  rows, curves = [], []
  for run in runs:
    row = {
        'method': run.name,
        'summary': methods.summary(run.name),
        'loss': run.loss
    }
    if run.error:
      rows.append({**row, 'error': run.error.split('; ')[0]})
      continue
    curve, best, trainable = method_curve(run, metric)
    curves.append(curve)
    rows.append({
        **row, 'best': curve.values[curve.best_index(metric)],
        'best_step': curve.steps[curve.best_index(metric)],
        'final': curve.values[-1],
        'class_accuracy_at_best': best.get('class_accuracy'),
        'trainable_g': trainable.get('generator', 0),
        'trainable_d': trainable.get('discriminator', 0),
        'wall_seconds': curve.wall_seconds
    })
  return rows, curves


def last_grid(run: MethodRun) -> pathlib.Path:
  """The final sample grid of a run's last stage."""
  grids = sorted((run.stage_dirs[-1] / 'samples').glob('*.png'))
  return grids[-1] if grids else None


def samples_figure(runs, path):
  """The methods' final sample grids side by side (a row per new class)."""
  from matplotlib import figure as mpl_figure  # pylint: disable=g-import-not-at-top
  from matplotlib import image as mpimg  # pylint: disable=g-import-not-at-top
  shown = [(r.name, last_grid(r)) for r in runs if not r.error]
  shown = [(name, grid) for name, grid in shown if grid is not None]
  if not shown:
    return None
  figure = mpl_figure.Figure(figsize=(3.2 * len(shown), 3.6))
  axes = figure.subplots(1, len(shown), squeeze=False)
  for axis, (name, grid) in zip(axes[0], shown):
    axis.imshow(mpimg.imread(grid), interpolation='nearest')
    axis.set_title(name)
    axis.axis('off')
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  return path


def compare_methods(config, workdir, names) -> str:
  """Runs every method in `names`; writes and returns the table."""
  workdir = pathlib.Path(workdir).absolute()
  start = time.perf_counter()
  source = source_model(config, workdir)
  done = {}
  for name in names:
    if name not in done:
      done[name] = run_method(name, config, workdir, source, done)
  runs = [done[n] for n in names]
  metric = config.eval.best_metric or ('fid' if config.eval.inception_dir else
                                       'domain_fd')
  rows, curves = summarise(runs, metric)
  text = table(rows, metric)
  (workdir / 'comparison.md').write_text(text + '\n')
  (workdir / 'comparison.json').write_text(
      json.dumps(
          {
              'metric': metric,
              'source': source,
              'rows': rows,
              'total_seconds': round(time.perf_counter() - start, 1)
          },
          indent=1))
  if curves:
    comparison.plot(curves, metric, workdir / 'comparison.png',
                    'new classes by method')
  samples_figure(runs, workdir / 'samples.png')
  return text
