"""What a cgt_jax program sets up when it starts, and only then.

Library modules change no environment variable and no global library state;
the entry points (`cgt_jax.main`, tools/, the notebook, the test suite's
conftest) call `configure` once, before the first JAX computation:

* XLA:CPU's faster convolution kernels (`xla_cpu.add_default_flags`);
* TensorFlow, which tfds and clu import, kept off the GPUs that JAX uses;
* absl logging: cgt_jax's INFO lines (progress, evaluations) on process 0,
  other libraries' only from WARNING on (orbax and clu log every save);
* optionally `jax.distributed.initialize()` for multi-host runs.
"""

import logging as python_logging
import os

from absl import logging

from cgt_jax.runtime import xla_cpu

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def configure(distributed: bool = False, **distributed_args):
  """Sets the process up for cgt_jax (call before any JAX computation).

  Args:
    distributed: call `jax.distributed.initialize(**distributed_args)`
      first: on TPU pods and SLURM/MPI clusters JAX finds every argument
      itself; elsewhere pass `coordinator_address`, `num_processes` and
      `process_id` (None values are left to JAX).
  """
  xla_cpu.add_default_flags()
  import jax  # pylint: disable=g-import-not-at-top
  if distributed:
    jax.distributed.initialize(**{
        k: v for k, v in distributed_args.items() if v is not None
    })
  if jax.default_backend() == 'gpu':
    _hide_gpus_from_tensorflow()
  configure_logging()


def _hide_gpus_from_tensorflow():
  """TensorFlow would otherwise claim GPU memory JAX needs (tfds and clu
  import it only for data and TensorBoard files)."""
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


def configure_logging():
  """absl logging at INFO for cgt_jax on process 0, WARNING elsewhere."""
  logging.use_absl_handler()
  logging.get_absl_handler().addFilter(_OnlyOurInfo())
  logging.set_verbosity(logging.WARNING)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    logging.set_verbosity(logging.INFO)
