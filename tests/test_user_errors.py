"""User mistakes, table-driven: each ends with exit status 2 and one
`error:` line naming what is wrong and the fix, and changes no file that
existed before (issue "Nothing lost and nothing cryptic")."""

import hashlib
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from cgt_jax.transfer import stages
from tests import reference_cases as rc
from tests.test_train import save_models
from tests.test_train import tiny_config


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  return save_models(
      stages.fresh_models(tiny_config(), 4),
      tmp_path_factory.mktemp('model') / 'model')


def _latents(path, z, y):
  np.savez(path, z=np.asarray(z, np.float32), y=np.asarray(y))
  return path


def _snapshot(*roots) -> dict:
  """Every file under `roots` with a hash of its bytes."""
  return {
      p: hashlib.sha256(p.read_bytes()).hexdigest()
      for root in roots for p in pathlib.Path(root).rglob('*') if p.is_file()
  }


def _nan_latents(tmp_path):
  z = np.zeros((3, 16))
  z[1, 4] = np.nan
  return _latents(tmp_path / 'in.npz', z, [0, 1, 2])


def _fractional_labels(tmp_path):
  return _latents(tmp_path / 'in.npz', np.zeros((3, 16)), [0.0, 1.5, 2.0])


def _text_labels(tmp_path):
  return _latents(tmp_path / 'in.npz', np.zeros((2, 16)), ['a', 'b'])


# (case, makes the bad input in tmp_path, the expected message)
SAMPLE_CASES = [
    (_nan_latents, r'z has NaN or infinite values in rows \[1\]: give finite '
     'latents'),
    (_fractional_labels, r'y must hold whole class labels, got \[0.0, 1.5, '
     r'2.0\]: save integer labels'),
    (_text_labels, 'y must hold whole class labels, got <U1: save integer '
     'labels'),
]


@pytest.mark.parametrize(
    'make,message',
    SAMPLE_CASES,
    ids=[c[0].__name__.strip('_') for c in SAMPLE_CASES])
def test_sample_tool_mistakes(make, message, model_dir, tmp_path, capsys):
  sample = rc.load_tool('sample')
  latents = make(tmp_path)
  before = _snapshot(tmp_path, model_dir)
  status = sample.main([
      '--checkpoint',
      str(model_dir), '--latents',
      str(latents), '--out',
      str(tmp_path / 'out.npz')
  ])
  err = capsys.readouterr().err.strip().splitlines()
  assert status == 2
  assert len(err) == 1 and err[0].startswith('error: '), err
  assert re.search(message, err[0]), err[0]
  assert _snapshot(tmp_path, model_dir) == before
  assert not (tmp_path / 'out.npz').exists()


ROOT = pathlib.Path(__file__).resolve().parent.parent
# `python -m cgt_jax.main` flags and the line each must print.
MAIN_CASES = [
    (['--config.nosuchkey=1'], "error: no such config field: 'nosuchkey'"),
    (['--config.seed=one'], 'error: flag --config.seed=one: invalid literal'),
]


@pytest.mark.parametrize(
    'extra,line', MAIN_CASES, ids=['unknown_config_key', 'bad_config_value'])
def test_main_usage_mistakes(extra, line, tmp_path):
  workdir = tmp_path / 'work'
  result = subprocess.run(
      [
          sys.executable, '-m', 'cgt_jax.main', '--config=configs/demo.py',
          f'--workdir={workdir}'
      ] + extra,
      capture_output=True,
      text=True,
      cwd=ROOT,
      env={
          **os.environ, 'XLA_FLAGS': ''
      },
      timeout=120,
      check=False)
  assert result.returncode == 2
  errors = [
      text for text in result.stderr.splitlines() if text.startswith('error:')
  ]
  assert len(errors) == 1 and errors[0].startswith(line), result.stderr
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()  # stopped before touching anything
