"""Test setup: 8 fake CPU devices (for sharding tests) and full precision."""

import os

# Must be set before jax initialises its backends.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')
