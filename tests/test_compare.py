"""tools/compare.py (table, plot, errors), tools/evaluate.py's and
tools/compare_methods.py's errors, and the tools' shared command line
(cgt_jax.runtime.cli)."""

import json

import numpy as np
import pytest
from PIL import Image

from cgt_jax.evaluation import comparison
from tests import reference_cases as rc

DEMO_CONFIG = rc.FIXTURES.parent.parent / 'configs' / 'demo.py'


@pytest.fixture(scope='module')
def compare():
  return rc.load_tool('compare')


@pytest.fixture(scope='module')
def evaluate():
  return rc.load_tool('evaluate')


def _fake_run(root, name, steps, metrics, wall_seconds, stage='transfer'):
  """A workdir whose `stage` has an eval history and a summary."""
  stage_dir = root / name / stage
  stage_dir.mkdir(parents=True)
  history = [{
      'step': step,
      'wall_time': 1e9 + step,
      **{
          k: v[i] for k, v in metrics.items()
      },
      'per_class_accuracy': [0.5, 0.25],
  } for i, step in enumerate(steps)]
  (stage_dir / 'eval_history.json').write_text(json.dumps(history))
  summary = {'stage': stage, 'steps': steps[-1], 'wall_seconds': wall_seconds}
  (stage_dir / 'summary.json').write_text(json.dumps(summary))
  return root / name


def _rows(markdown: str) -> dict:
  """Run name -> the other cells of its table row."""
  rows = {}
  for line in markdown.splitlines()[2:]:
    cells = [c.strip() for c in line.strip('|').split('|')]
    rows[cells[0]] = cells[1:]
  return rows


@pytest.fixture
def runs(tmp_path):
  # Best domain_fd at step 200 (min) but best class_accuracy at 300 (max):
  # the wrong direction would pick a different row.
  a = _fake_run(tmp_path, 'run_a', [100, 200, 300], {
      'domain_fd': [50.0, 20.5, 30.25],
      'class_accuracy': [0.1, 0.2, 0.6]
  }, 12.5)
  b = _fake_run(tmp_path, 'run_b', [50, 100], {
      'domain_fd': [9.0, 7.5],
      'class_accuracy': [0.9, 0.3]
  }, 99.0)
  return [a, b]


def test_table_min_metric(compare, runs, tmp_path, capsys):
  out = tmp_path / 'out'
  assert compare.main([str(r) for r in runs] + ['--out', str(out)]) == 0
  text = (out / 'comparison.md').read_text()
  assert 'best domain_fd (lower is better)' in text  # the default metric
  rows = _rows(text)
  # best, iterations to best, final, evaluations, wall time
  assert rows['run_a'] == ['20.5', '200', '30.25', '3', '12.5']
  assert rows['run_b'] == ['7.5', '100', '7.5', '2', '99.0']
  assert text.strip() in capsys.readouterr().out


def test_table_max_metric(compare, runs, tmp_path):
  text = comparison.compare(runs, metric='class_accuracy', out=tmp_path / 'out')
  rows = _rows(text)
  assert rows['run_a'] == ['0.6', '300', '0.6', '3', '12.5']
  assert rows['run_b'] == ['0.9', '50', '0.3', '2', '99.0']


def test_default_metric_prefers_fid(compare, tmp_path):
  run = _fake_run(tmp_path, 'inception', [10, 20], {
      'fid': [40.0, 35.0],
      'is': [2.0, 3.0],
      'domain_fd': [1.0, 2.0]
  }, 1.0)
  text = comparison.compare([run], out=tmp_path / 'out')
  assert _rows(text)['inception'][:3] == ['35', '20', '35']
  text = comparison.compare([run], metric='is', out=tmp_path / 'out')
  assert _rows(text)['inception'][:2] == ['3', '20']


def test_plot_is_a_png(compare, runs, tmp_path):
  out = tmp_path / 'out'
  comparison.compare(runs, out=out)
  with Image.open(out / 'comparison.png') as image:
    assert image.format == 'PNG'
    assert image.size == (640, 400)
    pixels = np.asarray(image.convert('RGB'))
  assert pixels.std() > 0  # something was drawn


def test_other_stage(compare, tmp_path):
  run = _fake_run(
      tmp_path, 'ft', [5, 6], {'domain_fd': [3.0, 1.0]}, 2.0, stage='finetune')
  text = comparison.compare([run], stage='finetune', out=tmp_path / 'out')
  assert _rows(text)['ft'] == ['1', '6', '1', '2', '2.0']


def test_missing_history(compare, runs, tmp_path, capsys):
  (tmp_path / 'empty').mkdir()
  code = compare.main(
      [str(runs[0]),
       str(tmp_path / 'empty'), '--out',
       str(tmp_path)])
  assert code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: ') and 'empty' in err
  assert 'eval_history.json' in err and len(err.splitlines()) == 1
  assert not (tmp_path / 'comparison.md').exists()


def test_missing_metric(compare, runs, tmp_path, capsys):
  code = compare.main(
      [str(r) for r in runs] +
      ['--metric', 'fid', '--out', str(tmp_path)])
  assert code == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and "no metric 'fid'" in err
  assert 'domain_fd' in err and 'per_class_accuracy' not in err


def test_evaluate_missing_workdir(evaluate, tmp_path, capsys):
  assert evaluate.main(['--workdir', str(tmp_path / 'nope')]) == 2
  err = capsys.readouterr().err
  assert err == f'error: {tmp_path / "nope"}: no such directory\n'


def test_evaluate_no_finished_stage(evaluate, tmp_path, capsys):
  # An interrupted stage: checkpoints but no summary.json or model.
  (tmp_path / 'transfer' / 'checkpoints').mkdir(parents=True)
  (tmp_path / 'config.json').write_text('{}')
  assert evaluate.main(['--workdir', str(tmp_path)]) == 2
  assert 'has no finished stage' in capsys.readouterr().err
  assert evaluate.main(['--workdir', str(tmp_path), '--stage', 'pretrain']) == 2
  assert "stage 'pretrain'" in capsys.readouterr().err


def test_evaluate_missing_config(evaluate, tmp_path, capsys):
  stage_dir = tmp_path / 'transfer'
  (stage_dir / 'model').mkdir(parents=True)
  (stage_dir / 'model' / 'architecture.json').write_text('{}')
  (stage_dir / 'summary.json').write_text('{}')
  assert evaluate.main(['--workdir', str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and 'config.json is missing' in err


def _one_error_line(capsys) -> str:
  err = capsys.readouterr().err
  assert err.startswith('error: ') and err.count('\n') == 1, err
  return err


def test_compare_methods_rejects_an_unknown_method(tmp_path, capsys):
  tool = rc.load_tool('compare_methods')
  base = [f'--config={DEMO_CONFIG}', f'--workdir={tmp_path / "run"}']
  # Twice, with other config overrides: the tool parses them anew.
  for seed in (1, 2):
    code = tool.main(base +
                     [f'--config.seed={seed}', '--methods=kp,no_such_method'])
    assert code == 2
    assert "unknown ['no_such_method']" in _one_error_line(capsys)
  assert not (tmp_path / 'run').exists()  # rejected before any training
  assert tool.main(base + ['--config.seed=one']) == 2
  assert 'flag --config.seed=one' in _one_error_line(capsys)
  assert tool.main(base + ['--config.no_such_field=1']) == 2
  assert "no such config field: 'no_such_field'" in _one_error_line(capsys)


def test_tools_keep_their_flags_apart(compare, runs, tmp_path, capsys):
  # compare and sample both define --out; each parses its own, and a tool
  # runs again in the same process.
  sample = rc.load_tool('sample')
  out = tmp_path / 'table'
  assert compare.main([str(r) for r in runs] + ['--out', str(out)]) == 0
  assert (out / 'comparison.md').is_file()
  assert sample.main(
      ['--checkpoint',
       str(runs[0]), '--out',
       str(tmp_path / 'x.npz')]) == 2
  assert 'neither a model directory' in _one_error_line(capsys)
  assert compare.main([
      str(runs[1]), '--metric', 'class_accuracy', '--out',
      str(tmp_path / 'again')
  ]) == 0
  text = capsys.readouterr().out
  assert 'run_b' in text and 'run_a' not in text


@pytest.mark.parametrize(
    'args, message',
    [(['--no_such_flag'], "Unknown command line flag 'no_such_flag'"),
     (['--stage', 'middle'], 'flag --stage=middle'), ([], 'no RUN_DIR')])
def test_usage_mistakes_are_one_line(compare, runs, args, message, capsys):
  run_dirs = [str(runs[0])] if args else []
  assert compare.main(run_dirs + args) == 2
  assert message in _one_error_line(capsys)


def test_missing_required_flag_and_help(evaluate, capsys):
  assert evaluate.main([]) == 2
  assert '--workdir' in _one_error_line(capsys)
  assert evaluate.main(['--help']) == 0
  out = capsys.readouterr().out
  assert out.startswith(evaluate.__doc__.strip().splitlines()[0])
  assert '--num_samples' in out and '--inception_dir' in out
