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
3. DIR/comparison.md (the table, also printed: best value and its
   iteration, the first iteration at which each method reaches the best
   value of a baseline, `bsa` by default, and how many times sooner than
   it, the paper's Fig. 5 measure; class accuracy, intra-class FD, recall
   and coverage at the best evaluation, a collapse flag), DIR/comparison.json,
   DIR/comparison.png (metric against iteration, best marked) and
   DIR/samples.png (each method's grid at its best evaluation, a row per
   new class, stacked, samples enlarged).

A method that diverges becomes a row saying so; the others still run. A
rerun skips finished runs and resumes an interrupted one. Several seeds
(`--seeds=0,1,2`): `cgt_jax.experiments.seeds`, one `run_comparison` per
seed.
"""

import copy
import dataclasses
import json
import pathlib
import time

from absl import logging

from cgt_jax.evaluation import comparison
from cgt_jax.evaluation import evaluator
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
  own_from: int = 0  # stage_dirs[own_from:] are its own (after a base's)


SOURCE_FOLDERS = {True: 'source', False: 'source_unconditional'}


def form(conditional: bool) -> str:
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
                       done[base].loss, form(conditional))
    run.source_checkpoint = str(
        loop.finetune_start(done[base].stage_dirs[0] / 'model',
                            config.finetune.start_from))
    stage, stage_dirs = 'finetune', list(done[base].stage_dirs)
  own_from = len(stage_dirs)
  run.stages = (stage,)
  plan = stages.resolve(run)  # MineGAN adds its second stage
  stage_dirs += [workdir / name / s for s in plan.stages]
  logging.info('== %s: %s', name, methods.summary(name))
  try:
    loop.train_and_evaluate(run, workdir / name)
  except loop.TrainingDiverged as error:
    return MethodRun(name, workdir / name, [], f'diverged: {error}', plan.loss,
                     form(conditional))
  return MethodRun(
      name,
      workdir / name,
      stage_dirs,
      loss=plan.loss,
      source=form(conditional),
      own_from=own_from)


def _stage_points(stage_dir, metric: str, offset: int) -> tuple:
  """`(steps + offset, values, evaluations)` of one stage's history."""
  history = comparison.read_history(stage_dir.parent, stage_dir.name)
  entries = [h for h in history if metric in h]
  return ([offset + h['step'] for h in entries],
          [float(h[metric]) for h in entries], entries)


def _continued_at(stage_dir, base_summary) -> int:
  """The iteration of the base run that a continuing stage started from:
  its best evaluation (model_best) or its end."""
  summary = json.loads((stage_dir / 'summary.json').read_text())
  if str(summary.get('started_from', '')).endswith('model_best'):
    return base_summary['best_model_step']
  return base_summary['steps']


def method_curve(run: MethodRun, metric: str):
  """`(RunCurve, best-evaluation dict, trainable counts)` of a run's own
  stages. A run that continues another (kp_finetune after kp) counts its
  iterations from the point it started at (kp's best or final step), and
  that point leads its line in the plot; its best and final are its own."""
  steps, values, entries, wall, offset = [], [], [], 0.0, 0
  trainable, lead_in = {}, None
  for index, stage_dir in enumerate(run.stage_dirs):
    summary = json.loads((stage_dir / 'summary.json').read_text())
    wall += summary.get('wall_seconds') or 0.0
    if index < run.own_from:  # the base run's stage
      next_dir = run.stage_dirs[index + 1]
      start = _continued_at(next_dir, summary)
      base_steps, base_values, _ = _stage_points(stage_dir, metric, offset)
      if start in [s - offset for s in base_steps]:
        at = [s - offset for s in base_steps].index(start)
        lead_in = (base_steps[at], base_values[at])
      offset += start
      continue
    stage_steps, stage_values, stage_entries = _stage_points(
        stage_dir, metric, offset)
    steps += stage_steps
    values += stage_values
    entries += stage_entries
    offset += summary['steps']
    trainable = summary.get('trainable_parameters', trainable)
  if not values:
    raise comparison.CompareError(f'{run.workdir}: no {metric!r} evaluations')
  curve = comparison.RunCurve(run.name, steps, values, wall, lead_in)
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


def _sooner_cell(row) -> str:
  steps = row.get('steps_to_baseline_best')
  if steps is None:
    return 'never'
  return f'{steps} ({row["times_sooner_than_baseline"]:.2g}x)'


def table(rows, metric: str, quality=None) -> str:
  """Markdown: one row per method (errors included); `quality` (from
  `add_time_to_quality`) adds the time-to-quality column."""
  direction = 'higher' if metric in comparison.HIGHER_IS_BETTER else 'lower'
  sooner = ''
  if quality:
    sooner = (f' iterations to {quality["baseline"]}\'s best ('
              f'{quality["target"]:.4g}; x sooner) |')
  lines = [
      f'| method | what learns the new classes | source | loss | trainable '
      f'G / D params | best {metric} ({direction} is better) | iteration of '
      f'best |{sooner} final {metric} | class accuracy at best | intra-class '
      'FD at best | recall at best | coverage at best | wall time (s) |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|---|' +
      ('---|' if quality else ''),
  ]
  for row in rows:
    lead = (f'| {row["method"]} | {row["summary"]} | {row["source"]} | '
            f'{row["loss"]} |')
    if 'error' in row:
      lines.append(f'{lead} - | {row["error"]} |' + ' - |' *
                   (8 if quality else 7))
      continue
    intra = row.get('intra_fd_at_best')
    lines.append(f'{lead} '
                 f'{row["trainable_g"]:,} / {row["trainable_d"]:,} | '
                 f'{row["best"]:.4g} | {row["best_step"]} |' +
                 (f' {_sooner_cell(row)} |' if quality else '') +
                 f' {row["final"]:.4g} | '
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


def first_reaching(curve, metric: str, target: float):
  """The first iteration at which `curve` reaches `target` (None: never)."""
  higher = metric in comparison.HIGHER_IS_BETTER
  for step, value in zip(curve.steps, curve.values):
    if (value >= target) if higher else (value <= target):
      return step
  return None


def add_time_to_quality(rows, curves, metric: str, baseline: str):
  """Per row: the first iteration reaching `baseline`'s best value, and
  how many times sooner than `baseline` that is (the paper's Fig. 5)."""
  by_name = {curve.name: curve for curve in curves}
  if baseline not in by_name:
    return None
  reference = by_name[baseline]
  target = reference.values[reference.best_index(metric)]
  reference_steps = first_reaching(reference, metric, target)
  for row in rows:
    curve = by_name.get(row['method'])
    steps = first_reaching(curve, metric, target) if curve else None
    row['steps_to_baseline_best'] = steps
    row['times_sooner_than_baseline'] = (
        reference_steps / steps if steps else None)
  return {'baseline': baseline, 'target': target}


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


def shown_grid(run: MethodRun) -> pathlib.Path:
  """The sample grid of a run's last stage at its best evaluation
  (samples/best.png), else its last grid."""
  samples = run.stage_dirs[-1] / 'samples'
  if (samples / 'best.png').is_file():
    return samples / 'best.png'
  grids = sorted(samples.glob('step_*.png'))
  return grids[-1] if grids else None


# Each sample is drawn at least this many pixels wide in samples.png.
MIN_SAMPLE_PIXELS = 64


def samples_figure(runs, path, columns: int):
  """One grid per method (a row per class, `columns` samples a row),
  stacked under their names, samples enlarged to MIN_SAMPLE_PIXELS: as
  readable for 2 classes as for 20, for any number of methods."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  shown = [(r.name, shown_grid(r)) for r in runs if not r.error]
  shown = [(name, Image.open(grid)) for name, grid in shown if grid]
  if not shown:
    return None
  scale = max(1, -(-MIN_SAMPLE_PIXELS * columns // shown[0][1].width))
  label = 24
  grids = [(name,
            grid.resize((grid.width * scale, grid.height * scale),
                        Image.NEAREST)) for name, grid in shown]
  width = max(grid.width for _, grid in grids)
  picture = Image.new('RGB',
                      (width, sum(label + grid.height for _, grid in grids)),
                      'white')
  draw, top = ImageDraw.Draw(picture), 0
  for name, grid in grids:
    draw.text((4, top + 6), name, fill='black')
    picture.paste(grid.convert('RGB'), (0, top + label))
    top += label + grid.height
  picture.save(path)
  return path


def write_report(workdir, text: str, config, start: float, report: dict):
  """comparison.md (`text`) and comparison.json (`report` with the fields
  every comparison records) in `workdir`."""
  (workdir / 'comparison.md').write_text(text + '\n')
  report = {
      **report, 'reference': evaluator.reference_name(config),
      'augment': config.get('augment', ''),
      'total_seconds': round(time.perf_counter() - start, 1)
  }
  (workdir / 'comparison.json').write_text(json.dumps(report, indent=1))


@dataclasses.dataclass
class Comparison:
  """What one comparison (one seed) ran and found."""
  runs: list  # MethodRun per name, in order
  rows: list  # `summarise`'s table rows
  curves: list  # RunCurve of each finished run
  quality: dict  # `add_time_to_quality`'s result, or None
  metric: str
  text: str  # the markdown table and its notes


def metric_of(config) -> str:
  return config.eval.best_metric or ('fid' if config.eval.inception_dir else
                                     'domain_fd')


def run_comparison(config, workdir, names, quality_baseline,
                   sources) -> Comparison:
  """Runs every method in `names` from `sources` in `workdir` and writes
  the comparison files there."""
  start = time.perf_counter()
  workdir.mkdir(parents=True, exist_ok=True)
  done = {}
  for name in names:
    if name not in done:
      done[name] = run_method(name, config, workdir, sources, done)
  runs = [done[n] for n in names]
  metric = metric_of(config)
  rows, curves = summarise(runs, metric)
  quality = add_time_to_quality(rows, curves, metric, quality_baseline)
  text = table(rows, metric, quality) + (
      f'\n\nMetrics against {evaluator.reference_name(config)} of the new '
      f'classes. DiffAugment: {config.get("augment") or "off"}.')
  write_report(
      workdir, text, config, start, {
          'metric': metric,
          'seed': config.seed,
          'sources': {
              form(k): v for k, v in sources.made().items()
          },
          'rows': rows,
          'time_to_quality': quality,
      })
  if curves:
    comparison.plot(curves, metric, workdir / 'comparison.png',
                    'new classes by method')
  samples_figure(runs, workdir / 'samples.png', config.sample.columns)
  return Comparison(runs, rows, curves, quality, metric, text)


def compare_methods(config, workdir, names, quality_baseline='bsa') -> str:
  """Runs every method in `names`; writes and returns the table.

  `quality_baseline`: the method whose best value sets the quality of the
  time-to-quality column (none when it is not among `names`).
  """
  workdir = pathlib.Path(workdir).absolute()
  return run_comparison(config, workdir, names, quality_baseline,
                        Sources(config, workdir)).text
