"""The XLA:CPU flag cgt_jax sets on import (YNNPACK convolutions)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from cgt_jax.runtime import xla_cpu

FLAG = '--xla_cpu_experimental_ynn_fusion_type=dot,reduce'


def test_adds_the_flag_after_existing_ones():
  environ = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  assert xla_cpu.add_default_flags(environ, jaxlib_version='0.10.2')
  assert environ['XLA_FLAGS'] == (
      f'--xla_force_host_platform_device_count=8 {FLAG}')
  assert xla_cpu.library_convolutions(environ)
  # Idempotent: a second call (a re-import) adds nothing.
  assert not xla_cpu.add_default_flags(environ, jaxlib_version='0.10.2')
  assert environ['XLA_FLAGS'].count('ynn') == 1


@pytest.mark.parametrize('environ,version', [({
    'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type=eltwise'
}, '0.10.2'), ({
    'CGT_JAX_XLA_DEFAULTS': '0'
}, '0.10.2'), ({}, '0.11.0'), ({}, '0.4.30'), ({}, '')])
def test_leaves_xla_flags_alone(environ, version):
  """The user's own value, the opt-out and unverified jaxlibs (where an
  unknown flag would abort XLA at start-up) all win."""
  before = dict(environ)
  assert not xla_cpu.add_default_flags(environ, jaxlib_version=version)
  assert environ == before


@pytest.mark.parametrize(
    'flags,expected', [('', False), (FLAG, True), (f'{FLAG},eltwise', True),
                       ('--xla_cpu_experimental_ynn_fusion_type=reduce', False),
                       ('--xla_cpu_experimental_ynn_fusion_type=+dot', True),
                       ('--xla_cpu_experimental_ynn_fusion_type=-dot', False),
                       ('--xla_cpu_experimental_xnn_fusion_type=dot', False)])
def test_library_convolutions_reads_the_flag(flags, expected):
  assert xla_cpu.library_convolutions({'XLA_FLAGS': flags}) is expected


_CONV = """
import importlib, os, pkgutil, sys, numpy as np
import cgt_jax, jax
import orbax.checkpoint as ocp
from jax._src import xla_bridge
# The whole library: no environment change, and no JAX array at import time
# (it would start the backend before `configure` sets the flag).
for module in pkgutil.walk_packages(cgt_jax.__path__, 'cgt_jax.'):
  importlib.import_module(module.name)
from cgt_jax.models import layers
from cgt_jax.runtime import process
assert 'XLA_FLAGS' not in os.environ, os.environ['XLA_FLAGS']
assert not xla_bridge.backends_are_initialized(), 'an import started JAX'
saves = lambda: ocp.type_handlers.get_type_handler(jax.Array)
assert saves()._use_replica_parallel, 'an import changed orbax'
process.configure()  # what every entry point does first
# On CPU, orbax saves replicated arrays from one replica.
assert not saves()._use_replica_parallel
x = jax.random.normal(jax.random.key(0), (2, 8, 8, 160))
k = jax.random.normal(jax.random.key(1), (3, 3, 160, 160)) * 0.05
y = jax.jit(lambda x, k: layers.conv2d_same(x, k, 'float32'))(x, k)
np.save(sys.argv[1], np.asarray(y))
print(os.environ.get('XLA_FLAGS', ''), file=sys.stderr)
"""


def test_entry_point_set_up_starts_xla_with_the_flag(tmp_path):
  """In a fresh process: importing the library changes no environment
  variable and starts no JAX backend; `process.configure` sets the flag before the backend starts,
  XLA accepts it, and convolutions agree with Eigen's to float rounding."""
  outputs = {}
  for name, opt_out in (('ynn', '1'), ('eigen', '0')):
    path = tmp_path / f'{name}.npy'
    result = subprocess.run(
        [sys.executable, '-c', _CONV, str(path)],
        env={
            **{
                k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'
            }, 'CGT_JAX_XLA_DEFAULTS': opt_out,
            'JAX_PLATFORMS': 'cpu'
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (FLAG in result.stderr) is (name == 'ynn')
    outputs[name] = np.load(path)
  np.testing.assert_allclose(
      outputs['ynn'], outputs['eigen'], rtol=1e-5, atol=1e-5)


def test_convolution_kernels_names_the_library_in_xla_flags(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  assert xla_cpu.convolution_kernels() == 'Eigen'
  monkeypatch.setenv('XLA_FLAGS', f'{xla_cpu.YNN_FUSION_FLAG}=dot,reduce')
  assert xla_cpu.convolution_kernels() == 'YNNPACK'
