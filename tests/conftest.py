"""Test setup: 8 fake CPU devices (for sharding tests) and full precision.

The suite runs on two workers (pytest-xdist, `-n 2` in setup.cfg): the
tests are mostly XLA compilations, which use one core each. The workers
and the programs the tests start (the multi-host and CLI tests) share one
persistent compilation cache, so a program compiled once is a cache hit
everywhere else.
"""

import os
import pathlib
import shutil
import tempfile

# Must be set before jax initialises its backends.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# XLA's optimisation passes cost the tiny test programs far more compile
# time than they save at run time (about 3x faster compiles). Set in the
# environment, so that the programs the tests start compile the same way
# (and an equal program is one cache entry for all of them).
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', 'true')
# One cache per test run, shared by its workers (xdist names the run) and,
# through the environment, by the processes the tests start.
_RUN = os.environ.get('PYTEST_XDIST_TESTRUNUID')
# The process that starts the run (not an xdist worker) removes what the
# run cached when it ends, unless the cache was the user's own.
_OWNS_CACHES = ('JAX_COMPILATION_CACHE_DIR' not in os.environ and
                'PYTEST_XDIST_WORKER' not in os.environ)
_CACHE = os.environ.get('JAX_COMPILATION_CACHE_DIR') or str(
    pathlib.Path(tempfile.gettempdir()) /
    f'cgt_jax_xla_cache_{_RUN}' if _RUN else tempfile.mkdtemp(
        prefix='cgt_jax_xla_cache_'))
os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

# The suite is an entry point too: XLA:CPU's kernels as the programs use
# them (`cgt_jax.runtime.process.configure` does this and more).
from cgt_jax.runtime import xla_cpu  # noqa: E402

xla_cpu.add_default_flags()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')
# Many tests compile the same tiny programs: the persistent cache above
# turns the repeats into cache hits (XLA:CPU compiles are slow here). Every
# program is cached: a tiny run compiles ~140 of 0.2 s each (inits, eager
# weight surgery), together more than its train steps.
jax.config.update('jax_compilation_cache_dir', _CACHE)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
# Orbax's saves as the entry points make them on CPU.
from cgt_jax.runtime import process  # noqa: E402

process.save_from_one_replica_on_cpu()
from cgt_jax.training import steps  # noqa: E402

# Beside the compilation cache, whose name every process of the run shares;
# also what cgt_jax caches by default (decoded image folders), so that the
# suite writes nothing into the user's ~/.cache.
_EVAL_CACHE = pathlib.Path(_CACHE + '_eval')
os.environ.setdefault('CGT_JAX_CACHE', str(_EVAL_CACHE))


@pytest.fixture(autouse=True)
def fresh_train_steps_around_monkeypatches(request):
  """A test that monkeypatches may patch what a train step calls while it
  traces: it neither reuses a jitted step (`steps.make_train_step` keeps
  them per equal setup) nor leaves its own to later tests."""
  patches = 'monkeypatch' in request.fixturenames
  if patches:
    steps.clear_train_step_cache()
  yield
  if patches:
    steps.clear_train_step_cache()


@pytest.fixture(scope='session')
def eval_cache() -> pathlib.Path:
  """One evaluation cache for the run's tiny jobs (the domain classifier and
  reference statistics of the same tiny data), shared by the workers."""
  _EVAL_CACHE.mkdir(exist_ok=True)
  return _EVAL_CACHE


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _OWNS_CACHES:
    shutil.rmtree(_CACHE, ignore_errors=True)
    shutil.rmtree(_EVAL_CACHE, ignore_errors=True)


@pytest.fixture(scope='session')
def random_source(tmp_path_factory) -> pathlib.Path:
  """A saved random source model (G and D) of `tests.test_train.tiny_config`
  for its 4 source classes: what transfer tests start from when they need
  a source model but not a pretrained one (pretraining compiles a program
  of its own)."""
  # Imported here: importing the test modules before the flags above are
  # set would initialise jax too early.
  from cgt_jax.transfer import stages
  from tests.test_train import SOURCE
  from tests.test_train import save_models
  from tests.test_train import tiny_config
  return save_models(
      stages.fresh_models(tiny_config(), len(SOURCE)),
      tmp_path_factory.mktemp('random_source') / 'model')
