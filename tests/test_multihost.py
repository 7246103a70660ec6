"""Multi-host training on this machine: two processes with
`jax.distributed` (a localhost coordinator), two fake CPU devices each.

* Two processes train a tiny config to the parameters one process with four
  devices gets (the same global batch, split the same way).
* SIGTERM to one of them: both save the same step (orbax's preemption sync
  point) and exit cleanly; rerunning resumes to the bitwise result of an
  uninterrupted two-process run.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from flax import traverse_util

from cgt_jax.models import model_io
from cgt_jax.training import loop

REPO = pathlib.Path(__file__).parent.parent
SOURCE = ('red_square', 'green_disc', 'blue_cross', 'yellow_ring')
TARGET = ('red_disc', 'green_square')
LEARNING_RATE = 1e-6  # Adam steps by ~lr wherever float noise flips a sign
STEPS = 4
# One test worker runs both tests: they share the uninterrupted run.
pytestmark = pytest.mark.xdist_group('multihost')


def _config_flags(workdir, steps: int) -> list:
  """A 4-class BigGAN of 8 channels, pretraining only, no evaluation."""
  values = {
      'stages': "('pretrain',)",
      'model.g_ch': 2,
      'model.d_ch': 2,
      'model.dim_z': 16,
      'data.source_classes': repr(SOURCE),
      'data.target_classes': repr(TARGET),
      'data.synthetic_images_per_class': 8,
      'data.target_images_per_class': 4,
      'pretrain.num_steps': steps,
      'pretrain.batch_size': 8,
      'pretrain.log_every': 1,
      'pretrain.sample_every': 0,
      'pretrain.checkpoint_every': 1000,
      'pretrain.g_lr': LEARNING_RATE,
      'pretrain.d_lr': LEARNING_RATE,
      'eval.final': False,
      'augment': '',  # --config.augment= : DiffAugment off
  }
  overrides = [f'--config.{k}={v}' for k, v in values.items()]
  config = '--config=configs/demo.py:scratch'
  return [config, f'--workdir={workdir}'] + overrides


def _environment(devices: int) -> dict:
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(
      XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
      JAX_PLATFORMS='cpu',
      # Tiny programs: XLA's optimisations cost more than they save.
      JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start(workdir, steps, devices, process_id=None, port=None, log=None):
  command = [sys.executable, '-m', 'cgt_jax.main'] + _config_flags(
      workdir, steps)
  if process_id is not None:
    command += [
        '--distributed', f'--coordinator_address=localhost:{port}',
        '--num_processes=2', f'--process_id={process_id}'
    ]
  return subprocess.Popen(
      command,
      cwd=REPO,
      env=_environment(devices),
      stdout=subprocess.DEVNULL,
      stderr=log,
      text=True)


def _run_two(workdir, steps, logs, on_start=None) -> list:
  """Runs the two processes to the end; returns their exit codes."""
  port = _free_port()
  processes = [
      _start(workdir, steps, 2, i, port, open(logs[i], 'w')) for i in (0, 1)
  ]
  if on_start:
    on_start(processes)
  codes = [p.wait(timeout=600) for p in processes]
  return codes


def _parameters(workdir) -> dict:
  _, _, variables = model_io.load(workdir / 'pretrain' / 'model')
  return traverse_util.flatten_dict(variables, sep='/')


def _wait_for(path: pathlib.Path, text: str, timeout: float = 300):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if path.exists() and text in path.read_text():
      return
    time.sleep(0.2)
  raise AssertionError(f'{text!r} never appeared in {path}:\n'
                       f'{path.read_text()[-3000:]}')


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """The two-process run's workdir."""
  root = tmp_path_factory.mktemp('two')
  logs = [root / 'p0.log', root / 'p1.log']
  codes = _run_two(root / 'work', STEPS, logs)
  assert codes == [0, 0], logs[0].read_text()[-3000:]
  return root / 'work'


def test_two_processes_train_like_one_with_four_devices(uninterrupted,
                                                        tmp_path):
  single = _start(tmp_path / 'work', STEPS, 4, log=open(tmp_path / 'log', 'w'))
  assert single.wait(timeout=600) == 0, (tmp_path / 'log').read_text()[-3000:]
  expected, actual = _parameters(tmp_path / 'work'), _parameters(uninterrupted)
  assert expected.keys() == actual.keys()
  # The same global computation; only the order of the cross-device sums
  # differs (gloo vs in-process). Adam turns sign flips of noise-level
  # gradients into lr-sized moves: at most 2 lr a step.
  for key in expected:
    np.testing.assert_allclose(
        actual[key],
        expected[key],
        rtol=1e-4,
        atol=2 * STEPS * LEARNING_RATE + 1e-6,
        err_msg=key)


def test_sigterm_to_one_process_saves_one_step_on_both(uninterrupted, tmp_path):
  workdir = tmp_path / 'work'
  logs = [tmp_path / 'p0.log', tmp_path / 'p1.log']

  def preempt_process_1(processes):
    # While the processes load data and compile (some 10 s), once JAX's
    # preemption service is up: process 0's first line comes when both have
    # connected, and process 1 has 2 s more to set its service up. (A
    # signal after "step 1/4" could come after the last step of so tiny a
    # run.) Only process 0 logs.
    _wait_for(logs[0], 'cgt_jax: ')
    time.sleep(2)
    processes[1].send_signal(signal.SIGTERM)

  # Both stop with the preempted status (not 0: a scheduler requeues).
  assert _run_two(workdir, STEPS, logs,
                  preempt_process_1) == [loop.PREEMPTED_STATUS] * 2
  stopped = [
      int(log.read_text().split('stopped by SIGTERM at step ')[1].split(';')[0])
      for log in logs
  ]
  assert stopped[0] == stopped[1] < STEPS, stopped
  saved = workdir / 'pretrain' / 'checkpoints' / 'latest'
  assert sorted(
      int(p.name) for p in saved.iterdir() if p.name.isdigit()) == [stopped[0]]
  assert not (workdir / 'pretrain' / 'summary.json').exists()
  # Rerunning the same command resumes to the uninterrupted result.
  assert _run_two(workdir, STEPS,
                  [tmp_path / 'r0.log', tmp_path / 'r1.log']) == [0, 0]
  assert 'resumed from step' in (tmp_path / 'r0.log').read_text()
  expected, actual = _parameters(uninterrupted), _parameters(workdir)
  for key in expected:
    np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)
