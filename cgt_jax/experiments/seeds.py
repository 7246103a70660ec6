"""A comparison over several seeds: signal told apart from noise.

    python tools/compare_methods.py --config=configs/demo.py --workdir=DIR \\
        --methods=bsa,kp --seeds=0,1,2

Every method runs once per seed (`config.seed`: initial KP/BSA/miner
parameters, the batches, z and the evaluation latents) in DIR/seed_<s>/,
each seed a complete single-seed comparison (`compare.run_comparison`).
Every seed starts from ONE shared source model (pretrained once in
DIR/source with the config's own seed, or `config.source_checkpoint`) and
the same few-shot images (`config.data.seed` is not varied): the intervals
measure the transfer's variation, not the source's.

Per method the table gives the mean and 95% interval (`evaluation.intervals`)
of the best value, the iteration of the best, the final value, how far the
final fell behind the best, and how many times sooner than the quality
baseline it reached the baseline's best (the paper's Fig. 5 ratio). The
evaluator's own noise (one checkpoint, several latent draws:
`evaluation.noise`) is measured once; a gap to the leading method smaller
than it is marked as such.
"""

import copy
import pathlib
import time

from absl import logging

from cgt_jax.evaluation import comparison
from cgt_jax.evaluation import evaluator
from cgt_jax.evaluation import intervals
from cgt_jax.evaluation import noise as noise_lib
from cgt_jax.experiments import compare
from cgt_jax.transfer import methods

# Per-seed row fields summarised over the seeds.
SUMMARISED = ('best', 'best_step', 'final', 'final_vs_best',
              'times_sooner_than_baseline', 'class_accuracy_at_best',
              'recall_at_best', 'coverage_at_best', 'wall_seconds')


def final_vs_best(row: dict, metric: str) -> float:
  """How much worse the final value is than the best, as a fraction of the
  best (0: the run ended at its best)."""
  if metric in comparison.HIGHER_IS_BETTER:
    return 1 - row['final'] / row['best']
  return row['final'] / row['best'] - 1


def aggregate(per_seed: dict, names: list, metric: str) -> list:
  """One row per method: every SUMMARISED field as an `Interval` over the
  seeds it finished (None when it finished none), with counts."""
  rows = []
  for name in names:
    seeded = [
        r for rows_of_seed in per_seed.values() for r in rows_of_seed
        if r['method'] == name
    ]
    finished = [r for r in seeded if 'error' not in r]
    for row in finished:
      row['final_vs_best'] = final_vs_best(row, metric)
    # None: the quality baseline was not among the methods.
    reached = None
    if any('steps_to_baseline_best' in r for r in finished):
      reached = sum(r['steps_to_baseline_best'] is not None for r in finished)
    summary = dict(
        method=name,
        summary=methods.summary(name),
        source=seeded[0]['source'],
        runs=len(finished),
        errors=[r['error'] for r in seeded if 'error' in r],
        reached_baseline_best=reached)
    for key in SUMMARISED:
      summary[key] = intervals.of([r.get(key) for r in finished])
    rows.append(summary)
  return rows


def mark_gaps(rows: list, metric: str, noise: float) -> None:
  """Adds `gap_to_leader` (mean best minus the leader's) and
  `within_noise` (the gap is below the evaluator's noise) to each row."""
  finished = [r for r in rows if r['best'] is not None]
  if not finished:
    return
  pick = max if metric in comparison.HIGHER_IS_BETTER else min
  leader = pick(r['best'].mean for r in finished)
  for row in finished:
    row['gap_to_leader'] = row['best'].mean - leader
    row['within_noise'] = (
        noise is not None and 0 < abs(row['gap_to_leader']) < noise)


def _cell(value, fmt=None) -> str:
  if value is None:
    return '-'
  if fmt and value.n < 2:
    return fmt(value.mean)
  if fmt:
    return f'{fmt(value.mean)} [{fmt(value.low)}, {fmt(value.high)}]'
  return str(value)


def _percent(value) -> str:
  return f'{100 * value:+.0f}%'


def _fraction(value) -> str:
  # A t interval of a fraction can cross 0 or 1; the cell shows the
  # possible part (comparison.json keeps the interval as computed).
  return f'{min(max(value, 0.0), 1.0):.2f}'


def _count(value) -> str:
  # Iterations and seconds: the t interval's negative part is impossible.
  return f'{max(value, 0.0):.0f}'


def _sooner_cell(row) -> str:
  if row['reached_baseline_best'] is None:
    return '-'
  ratio = _cell(row['times_sooner_than_baseline'], lambda v: f'{v:.2g}x')
  return f'{ratio} ({row["reached_baseline_best"]}/{row["runs"]})'


def _gap_cell(row) -> str:
  if 'gap_to_leader' not in row:
    return '-'
  if row['gap_to_leader'] == 0:
    return 'leader'
  cell = f'{row["gap_to_leader"]:+.4g}'
  return cell + ' (within evaluator noise)' if row['within_noise'] else cell


def table(rows: list, metric: str, baseline: str) -> str:
  """Markdown: one row per method, `mean [95% interval]` cells."""
  direction = 'higher' if metric in comparison.HIGHER_IS_BETTER else 'lower'
  lines = [
      f'| method | runs | best {metric} ({direction} is better) | gap to '
      f'the leader | iteration of best | final {metric} | final vs best | x '
      f'sooner to {baseline}\'s best (seeds reaching it) | class accuracy at '
      'best | recall at best | wall time (s) |',
      '|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for row in rows:
    runs = f'{row["runs"]}' + (f' ({len(row["errors"])} failed: '
                               f'{row["errors"][0]})' if row['errors'] else '')
    lines.append(
        f'| {row["method"]} | {runs} | {_cell(row["best"])} | '
        f'{_gap_cell(row)} | {_cell(row["best_step"], _count)}'
        f' | {_cell(row["final"])} | '
        f'{_cell(row["final_vs_best"], _percent)} | {_sooner_cell(row)} | '
        f'{_cell(row["class_accuracy_at_best"], _fraction)} | '
        f'{_cell(row["recall_at_best"], _fraction)} | '
        f'{_cell(row["wall_seconds"], _count)} |')
  return '\n'.join(lines)


def _noise_run(comparison_of_seed, baseline: str):
  """The run whose best checkpoint the evaluator noise is measured on: the
  quality baseline's, else the first that finished."""
  finished = [r for r in comparison_of_seed.runs if not r.error]
  for run in finished:
    if run.name == baseline:
      return run
  return finished[0] if finished else None


def evaluator_noise(comparison_of_seed, metric, baseline, draws):
  """`noise.metric_spread` of one run's best checkpoint (None: no draws or
  no finished run)."""
  run = _noise_run(comparison_of_seed, baseline)
  if not draws or run is None:
    return None
  logging.info('== evaluator noise: %s, %d latent draws', run.name, draws)
  spread = noise_lib.metric_spread(run.stage_dirs[-1], metric, draws)
  return {'method': run.name, **spread}


def _notes(config, seeds, sources, noise) -> str:
  shared = ', '.join(f'{form}: {path}' for form, path in sources.items())
  text = (f'{len(seeds)} seeds ({", ".join(map(str, seeds))}) per method, '
          f'one shared source model ({shared}) and the same few-shot images '
          f'(data.seed {config.data.seed}); cells: mean [95% t interval] '
          'over the seeds.')
  if noise:
    text += (f' Evaluator noise: {noise["metric"]} of one checkpoint '
             f'({noise["method"]}, seed {seeds[0]}, best) over '
             f'{len(noise["values"])} latent draws has sd '
             f'{noise["std"]:.3g}; gaps to the leader below '
             f'{noise["noise"]:.3g} (1.96 sd) are marked "within evaluator '
             'noise".')
  return (f'{text} Metrics against {evaluator.reference_name(config)} of the '
          f'new classes. DiffAugment: {config.get("augment") or "off"}.')


def _json_row(row: dict) -> dict:
  return {
      k: v.as_dict() if isinstance(v, intervals.Interval) else v
      for k, v in row.items()
  }


def band_plot(results: dict, names: list, metric: str, path: pathlib.Path):
  groups = {}
  for name in names:
    curves = [
        c for result in results.values() for c in result.curves
        if c.name == name
    ]
    if curves:
      groups[name] = curves
  if groups:
    comparison.plot_bands(groups, metric, path,
                          f'new classes by method, {len(results)} seeds')


def compare_over_seeds(config,
                       workdir,
                       names,
                       seeds,
                       quality_baseline='bsa',
                       noise_draws=5) -> str:
  """Runs every method with every seed from one source; writes DIR/
  comparison.{md,json,png} (per-seed files in DIR/seed_<s>/) and
  samples.png (the first seed's grids); returns the table."""
  workdir = pathlib.Path(workdir).absolute()
  start = time.perf_counter()
  sources = compare.Sources(config, workdir)  # shared by every seed
  results = {}
  for seed in seeds:
    seeded = copy.deepcopy(config)
    seeded.seed = seed
    logging.info('=== seed %d', seed)
    results[seed] = compare.run_comparison(seeded, workdir / f'seed_{seed}',
                                           names, quality_baseline, sources)
  metric = compare.metric_of(config)
  noise = evaluator_noise(results[seeds[0]], metric, quality_baseline,
                          noise_draws)
  rows = aggregate({s: r.rows for s, r in results.items()}, names, metric)
  mark_gaps(rows, metric, noise['noise'] if noise else None)
  made = {compare.form(k): v for k, v in sources.made().items()}
  text = table(rows, metric, quality_baseline) + '\n\n' + _notes(
      config, seeds, made, noise)
  compare.write_report(
      workdir, text, config, start, {
          'metric': metric,
          'seeds': list(seeds),
          'source_shared': True,
          'sources': made,
          'data_seed': config.data.seed,
          'rows': [_json_row(r) for r in rows],
          'runs': {
              str(s): r.rows for s, r in results.items()
          },
          'evaluator_noise': noise,
          'quality_baseline': quality_baseline,
      })
  band_plot(results, names, metric, workdir / 'comparison.png')
  compare.samples_figure(results[seeds[0]].runs, workdir / 'samples.png',
                         config.sample.columns)
  return text
