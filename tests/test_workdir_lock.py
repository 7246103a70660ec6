"""One run per workdir (`runtime.workdir_lock`), and a preempted run's exit
status."""

import json
import os
import subprocess
import sys

import pytest

from cgt_jax.data import pipeline
from cgt_jax.runtime import workdir_lock
from cgt_jax.training import loop
from tests.test_train import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dead_pid() -> int:
  child = subprocess.Popen([sys.executable, '-c', 'pass'])
  child.wait()
  return child.pid


def test_a_held_workdir_is_refused_in_one_line_naming_the_holder(tmp_path):
  holder = workdir_lock.acquire(tmp_path)
  with pytest.raises(workdir_lock.WorkdirLocked) as error:
    workdir_lock.acquire(tmp_path)
  message = str(error.value)
  assert '\n' not in message
  assert f'process {os.getpid()} on {holder["host"]}' in message
  assert 'use another --workdir' in message
  workdir_lock.release(tmp_path, holder)
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()


def test_a_dead_holder_on_this_host_is_taken_over(tmp_path):
  stale = {'host': workdir_lock.socket.gethostname(), 'pid': _dead_pid()}
  (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(stale))
  with workdir_lock.held(tmp_path):
    now = json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())
    assert now['pid'] == os.getpid()
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()


def test_a_holder_on_another_host_is_never_taken_over(tmp_path):
  other = {'host': 'elsewhere', 'pid': _dead_pid(), 'started': 0}
  lock = tmp_path / workdir_lock.LOCK_FILE
  lock.write_text(json.dumps(other))
  with pytest.raises(workdir_lock.WorkdirLocked, match=f'delete {lock}'):
    workdir_lock.acquire(tmp_path)
  assert json.loads(lock.read_text()) == other  # untouched


def test_a_second_run_on_a_busy_workdir_stops_and_the_first_finishes(
    tmp_path, monkeypatch):
  """While the first run trains, the same command in another process
  stops at once with exit status 2 and one line; the first run finishes
  with its own result."""
  config = tiny_config(pretrain=2)
  config.stages = ('pretrain',)
  second = {}
  original = pipeline.BatchSampler.process_batch

  def fetch(self, step):
    if step == 1 and not second:
      second['result'] = subprocess.run([
          sys.executable, '-m', 'cgt_jax.main', '--config=configs/demo.py',
          f'--workdir={tmp_path}'
      ],
                                        capture_output=True,
                                        text=True,
                                        cwd=ROOT,
                                        env={
                                            **os.environ, 'XLA_FLAGS': ''
                                        },
                                        timeout=300,
                                        check=False)
    return original(self, step)

  monkeypatch.setattr(pipeline.BatchSampler, 'process_batch', fetch)
  model = loop.train_and_evaluate(config, tmp_path)
  result = second['result']
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [
      line for line in result.stderr.splitlines() if line.startswith('error:')
  ]
  assert len(lines) == 1 and f'process {os.getpid()}' in lines[0]
  assert 'Traceback' not in result.stderr
  assert (model / 'architecture.json').exists()
  summary = json.loads((tmp_path / 'pretrain' / 'summary.json').read_text())
  assert summary['steps'] == 2
  # The second run wrote nothing: the config is still the first one's.
  written = json.loads((tmp_path / 'config.json').read_text())
  assert written['pretrain']['num_steps'] == 2
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()
