"""Comparisons over seeds (`cgt_jax.experiments.seeds`): intervals against
a hand computation, the aggregated table and its noise marks, the
evaluator's noise, and `tools/compare_methods.py --seeds` end to end."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from cgt_jax.evaluation import comparison
from cgt_jax.evaluation import intervals
from cgt_jax.experiments import seeds
from tests import reference_cases as rc
from tests.test_train import tiny_config


def test_interval_is_students_t_over_the_values():
  got = intervals.of([1.0, 2.0, 6.0])
  # mean 3, sample sd sqrt(7), t(0.975, 2) = 4.3027
  half = 4.302653 * math.sqrt(7) / math.sqrt(3)
  assert got.mean == pytest.approx(3.0)
  assert (got.low, got.high) == pytest.approx((3 - half, 3 + half), rel=1e-6)
  assert got.n == 3 and str(got).startswith('3 [')
  one = intervals.of([5.0, None, float('nan')])  # missing values drop
  assert (one.mean, one.low, one.high, one.n) == (5.0, 5.0, 5.0, 1)
  assert str(one) == '5'
  assert intervals.of([None]) is None


def test_band_uses_the_iterations_every_run_evaluated():
  curve = comparison.RunCurve
  runs = [
      curve('a', [100, 200, 300], [4.0, 2.0, 3.0], 1.0),
      curve('a', [100, 200], [6.0, 4.0], 1.0)
  ]
  steps, means, lows, highs = intervals.band(runs)
  assert steps == [100, 200] and means == [5.0, 3.0]
  assert all(low < m < high for low, m, high in zip(lows, means, highs))


def _row(method, best, best_step, final, sooner, source='conditional'):
  return {
      'method': method,
      'source': source,
      'best': best,
      'best_step': best_step,
      'final': final,
      'steps_to_baseline_best': None if sooner is None else best_step,
      'times_sooner_than_baseline': sooner,
      'class_accuracy_at_best': 0.5,
      'recall_at_best': 0.3,
      'coverage_at_best': 0.4,
      'wall_seconds': 10.0
  }


def test_aggregate_marks_gaps_below_the_evaluator_noise():
  per_seed = {
      0: [
          _row('bsa', 100.0, 400, 110.0, 1.0),
          _row('kp', 80.0, 100, 88.0, 4.0),
          _row('kp_no_res', 89.0, 200, 89.0, 2.0)
      ],
      1: [
          _row('bsa', 120.0, 500, 120.0, 1.0),
          _row('kp', 90.0, 200, 99.0, 2.5), {
              'method': 'kp_no_res',
              'source': 'conditional',
              'error': 'diverged: d_fake 1e4'
          }
      ],
  }
  rows = seeds.aggregate(per_seed, ['bsa', 'kp', 'kp_no_res'], 'domain_fd')
  by_name = {row['method']: row for row in rows}
  kp = by_name['kp']
  assert (kp['best'].mean, kp['best'].n) == (85.0, 2)
  assert kp['final_vs_best'].mean == pytest.approx(0.1)  # 10% worse
  assert kp['times_sooner_than_baseline'].mean == pytest.approx(3.25)
  assert by_name['kp_no_res']['runs'] == 1
  assert by_name['kp_no_res']['errors'] == ['diverged: d_fake 1e4']
  seeds.mark_gaps(rows, 'domain_fd', noise=3.0)
  assert kp['gap_to_leader'] == 0
  assert by_name['kp_no_res']['gap_to_leader'] == pytest.approx(4.0)
  assert not by_name['kp_no_res']['within_noise']  # 4 > 3
  assert not by_name['bsa']['within_noise']
  seeds.mark_gaps(rows, 'domain_fd', noise=5.0)
  assert by_name['kp_no_res']['within_noise']
  text = seeds.table(rows, 'domain_fd', 'bsa')
  lines = text.splitlines()
  assert lines[0].startswith('| method | runs | best domain_fd (lower is')
  kp_no_res_line = next(line for line in lines if '| kp_no_res |' in line)
  assert '(within evaluator noise)' in kp_no_res_line
  assert '1 (1 failed: diverged' in kp_no_res_line
  kp_line = next(line for line in lines if line.startswith('| kp |'))
  assert '| leader |' in kp_line and '| +10% [' in kp_line
  assert '(2/2)' in kp_line


def test_higher_is_better_metrics_fall_behind_downwards():
  row = {'best': 0.8, 'final': 0.6}
  assert seeds.final_vs_best(row, 'class_accuracy') == pytest.approx(0.25)
  assert seeds.final_vs_best({
      'best': 50.0,
      'final': 60.0
  }, 'domain_fd') == pytest.approx(0.2)


def test_seeds_must_be_whole_numbers_given_once(tmp_path, capsys):
  tool = rc.load_tool('compare_methods')
  base = [
      f'--config={rc.FIXTURES.parent.parent / "configs" / "demo.py"}',
      f'--workdir={tmp_path / "run"}', '--methods=kp'
  ]
  for bad, message in (('0,x', 'give whole numbers'), ('1,1',
                                                       'repeats a seed')):
    assert tool.main(base + [f'--seeds={bad}']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and message in err, err
  assert not (tmp_path / 'run').exists()


def test_compare_over_seeds_shares_the_source_and_reports_intervals(
    tmp_path, eval_cache, random_source):
  config = tiny_config()
  config.source_checkpoint = str(random_source)
  config.eval.final = True
  config.eval.cache_dir = str(eval_cache)
  config.eval.classifier_with_source = True
  config.transfer.eval_every = 1
  text = seeds.compare_over_seeds(
      config, tmp_path, ['bsa', 'kp'], [0, 1], noise_draws=2)
  report = json.loads((tmp_path / 'comparison.json').read_text())
  assert report['seeds'] == [0, 1] and report['source_shared']
  assert report['sources'] == {'conditional': str(random_source)}
  for seed in (0, 1):
    for method in ('bsa', 'kp'):
      run = json.loads(
          (tmp_path / f'seed_{seed}' / method / 'config.json').read_text())
      assert run['seed'] == seed
      assert run['source_checkpoint'] == str(random_source)
    assert (tmp_path / f'seed_{seed}' / 'comparison.md').is_file()
  # Every run kept; the seeds gave different runs.
  kp_runs = [
      next(r
           for r in report['runs'][s]
           if r['method'] == 'kp')
      for s in ('0', '1')
  ]
  assert kp_runs[0]['best'] != kp_runs[1]['best']
  kp = next(r for r in report['rows'] if r['method'] == 'kp')
  assert kp['best']['n'] == 2
  assert kp['best']['mean'] == pytest.approx(
      np.mean([r['best'] for r in kp_runs]))
  assert kp['best']['low'] < kp['best']['mean'] < kp['best']['high']
  noise_report = report['evaluator_noise']
  assert noise_report['method'] == 'bsa' and len(noise_report['values']) == 2
  assert noise_report['values'][0] != noise_report['values'][1]
  assert noise_report['checkpoint'].endswith('seed_0/bsa/transfer/model_best')
  assert '2 seeds (0, 1) per method, one shared source model' in text
  assert 'Evaluator noise: domain_fd' in text
  assert Image.open(tmp_path / 'comparison.png').width > 0
  assert (tmp_path / 'samples.png').is_file()


def test_without_the_quality_baseline_the_ratio_cell_is_empty():
  rows = []
  for seed, accuracy in enumerate((0.5, 0.99)):
    row = _row('kp', 90.0 + seed, 300, 95.0, None)
    del row['steps_to_baseline_best']  # the baseline did not run
    row['class_accuracy_at_best'] = accuracy
    rows.append(row)
  aggregated = seeds.aggregate({0: rows[:1], 1: rows[1:]}, ['kp'], 'domain_fd')
  assert aggregated[0]['reached_baseline_best'] is None
  assert aggregated[0]['class_accuracy_at_best'].high > 1  # as computed
  line = seeds.table(aggregated, 'domain_fd', 'bsa').splitlines()[2]
  cells = [cell.strip() for cell in line.split('|')]
  assert cells[8] == '-'
  assert cells[9].endswith(', 1.00]')  # shown within [0, 1]


def test_band_plot_draws_methods_whose_seeds_share_no_iteration(tmp_path):
  curve = comparison.RunCurve
  groups = {
      'kp': [curve('kp', [100, 200], [5.0, 4.0], 1.0)] * 2,
      # Fine-tuning from each seed's best: no iteration in common.
      'kp_finetune': [
          curve('kp_finetune', [300, 400], [3.0, 2.0], 1.0),
          curve('kp_finetune', [500, 600], [3.5, 2.5], 1.0)
      ],
  }
  assert intervals.band(groups['kp_finetune'])[0] == []
  comparison.plot_bands(groups, 'domain_fd', tmp_path / 'bands.png', 'demo')
  assert Image.open(tmp_path / 'bands.png').width > 0
