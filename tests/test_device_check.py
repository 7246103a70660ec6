"""benchmarks/device_check.sh, the prepared accelerator check, runs end to
end here with small shapes (so it cannot rot before a device is lent)."""

import importlib.util
import json
import os
import pathlib
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgt_jax.experiments import step_timing
from cgt_jax.runtime import process
from cgt_jax.runtime import xla_cpu
from cgt_jax.transfer import methods
from tests.test_hypermod_method import hypermod_config
from tests.test_train import TARGET
from tests.test_train import tiny_config

_REPO = pathlib.Path(__file__).parents[1]


def _load():
  path = _REPO / 'benchmarks' / 'device_check.py'
  spec = importlib.util.spec_from_file_location('device_check', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_small_check_runs_end_to_end_with_the_pytorch_twin(tmp_path):
  pytest.importorskip('torch')
  # One CPU device, as on a one-GPU machine; tiny programs compile faster
  # without XLA's optimisation passes (as in the rest of the suite).
  env = dict(os.environ, XLA_FLAGS='', JAX_DISABLE_MOST_OPTIMIZATIONS='true')
  run = subprocess.run([
      'bash',
      str(_REPO / 'benchmarks' / 'device_check.sh'), '--small',
      '--twin_device=cpu', f'--out={tmp_path}'
  ],
                       capture_output=True,
                       text=True,
                       env=env,
                       check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  rows = json.loads((tmp_path / 'device_check.json').read_text())
  assert [(r['stage'], r['dtype']) for r in rows] == [('transfer', 'float32'),
                                                      ('transfer', 'bfloat16'),
                                                      ('pretrain', 'float32'),
                                                      ('transfer', 'bfloat16'),
                                                      ('transfer',
                                                       'bfloat16 + remat')]
  for row in rows:
    assert row['real_images_per_s'] > 0 and row['gflop_per_iteration'] > 0
    assert row['peak_memory_gib'] > 0
    assert row['mfu'] == '-'  # a CPU has no peak in the table
  # The CIFAR rows carry the twin's same-device ratio; ImageNet has no twin.
  assert all(r['x_pytorch_twin'] > 0 for r in rows[:3])
  assert all('x_pytorch_twin' not in r for r in rows[3:])
  table = (tmp_path / 'device_check.md').read_text()
  assert table == run.stdout.split('\n\n(device_check')[0] + '\n'
  assert '[5/5] done' in run.stderr  # progress as it goes
  # Rows of one architecture and stage share their models: CIFAR transfer,
  # CIFAR pretraining, ImageNet transfer.
  assert run.stderr.count('building the models') == 3


def test_utilisation_is_against_the_peak_of_the_rows_dtype():
  check = _load()
  row = {'dtype': 'bfloat16', 'gflop_per_s': 98900.0}
  assert check.with_utilisation(row, 'NVIDIA H100 80GB HBM3', 1,
                                0)['mfu'] == '10.0%'
  row = {'dtype': 'float32', 'gflop_per_s': 98900.0}
  assert check.with_utilisation(row, 'NVIDIA H200', 2, 0)['mfu'] == '10.0%'
  assert check.peak_tflops('NVIDIA H100 PCIe', 'bfloat16') == 756.0
  assert check.peak_tflops('TPU v5 lite', 'float32') == 197.0
  assert check.peak_tflops('cpu', 'float32') is None
  assert check.peak_tflops('cpu', 'float32', override=10.0) == 10.0


def test_flops_of_scanned_chunks_count_every_chunk(monkeypatch):
  """On GPU/TPU the chunk loops are `lax.scan`s, whose body XLA's cost
  analysis counts once: the table counts an unrolled twin instead."""
  config = tiny_config()
  config.transfer.num_d_accumulations = 4
  # Built once for both rows, as device_check does: the first row's
  # donated state must not take the models' buffers with it (on the
  # suite's 8 devices as on one).
  built = step_timing.stage_models(config, 'transfer',
                                   step_timing.source_models(config))
  unrolled = step_timing.measure(
      config, 'transfer', 1, built=built)['gflop_per_iteration']
  monkeypatch.setattr(xla_cpu, 'unrolled_loops_pay', lambda: False)
  counted = []
  flops = step_timing._flops  # pylint: disable=protected-access
  monkeypatch.setattr(
      step_timing, '_flops',
      lambda costed: counted.append(flops(costed)) or counted[-1])
  scanned = step_timing.measure(
      config, 'transfer', 1, built=built)['gflop_per_iteration']
  compiled_scan = counted[0]
  assert compiled_scan < 0.6 * unrolled * 1e9  # the undercount
  assert abs(scanned - unrolled) < 0.05 * unrolled


def test_a_check_cut_short_leaves_the_rows_it_finished(tmp_path, monkeypatch):
  """A device's time limit can end the check mid-table: with --out, the
  rows measured so far are on disk, whole."""
  check = _load()
  monkeypatch.setattr(process, 'configure', lambda: None)  # the suite's
  monkeypatch.setattr(step_timing, 'source_models', lambda *args: 'source')
  monkeypatch.setattr(step_timing, 'stage_models', lambda *args: 'models')
  measured = []

  def measure(config, stage, *args):
    if len(measured) == 2:
      raise RuntimeError('the device time is up')
    measured.append({'stage': stage, 'dtype': config.dtype, 'gflop_per_s': 1.0})
    return measured[-1]

  monkeypatch.setattr(step_timing, 'measure', measure)
  with pytest.raises(RuntimeError, match='time is up'):
    check.main(['--small', '--no_twin', f'--out={tmp_path}'])
  rows = json.loads((tmp_path / 'device_check.json').read_text())
  assert [(r['stage'], r['dtype']) for r in rows] == [('transfer', 'float32'),
                                                      ('transfer', 'bfloat16')]
  table = (tmp_path / 'device_check.md').read_text().splitlines()
  assert len(table) == 2 + 2 and 'bfloat16' in table[-1]  # header, rule
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      'device_check.json', 'device_check.md'
  ]


def _models(g_variables, d_variables=None):
  return methods.Models('G', 'D', g_variables, d_variables or {})


def test_timed_models_are_traced_and_filled_not_computed():
  """The rows time random weights: a model's build is only traced (no
  init compiles), its parameters drawn N(0, 0.02), the rest ones."""
  tracers = []

  def build():
    computed = jnp.full((4000,), 3.0) * 2
    tracers.append(isinstance(computed, jax.core.Tracer))
    g_variables = {'params': {'w': computed}, 'sn': {'u': computed}}
    d_variables = {'params': {'k': computed[:6].reshape(2, 3)}}
    return _models(g_variables, d_variables)

  models = step_timing._with_random_values(build)  # pylint: disable=protected-access
  assert tracers == [True] and models.generator == 'G'
  w = np.asarray(models.g_variables['params']['w'])
  assert w.shape == (4000,) and abs(w.mean()) < 2e-3
  assert 0.019 < w.std() < 0.021
  assert np.all(np.asarray(models.g_variables['sn']['u']) == 1)
  assert models.d_variables['params']['k'].shape == (2, 3)


def test_a_build_that_needs_values_is_built_as_it_is():
  """Hyper-Modulation's self-alignment logs its losses while it builds:
  such a build cannot be traced and runs for real."""

  def build():
    computed = jnp.arange(3.0) + 1
    float(computed[0])  # a value, as a progress line reads it
    return _models({'params': {'w': computed}})

  models = step_timing._with_random_values(build)  # pylint: disable=protected-access
  np.testing.assert_array_equal(models.g_variables['params']['w'], [1, 2, 3])


def test_an_unconditional_method_is_timed_from_a_one_class_source():
  """Hyper-Modulation transfers an unconditional source, as its runs do."""
  source = step_timing.source_models(hypermod_config())
  assert source.generator.num_classes == 1
  assert not source.discriminator.projection
  models, labels = step_timing.stage_models(hypermod_config(), 'transfer',
                                            source)
  assert labels == (1, 1 + len(TARGET))
  assert models.generator.num_labels == 1 + len(TARGET)
