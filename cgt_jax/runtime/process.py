"""What a cgt_jax program sets up when it starts, and only then.

Library modules change no environment variable and no global library state;
the entry points (`cgt_jax.main`, tools/, the notebook, the test suite's
conftest) call `configure` once, before the first JAX computation:

* XLA:CPU's faster convolution kernels (`xla_cpu.add_default_flags`);
* TensorFlow (which tfds imports when it is installed) kept off the GPUs
  that JAX uses;
* on the CPU backend, orbax saves each replicated array from one replica
  (`save_from_one_replica_on_cpu`);
* absl logging: cgt_jax's INFO lines (progress, evaluations) on process 0,
  other libraries' only from WARNING on (orbax logs every save), and no
  C++ banners, unless `verbose`;
* optionally `jax.distributed.initialize()` for multi-host runs.
"""

import logging as python_logging
import os

from absl import logging

from cgt_jax.runtime import xla_cpu

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def configure(distributed: bool = False,
              verbose: bool = False,
              **distributed_args):
  """Sets the process up for cgt_jax (call before any JAX computation).

  Args:
    distributed: call `jax.distributed.initialize(**distributed_args)`
      first: on TPU pods and SLURM/MPI clusters JAX finds every argument
      itself; elsewhere pass `coordinator_address`, `num_processes` and
      `process_id` (None values are left to JAX).
    verbose: also show other libraries' INFO lines and TensorFlow's and
      XLA's C++ banners (hidden otherwise: a run's console is its own).
  """
  xla_cpu.add_default_flags()
  if not verbose:
    # Where TensorFlow is installed, orbax's paths (etils) import it: no
    # C++ INFO lines from it or XLA, and no oneDNN banner (TF 2.21 prints
    # it through absl's C++ logging, which TF_CPP_MIN_LOG_LEVEL does not
    # reach; cgt_jax computes nothing with TensorFlow, so its oneDNN
    # kernels do not matter). Read when the libraries load: set before.
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
    os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  # Before JAX picks its backend: its probing (e.g. "Unable to initialize
  # backend 'tpu'" on a CPU machine) is INFO that only --verbose shows.
  configure_logging(verbose, info=verbose)
  import jax  # pylint: disable=g-import-not-at-top
  if distributed:
    jax.distributed.initialize(**{
        k: v for k, v in distributed_args.items() if v is not None
    })
  if jax.default_backend() == 'gpu':
    _hide_gpus_from_tensorflow()
  save_from_one_replica_on_cpu()
  configure_logging(verbose)


def save_from_one_replica_on_cpu():
  """On the CPU backend, orbax's array handler saves a replicated array
  from one replica.

  Orbax splits each replicated array among its replicas, so that every
  accelerator writes a part. XLA:CPU's devices share one host memory, so
  there the split only adds an eager slice per array and device: with 8
  devices (the test suite's), a tiny run's saves made it 17% slower. The
  files are the same either way. GPU and TPU keep orbax's default.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() != 'cpu':
    return
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  # Orbax warns of every override; this one is on purpose.
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array,
        ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
        override=True)
  finally:
    logging.set_verbosity(verbosity)


def _hide_gpus_from_tensorflow():
  """TensorFlow would otherwise claim GPU memory JAX needs (tfds imports it,
  when installed, to prepare datasets)."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  tf.config.set_visible_devices([], 'GPU')


class _OnlyOurInfo(python_logging.Filter):
  """Lets INFO records through only from cgt_jax's own modules."""

  def filter(self, record):
    return (record.levelno >= python_logging.WARNING or
            record.pathname.startswith(_PACKAGE_DIR))


_FILTER = _OnlyOurInfo()


def configure_logging(verbose: bool = False, info=None):
  """absl logging at INFO on process 0 (cgt_jax's lines only unless
  `verbose`), WARNING elsewhere.

  `info`: log INFO lines or not; None: on process 0 only (asking JAX,
  which starts its backend).
  """
  logging.use_absl_handler()
  handler = logging.get_absl_handler()
  if verbose:
    handler.removeFilter(_FILTER)
  else:
    handler.addFilter(_FILTER)
  if info is None:
    import jax  # pylint: disable=g-import-not-at-top
    info = jax.process_index() == 0
  logging.set_verbosity(logging.INFO if info else logging.WARNING)
