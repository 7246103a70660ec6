"""Test setup: 8 fake CPU devices (for sharding tests) and full precision."""

import os
import tempfile

# Must be set before jax initialises its backends.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# The suite is an entry point too: XLA:CPU's kernels as the programs use
# them (`cgt_jax.runtime.process.configure` does this and more).
from cgt_jax.runtime import xla_cpu  # noqa: E402

xla_cpu.add_default_flags()

import jax  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')
# Many tests compile the same tiny programs: a session-wide persistent cache
# turns the repeats into cache hits (XLA:CPU compiles are slow here).
jax.config.update('jax_compilation_cache_dir',
                  tempfile.mkdtemp(prefix='cgt_jax_xla_cache_'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
# The test models are tiny: XLA's optimisation passes cost far more compile
# time than they save at run time (about 3x faster compiles).
jax.config.update('jax_disable_most_optimizations', True)
