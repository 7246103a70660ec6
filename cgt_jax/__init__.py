"""cgt_jax: conditional GAN transfer with knowledge propagation, in JAX/Flax."""

__version__ = '0.1.0'

from cgt_jax import xla_cpu as _xla_cpu

# Before any JAX computation starts XLA's CPU backend (see xla_cpu.py).
_xla_cpu.add_default_flags()
