"""cgt_jax: conditional GAN transfer with knowledge propagation, in JAX/Flax.

Importing the package has no side effects: the programs that start from
it (`cgt_jax.main`, tools/) set up the process (`cgt_jax.runtime.process`).
"""

__version__ = '0.1.0'
