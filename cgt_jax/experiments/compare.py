"""Every method on the same data and source model, one table: the paper's
Table 1 (and, with --methods=table2, its Table 2 ablation) on your data.

    python tools/compare_methods.py --config=configs/demo.py \\
        --workdir=DIR [--methods=scratch,transfergan,freezed,bsa,kp]

1. The source model is `config.source_checkpoint`, or a BigGAN pretrained
   once on the source classes in DIR/source. A method that transfers an
   unconditional source (Hyper-Modulation) gets one pretrained once on all
   source classes together in DIR/source_unconditional (unless
   `config.source_checkpoint` is a one-class model); the table's `source`
   column says which source each row used.
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
from cgt_jax.models import model_io
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
  source: str = ''  # 'conditional' or 'unconditional'


SOURCE_FOLDERS = {True: 'source', False: 'source_unconditional'}


def _form(conditional: bool) -> str:
  return 'conditional' if conditional else 'unconditional'


def source_model(config,
                 workdir: pathlib.Path,
                 conditional: bool = True) -> str:
  """The source model directory of the given form: the configured one if
  it has that form, else one pretrained once here."""
  given = config.source_checkpoint
  if given and (model_io.load_architecture(given)['generator']['num_classes']
                > 1) == conditional:
    return given
  source = copy.deepcopy(config)
  source.method = 'kp'  # any method with a source keeps the pretrain stage
  source.stages = ('pretrain',)
  source.source_checkpoint = ''
  source.model.conditional = conditional
  return str(
      loop.train_and_evaluate(source, workdir / SOURCE_FOLDERS[conditional]))


class Sources:
  """The comparison's source models, each pretrained at most once."""

  def __init__(self, config, workdir):
    self._config, self._workdir, self._made = config, workdir, {}

  def __call__(self, conditional: bool) -> str:
    if conditional not in self._made:
      self._made[conditional] = source_model(self._config, self._workdir,
                                             conditional)
    return self._made[conditional]

  def made(self) -> dict:
    """`{conditional: model directory}` of the sources used so far."""
    return dict(self._made)


def run_method(name, config, workdir, sources, done) -> MethodRun:
  """Trains `name`'s transfer stage, or, for a variant that continues
  another method's run, its fine-tuning stage from that run's model.
  `sources(conditional)` gives the source model of each form."""
  run = copy.deepcopy(config)
  run.method = name
  conditional = methods.conditional_source(name)
  run.model.conditional = conditional
  run.source_checkpoint = sources(conditional)
  stage, stage_dirs = 'transfer', []
  base = methods.continues_from(name)
  if base:
    if base not in done:
      done[base] = run_method(base, config, workdir, sources, done)
    if done[base].error:
      return MethodRun(name, workdir / name, [], f'{base}: {done[base].error}',
                       done[base].loss, _form(conditional))
    run.source_checkpoint = str(done[base].stage_dirs[0] / 'model')
    stage, stage_dirs = 'finetune', list(done[base].stage_dirs)
  run.stages = (stage,)
  plan = stages.resolve(run)  # MineGAN adds its second stage
  stage_dirs += [workdir / name / s for s in plan.stages]
  logging.info('== %s: %s', name, methods.summary(name))
  try:
    loop.train_and_evaluate(run, workdir / name)
  except loop.TrainingDiverged as error:
    return MethodRun(name, workdir / name, [], f'diverged: {error}', plan.loss,
                     _form(conditional))
  return MethodRun(
      name,
      workdir / name,
      stage_dirs,
      loss=plan.loss,
      source=_form(conditional))


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


# Mean per-class recall below this at the best evaluation: the samples of a
# class are (nearly) one image; the table says so (docs/EVALUATION.md).
COLLAPSE_RECALL = 0.1


def _fraction(value) -> str:
  return '-' if value is None or value != value else f'{value:.2f}'


def _recall_cell(recall) -> str:
  cell = _fraction(recall)
  if recall is not None and recall < COLLAPSE_RECALL:
    cell += ' **collapsed**'
  return cell


def table(rows, metric: str) -> str:
  """Markdown: one row per method (errors included)."""
  direction = 'higher' if metric in comparison.HIGHER_IS_BETTER else 'lower'
  lines = [
      f'| method | what learns the new classes | source | loss | trainable '
      f'G / D params | best {metric} ({direction} is better) | iteration of '
      f'best | final {metric} | class accuracy at best | intra-class FD at '
      'best | recall at best | coverage at best | wall time (s) |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for row in rows:
    lead = (f'| {row["method"]} | {row["summary"]} | {row["source"]} | '
            f'{row["loss"]} |')
    if 'error' in row:
      lines.append(f'{lead} - | {row["error"]} |' + ' - |' * 7)
      continue
    intra = row.get('intra_fd_at_best')
    lines.append(f'{lead} '
                 f'{row["trainable_g"]:,} / {row["trainable_d"]:,} | '
                 f'{row["best"]:.4g} | {row["best_step"]} | '
                 f'{row["final"]:.4g} | '
                 f'{_fraction(row.get("class_accuracy_at_best"))} | '
                 f'{"-" if intra is None else f"{intra:.4g}"} | '
                 f'{_recall_cell(row.get("recall_at_best"))} | '
                 f'{_fraction(row.get("coverage_at_best"))} | '
                 f'{row["wall_seconds"]:.0f} |')
  return '\n'.join(lines)


def _at_best(best: dict, name: str):
  """`best[name]`, under the classifier's (`domain_`) or Inception's name."""
  for key in ('domain_' + name, name):
    if key in best:
      return best[key]
  return None


def summarise(runs, metric):
  """Table rows and the curves of the runs that finished."""
  rows, curves = [], []
  for run in runs:
    row = {
        'method': run.name,
        'summary': methods.summary(run.name),
        'source': run.source,
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
        'intra_fd_at_best': _at_best(best, 'intra_fd') or best.get('intra_fid'),
        'recall_at_best': _at_best(best, 'recall'),
        'coverage_at_best': _at_best(best, 'coverage'),
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
  sources = Sources(config, workdir)
  done = {}
  for name in names:
    if name not in done:
      done[name] = run_method(name, config, workdir, sources, done)
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
              'sources': {
                  _form(k): v for k, v in sources.made().items()
              },
              'rows': rows,
              'total_seconds': round(time.perf_counter() - start, 1)
          },
          indent=1))
  if curves:
    comparison.plot(curves, metric, workdir / 'comparison.png',
                    'new classes by method')
  samples_figure(runs, workdir / 'samples.png')
  return text
