"""cgt_jax: conditional GAN transfer with knowledge propagation, in JAX/Flax."""

__version__ = '0.1.0'
