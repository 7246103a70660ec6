"""Comparison of training runs' evaluations: a markdown table and a plot.

One row per run: best value, iteration of the best value, final value,
number of evaluations, wall time (the shape of the paper's Table 1); the
plot shows the metric against the iteration with each run's best point
marked (its Fig. 5). `tools/compare.py` is the command line; every
`cgt_jax.main` run also writes its own comparison.{md,png}.
"""

import dataclasses
import json
import pathlib
import textwrap
from typing import Optional

# The object API (no pyplot): no global backend or figure state, and it
# draws headless.
from matplotlib import figure as mpl_figure

from cgt_jax import default_config
from cgt_jax.evaluation import intervals

# Metrics where a larger value is better; every other one is a distance.
HIGHER_IS_BETTER = ('is', 'class_accuracy')


class CompareError(ValueError):
  """A run cannot be compared; the message names it."""


@dataclasses.dataclass
class RunCurve:
  """One run's metric over training."""
  name: str
  steps: list
  values: list
  wall_seconds: float  # None when the stage has no summary.json
  # (step, value) the run continued from (another run's point, e.g. kp's
  # best for kp_finetune): drawn as the start of its line, not scored.
  lead_in: Optional[tuple] = None

  def best_index(self, metric: str) -> int:
    pick = max if metric in HIGHER_IS_BETTER else min
    return self.values.index(pick(self.values))


def read_history(run_dir: pathlib.Path, stage: str) -> list:
  """The evaluations of a run's stage, in step order."""
  path = run_dir / stage / 'eval_history.json'
  if not path.is_file():
    raise CompareError(f'{run_dir}: no {stage}/eval_history.json (was the '
                       f'{stage} stage run with evaluation on?)')
  try:
    history = json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise CompareError(f'{path} is not valid JSON ({error})') from None
  if not history:
    raise CompareError(f'{path} holds no evaluation')
  return sorted(history, key=lambda h: h['step'])


def _configured_stages(run_dir: pathlib.Path) -> tuple:
  """The stages the run's config.json lists (every stage without one)."""
  path = run_dir / 'config.json'
  try:
    return tuple(json.loads(path.read_text())['stages'])
  except (OSError, json.JSONDecodeError, KeyError, TypeError):
    # A workdir from before config.json, or a hand-made one: any stage
    # with evaluations counts.
    return default_config.STAGES


def _evaluated(run_dir: pathlib.Path, stage: str) -> bool:
  return (stage in _configured_stages(run_dir) and
          (run_dir / stage / 'eval_history.json').is_file())


def default_stage(run_dirs) -> str:
  """The runs' last evaluated stage: the last stage, in training order, that
  every run's config lists and has an eval_history.json in every run (what
  each run's own comparison.md is about when the runs are alike)."""
  run_dirs = [pathlib.Path(d) for d in run_dirs]
  for stage in reversed(default_config.STAGES):
    if all(_evaluated(d, stage) for d in run_dirs):
      return stage
  names = ', '.join(str(d) for d in run_dirs)
  raise CompareError(f'no stage has an eval_history.json in every run '
                     f'({names}): were they run with evaluation on?')


def default_metric(histories: list) -> str:
  """'fid' when the runs were evaluated with Inception, else 'domain_fd'."""
  if any('fid' in h for history in histories for h in history):
    return 'fid'
  return 'domain_fd'


def run_curve(run_dir: pathlib.Path, stage: str, history: list,
              metric: str) -> RunCurve:
  """The metric of every evaluation that has it, with the stage's time."""
  points = [(h['step'], float(h[metric])) for h in history if metric in h]
  if not points:
    found = sorted(
        k for k, v in history[-1].items()
        if k not in ('step', 'wall_time') and not isinstance(v, list))
    raise CompareError(f'{run_dir}: {stage}/eval_history.json has no metric '
                       f'{metric!r} (it has {found})')
  summary_path = run_dir / stage / 'summary.json'
  wall = None
  if summary_path.is_file():
    wall = json.loads(summary_path.read_text()).get('wall_seconds')
  return RunCurve(run_dir.name, [p[0] for p in points], [p[1] for p in points],
                  wall)


def table(curves: list, metric: str) -> str:
  """The markdown comparison table, one row per run."""
  direction = 'higher' if metric in HIGHER_IS_BETTER else 'lower'
  lines = [
      f'| run | best {metric} ({direction} is better) | iterations to best '
      f'| final {metric} | evaluations | wall time (s) |',
      '|---|---|---|---|---|---|',
  ]
  for curve in curves:
    best = curve.best_index(metric)
    wall = '-' if curve.wall_seconds is None else f'{curve.wall_seconds:.1f}'
    lines.append(f'| {curve.name} | {curve.values[best]:.4g} | '
                 f'{curve.steps[best]} | {curve.values[-1]:.4g} | '
                 f'{len(curve.values)} | {wall} |')
  return '\n'.join(lines)


def _mark_best(axes, steps, values, metric, color):
  best = RunCurve('', steps, values, None).best_index(metric)
  axes.plot(
      steps[best],
      values[best],
      marker='*',
      markersize=14,
      color=color,
      linestyle='none')


def _finish(figure, axes, values, metric, title, path):
  """Log y axis when the values span more than a factor of 5 (a collapsed
  baseline would otherwise flatten every other curve); labels; saved."""
  if min(values) > 0 and max(values) > 5 * min(values):
    axes.set_yscale('log')
  axes.set_xlabel('iteration')
  axes.set_ylabel(metric)
  # Wrapped: a long stage/metric title would be cut at the figure's edge.
  axes.set_title(textwrap.fill(title, 60), fontsize='medium')
  axes.grid(alpha=0.3, which='both')
  axes.legend(fontsize='small')
  figure.tight_layout()
  figure.savefig(path)


def _figure():
  figure = mpl_figure.Figure(figsize=(6.4, 4.0), dpi=100)
  return figure, figure.subplots()


def plot(curves: list, metric: str, path: pathlib.Path, title: str):
  """Metric vs iteration, a line per run, the best point of each marked."""
  figure, axes = _figure()
  markers = 'o^sDvP<>X'
  for i, curve in enumerate(curves):
    lead = [curve.lead_in] if curve.lead_in else []
    line, = axes.plot(
        [step for step, _ in lead] + curve.steps,
        [value for _, value in lead] + curve.values,
        marker=markers[i % len(markers)],
        markersize=4,
        linestyle='-' if i % 2 == 0 else '--',  # overlapping curves
        label=curve.name)
    _mark_best(axes, curve.steps, curve.values, metric, line.get_color())
  _finish(figure, axes, [v for curve in curves for v in curve.values], metric,
          f'{title}: {metric} (best marked *)', path)


def plot_bands(groups: dict, metric: str, path: pathlib.Path, title: str):
  """Metric vs iteration over several seeds: per method (`groups`: name ->
  its RunCurves, one per seed) the mean curve and its 95% interval as a
  band, at the iterations every seed evaluated; the best mean marked. A
  method whose seeds share no iteration (kp_finetune starts at each seed's
  kp best) is drawn as its seeds' thin lines instead."""
  figure, axes = _figure()
  everything = []
  for i, (name, curves) in enumerate(groups.items()):
    steps, means, lows, highs = intervals.band(curves)
    if not steps:
      color = f'C{i % 10}'
      for index, curve in enumerate(curves):
        axes.plot(
            curve.steps,
            curve.values,
            linewidth=0.8,
            color=color,
            label=f'{name} (each seed)' if index == 0 else None)
        everything += curve.values
      continue
    line, = axes.plot(
        steps,
        means,
        marker='o',
        markersize=3,
        color=f'C{i % 10}',
        linestyle='-' if i % 2 == 0 else '--',
        label=f'{name} ({len(curves)} seeds)')
    axes.fill_between(steps, lows, highs, color=line.get_color(), alpha=0.2)
    _mark_best(axes, steps, means, metric, line.get_color())
    everything += lows + highs
  if everything:
    _finish(figure, axes, everything, metric,
            f'{title}: mean {metric}, 95% band (*: best)', path)


def compare(run_dirs, stage=None, metric=None, out='.') -> str:
  """Writes comparison.md and comparison.png to `out`; returns the table.

  `stage` None: the runs' last evaluated stage (`default_stage`).
  """
  run_dirs = [pathlib.Path(d) for d in run_dirs]
  stage = stage or default_stage(run_dirs)
  histories = [read_history(d, stage) for d in run_dirs]
  metric = metric or default_metric(histories)
  curves = [run_curve(d, stage, h, metric) for d, h in zip(run_dirs, histories)]
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  text = table(curves, metric)
  (out / 'comparison.md').write_text(text + '\n')
  plot(curves, metric, out / 'comparison.png', stage)
  return text
