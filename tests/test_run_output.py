"""What `python -m cgt_jax.main` tells its user and leaves behind (issue 21).

One tiny run (pretrain 2 steps, transfer 4 with evaluations at 2 and 4,
`transfer.export='best'`), as a subprocess in which TensorFlow cannot be
imported, as in the demo's environment:

* a line for every set-up phase before training (data, models, evaluation,
  compilation), no third-party banners or backend probing;
* progress lines with only the loss terms the stage has;
* the closing summary, whose every path exists, and the exported model is
  the configured one (`model` = `model_best`, `model_final` the last step);
* TensorBoard event files, read back with tensorboard's event reader.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from flax import traverse_util
from tensorboard.backend.event_processing import event_accumulator

from cgt_jax.models import model_io
from tests import test_multihost
from tests import test_tools_cli

REPO = pathlib.Path(__file__).parent.parent
# `python -m cgt_jax.main` in a process where `import tensorflow` fails and
# `importlib.util.find_spec('tensorflow')` is None (what tfds and etils
# check), as where it is not installed.
_WITHOUT_TENSORFLOW = '''
import importlib.machinery, runpy, sys

class HidingFinder(importlib.machinery.PathFinder):
  @classmethod
  def find_spec(cls, name, path=None, target=None):
    if name.split('.')[0] == 'tensorflow':
      return None
    return super().find_spec(name, path, target)

sys.meta_path[:] = [HidingFinder if f is importlib.machinery.PathFinder
                    else f for f in sys.meta_path]
runpy.run_module('cgt_jax.main', run_name='__main__', alter_sys=True)
'''
THIRD_PARTY_NOISE = ('oneDNN', 'libtpu', "Unable to initialize backend",
                     'absl::InitializeLog', 'tensorflow')


@pytest.fixture(scope='module')
def run(tmp_path_factory, eval_cache):
  """The run's workdir and its console (stderr: absl's log lines)."""
  workdir = tmp_path_factory.mktemp('run') / 'work'
  flags = [
      flag for flag in test_multihost._config_flags(workdir, steps=2)
      if not flag.startswith(('--config.eval.final=', '--config.stages='))
  ]
  flags += [
      "--config.stages=('pretrain', 'transfer')",
      '--config.transfer.num_steps=4', '--config.transfer.batch_size=8',
      '--config.transfer.num_d_accumulations=1',
      '--config.transfer.log_every=2', '--config.transfer.eval_every=2',
      '--config.transfer.sample_every=2', '--config.transfer.export=best',
      '--config.eval.final=True', '--config.eval.num_samples=16',
      '--config.eval.batch_size=8', '--config.eval.classifier_steps=20',
      f'--config.eval.cache_dir={eval_cache}', '--config.sample.columns=2'
  ]
  # The suite's environment, as test_multihost runs the program, on one
  # device (`test_tools_cli._run` leaves out JAX_PLATFORMS unless given).
  env = test_multihost._environment(devices=1)
  names = ('XLA_FLAGS', 'JAX_PLATFORMS', 'JAX_DISABLE_MOST_OPTIMIZATIONS')
  result = test_tools_cli._run(
      [sys.executable, '-c', _WITHOUT_TENSORFLOW] + flags,
      cwd=REPO,
      **{name: env[name] for name in names})
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result.stderr


def _messages(console: str) -> list:
  """The log lines' messages, without absl's `I1128 12:00:00.0 pid file:n]`
  prefix."""
  return [
      re.sub(r'^[IWE]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ', '', line)
      for line in console.splitlines()
  ]


def test_every_set_up_phase_is_announced_before_training(run):
  lines = _messages(run[1])
  expected = [
      '[data] loading synthetic images ...', '[data] loading synthetic images:',
      '[data] 4 source classes, 32 images (labels 0..3); 2 new classes, 8 '
      'images (labels 4..5)', '[pretrain] building the models ...',
      '[pretrain] compiling the train step ...',
      '[pretrain] compiling the train step:', '[pretrain] step 1/2',
      '[transfer] building the models ...',
      '[transfer] setting up the evaluation ...',
      '[transfer] setting up the evaluation:',
      '[transfer] compiling the train step ...', '[transfer] step 2/4'
  ]
  positions = [
      next((i for i, line in enumerate(lines) if line.startswith(e)),
           None) for e in expected
  ]
  assert None not in positions, [
      e for e, p in zip(expected, positions) if p is None
  ]
  assert positions == sorted(positions)


def test_no_third_party_banners_or_backend_probing(run):
  noisy = [
      line for line in run[1].splitlines()
      if any(word in line for word in THIRD_PARTY_NOISE)
  ]
  assert not noisy


def test_progress_lines_show_only_the_terms_the_stage_has(run):
  lines = _messages(run[1])
  pretrain = [line for line in lines if line.startswith('[pretrain] step')]
  transfer = [line for line in lines if line.startswith('[transfer] step')]
  assert pretrain and transfer
  assert all('similarity_l1' not in line and 'residual_l2' not in line
             for line in pretrain)
  assert all(
      'similarity_l1' in line and 'residual_l2' in line for line in transfer)


def _summary_lines(console: str) -> list:
  lines = _messages(console)
  start = next(i for i, line in enumerate(lines) if line.startswith('== done'))
  return lines[start:]


def test_the_closing_summary_names_files_that_exist(run):
  workdir, console = run
  summary = _summary_lines(console)
  paths = re.findall(re.escape(str(workdir)) + r'[^\s,)]*', '\n'.join(summary))
  for name in ('transfer/model', 'transfer/model_best', 'transfer/model_final',
               'transfer/samples/best.png', 'pretrain/model', 'comparison.md',
               'comparison.png'):
    assert str(workdir / name) in paths, name
  assert 'transfer/checkpoints/best/' in '\n'.join(summary)
  missing = [p for p in paths if not pathlib.Path(p).exists()]
  assert not missing
  transfer = json.loads((workdir / 'transfer' / 'summary.json').read_text())
  assert transfer['export'] == 'best'
  best_step = transfer['best_eval']['step']
  assert (f'  exported model (best, step {best_step}): '
          f'{workdir}/transfer/model') in summary
  assert any(
      line.startswith('[transfer] 4 steps in ') and
      f'domain_fd best {transfer["best_eval"]["value"]:.4g} at step '
      f'{best_step}, final ' in line for line in summary)


def _parameters(model_dir) -> dict:
  _, _, g_variables = model_io.load(model_dir)
  return traverse_util.flatten_dict(g_variables, sep='/')


def test_the_exported_model_is_the_configured_one(run):
  workdir = run[0]
  transfer = json.loads((workdir / 'transfer' / 'summary.json').read_text())
  # The run's seed makes the evaluation at step 2 the best one, so that
  # the best and the final model differ.
  assert transfer['exported_step'] == transfer['best_eval']['step'] == 2
  model = _parameters(workdir / 'transfer' / 'model')
  best = _parameters(workdir / 'transfer' / 'model_best')
  final = _parameters(workdir / 'transfer' / 'model_final')
  assert model.keys() == best.keys() == final.keys()
  for key in model:
    np.testing.assert_array_equal(model[key], best[key])
  assert any(not np.array_equal(model[k], final[k]) for k in model)
  # The pretraining stage exports its final model (the default), alone.
  pretrain = json.loads((workdir / 'pretrain' / 'summary.json').read_text())
  assert (pretrain['export'], pretrain['exported_step']) == ('final', 2)
  assert not (workdir / 'pretrain' / 'model_final').exists()


def test_tensorboard_reads_back_the_scalars_and_grids(run):
  stage_dir = run[0] / 'transfer'
  events = event_accumulator.EventAccumulator(
      str(stage_dir), size_guidance={event_accumulator.IMAGES: 0})
  events.Reload()
  tags = events.Tags()
  history = json.loads((stage_dir / 'eval_history.json').read_text())
  fd = events.Scalars('eval/domain_fd')
  assert [e.step for e in fd] == [h['step'] for h in history] == [2, 4]
  np.testing.assert_allclose([e.value for e in fd],
                             [h['domain_fd'] for h in history],
                             rtol=1e-6)
  assert [e.step for e in events.Scalars('g_loss')] == [2, 4]
  assert 'steps_per_sec' in tags['scalars']
  grids = events.Images('samples')
  assert [e.step for e in grids] == [2, 4]
  assert grids[0].width > 0 and grids[0].height > 0
  assert 'best_samples' in tags['images']


def test_the_run_never_imported_tensorflow():
  # The run above could not import it; this checks that hiding it is real.
  code = _WITHOUT_TENSORFLOW.replace(
      "runpy.run_module('cgt_jax.main', run_name='__main__', alter_sys=True)",
      'import importlib.util\n'
      "print(importlib.util.find_spec('tensorflow'))\n"
      'from cgt_jax.training import reporting, loop\n'
      "print('tensorflow' in sys.modules)")
  result = subprocess.run([sys.executable, '-c', code],
                          cwd=REPO,
                          env={
                              **os.environ, 'JAX_PLATFORMS': 'cpu'
                          },
                          capture_output=True,
                          text=True,
                          check=True)
  assert result.stdout.split() == ['None', 'False']


@pytest.mark.parametrize('verbose', [False, True])
def test_other_libraries_info_lines_only_with_verbose(tmp_path, verbose):
  # JAX probing its backends (no JAX_PLATFORMS): e.g. "Unable to initialize
  # backend 'tpu'" on a CPU machine, an INFO line of jax's xla_bridge. The
  # config mistake stops the run once the process is set up.
  result = test_tools_cli._run([
      sys.executable, '-m', 'cgt_jax.main', '--config=configs/demo.py',
      f'--workdir={tmp_path}', f'--{"" if verbose else "no"}verbose',
      '--config.transfer.d_chunk_reduction=avg'
  ])
  assert result.returncode == 2
  info = re.findall(r'^I\d{4} [\d:.]+ +\d+ ([\w.]+):\d+\]', result.stderr,
                    re.MULTILINE)
  assert 'main.py' in info
  assert any(name != 'main.py' for name in info) == verbose, info
