"""The tools as a user meets them, run as processes (issue 21): `--help`
exits 0 without starting JAX, a missing input path is one `error:` line
(status 2), outputs land where the user says or in the working directory
with their path printed, compare.py reports (and names) the runs' last
evaluated stage, and a CPU machine shows no accelerator probing."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from cgt_jax.evaluation import comparison
from tests import reference_cases as rc
from tests.test_compare import _fake_run
from tests.test_compare import _rows

ROOT = rc.FIXTURES.parent.parent
TOOLS = sorted(path.stem for path in (ROOT / 'tools').glob('*.py'))


def _run(command: list, cwd=ROOT, **env) -> subprocess.CompletedProcess:
  """`command` as a user runs it on a CPU machine: the suite's environment
  without its 8 fake devices and without JAX_PLATFORMS=cpu, which would
  hide the backend probing a user sees; `env` adds or replaces variables."""
  environ = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}
  environ.update({'XLA_FLAGS': '', **env})
  return subprocess.run([str(part) for part in command],
                        capture_output=True,
                        text=True,
                        cwd=cwd,
                        env=environ,
                        timeout=300,
                        check=False)


def _tool(name: str, *args, cwd=ROOT, **env) -> subprocess.CompletedProcess:
  """`python tools/<name>.py args` (`_run`)."""
  return _run([sys.executable, ROOT / 'tools' / f'{name}.py', *args], cwd,
              **env)


def _tpu_lines(result) -> list:
  """Output lines that mention a TPU (JAX's probing for one, e.g. libtpu)."""
  return [
      line for line in (result.stdout + result.stderr).splitlines()
      if 'tpu' in line.lower()
  ]


@pytest.mark.parametrize('name', TOOLS)
def test_help_exits_0_without_a_backend(name):
  # An unknown platform makes any JAX backend start fail loudly: --help
  # must print before one is needed (and stay fast).
  result = _tool(name, '--help', JAX_PLATFORMS='no_such_platform')
  assert result.returncode == 0, result.stderr
  assert '\nflags:' in result.stdout and result.stderr == ''


def test_compare_help_shows_its_defaults(capsys):
  assert rc.load_tool('compare').main(['--help']) == 0
  out = capsys.readouterr().out
  assert ("--stage: <pretrain|transfer|finetune>: the stage to compare "
          "(default: the\n    runs' last evaluated stage") in out
  assert "(default: '.')" in out


# (tool, its arguments with {} for the missing path, what is missing)
MISSING_INPUTS = [
    ('sample', ['--checkpoint', '{}'], 'no such directory'),
    ('evaluate', ['--workdir', '{}'], 'no such directory'),
    ('compare', ['{}'], 'no such directory'),
    ('convert_biggan', ['--generator', '{}', '--out', 'model'], 'no such file'),
]


@pytest.mark.parametrize(
    'name, args, missing', MISSING_INPUTS, ids=[c[0] for c in MISSING_INPUTS])
def test_a_missing_input_is_one_line(name, args, missing, tmp_path):
  path = tmp_path / 'no' / 'such'
  result = _tool(name, *[a.format(path) for a in args], cwd=tmp_path)
  assert result.returncode == 2
  assert result.stdout == ''  # the error once, on stderr
  assert result.stderr == f'error: {path}: {missing}\n'
  assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_sample_writes_its_grid_into_the_working_directory(
    random_source, tmp_path):
  model_files = sorted(random_source.rglob('*'))
  result = _tool(
      'sample', '--checkpoint', random_source, '--columns', '1', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  grid = tmp_path / 'samples.png'
  assert f'wrote {grid}\n' in result.stdout
  with Image.open(grid) as image:
    assert image.format == 'PNG'
  assert sorted(random_source.rglob('*')) == model_files  # model untouched
  assert not _tpu_lines(result), result.stderr


def _two_stage_runs(root, configured=('pretrain', 'transfer', 'finetune')):
  """Two workdirs evaluated in transfer and finetune, with other numbers in
  each stage, whose config.json lists `configured`."""
  runs = []
  for name, transfer, finetune in (('a', [9.0, 8.0], [4.0, 3.0]),
                                   ('b', [7.0, 6.0], [2.0, 1.0])):
    run = _fake_run(root, name, [10, 20], {'domain_fd': transfer}, 1.0)
    _fake_run(root, name, [5, 6], {'domain_fd': finetune}, 2.0, 'finetune')
    (run / 'config.json').write_text(json.dumps({'stages': configured}))
    runs.append(run)
  return runs


def test_compare_reports_the_last_evaluated_stage(tmp_path):
  runs = _two_stage_runs(tmp_path)
  cwd = tmp_path / 'here'
  cwd.mkdir()
  result = _tool('compare', *runs, cwd=cwd)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0] == "stage: finetune (the runs' last evaluated stage)"
  # The finetune numbers, not the transfer ones.
  rows = _rows((cwd / 'comparison.md').read_text())
  assert rows['a'][:3] == ['3', '6', '3'] and rows['b'][:3] == ['1', '6', '1']
  assert lines[-1] == 'wrote comparison.md and comparison.png'
  assert (cwd / 'comparison.png').is_file()


def test_compare_names_the_stage_it_was_given(tmp_path, capsys):
  runs = _two_stage_runs(tmp_path)
  tool = rc.load_tool('compare')
  args = [str(r) for r in runs] + ['--out', str(tmp_path / 'out')]
  assert tool.main(args + ['--stage', 'transfer']) == 0
  out = capsys.readouterr().out
  assert out.splitlines()[0] == 'stage: transfer'
  rows = _rows((tmp_path / 'out' / 'comparison.md').read_text())
  assert rows['a'][:3] == ['8', '20', '8']  # the transfer numbers


def test_default_stage_needs_every_run_and_its_config(tmp_path):
  runs = _two_stage_runs(tmp_path)
  assert comparison.default_stage(runs) == 'finetune'
  # A run without a finetune evaluation: the last stage all share.
  lone = _fake_run(tmp_path, 'transfer_only', [1], {'domain_fd': [1.0]}, 1.0)
  assert comparison.default_stage(runs + [lone]) == 'transfer'
  # A finetune folder left from an earlier config that no longer lists it.
  stale = _two_stage_runs(tmp_path / 'stale', ('pretrain', 'transfer'))
  assert comparison.default_stage(stale) == 'transfer'
  (tmp_path / 'empty').mkdir()
  with pytest.raises(comparison.CompareError, match='no stage has an eval'):
    comparison.default_stage([runs[0], tmp_path / 'empty'])


@pytest.mark.parametrize('caller', ['shell', 'python_logging_at_info'])
def test_benchmark_shows_no_accelerator_probing_on_cpu(caller, tmp_path):
  # The backend starts (and probes for TPUs and GPUs) when the tool sets
  # the process up, before its body; a config mistake then ends the run
  # cheaply, with its one line as the only output.
  args = ['--config=configs/demo.py', '--config.method=no_such_method']
  if caller == 'shell':
    result = _tool('benchmark', *args)
  else:
    # As a notebook or script that logs at INFO before calling the tool.
    code = ('import logging, runpy, sys; '
            'logging.basicConfig(level=logging.INFO); '
            f'sys.argv = ["benchmark.py"] + {args!r}; '
            'runpy.run_path("tools/benchmark.py", run_name="__main__")')
    result = _run([sys.executable, '-c', code])
  assert result.returncode == 2
  assert not _tpu_lines(result), result.stderr
  errors = [
      line for line in result.stderr.splitlines() if line.startswith('error:')
  ]
  assert len(errors) == 1 and 'no_such_method' in errors[0], result.stderr
