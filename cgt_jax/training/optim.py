"""Optimizers with frozen parameters, and the generator EMA.

Frozen parameters go through `optax.set_to_zero` inside `multi_transform`:
their update is exactly zero and Adam keeps no moments for them. (Beware
`optax.masked(adam, mask)`: it passes masked-out gradients through
unchanged, which does not freeze.)
"""

import jax
import jax.numpy as jnp
import optax

TRAIN, FREEZE = 'train', 'freeze'


def adam(learning_rate: float, b1: float, b2: float, eps: float):
  """PyTorch-style Adam as BigGAN uses it (beta1 0, beta2 0.999).

  optax applies eps to the bias-corrected second moment, PyTorch 1.x to the
  uncorrected one; the two differ only in the first few hundred steps and
  only through eps (1e-6 / 1e-8).
  """
  return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


def with_frozen(optimizer, trainable_mask):
  """`optimizer` on parameters where `trainable_mask` is True, zero elsewhere.

  Args:
    optimizer: an optax transformation.
    trainable_mask: a pytree of bools shaped like the parameters.
  """
  labels = jax.tree_util.tree_map(lambda t: TRAIN
                                  if t else FREEZE, trainable_mask)
  return optax.multi_transform({
      TRAIN: optimizer,
      FREEZE: optax.set_to_zero()
  }, labels)


def with_learning_rate_factors(make_optimizer, learning_rate: float, factors):
  """`make_optimizer(learning_rate * f)` on each parameter whose factor f
  is not 0, zero updates where it is 0 (frozen).

  Hyper-Modulation trains its class network at 1e-3 times the
  hypernetworks' rate. Parameters with factor 1 get the `TRAIN` label, so
  a tree of only 0 and 1 gives the optimizer `with_frozen` gives.

  Args:
    make_optimizer: learning rate -> optax transformation.
    learning_rate: the rate of factor 1.
    factors: a pytree of floats shaped like the parameters.
  """
  label = lambda f: FREEZE if f == 0 else TRAIN if f == 1 else f'{TRAIN}_x{f:g}'
  labels = jax.tree_util.tree_map(label, factors)
  optimizers = {FREEZE: optax.set_to_zero()}
  for factor in set(jax.tree_util.tree_leaves(factors)) - {0}:
    optimizers[label(factor)] = make_optimizer(learning_rate * factor)
  return optax.multi_transform(optimizers, labels)


def ema_update(ema, current, decay: float, step, start: int):
  """BigGAN's EMA: a copy until `start`, then decay * ema + (1 - decay) * new.

  Applied to every generator variable (params, BN statistics, SN vectors),
  as BigGAN-PyTorch's `utils.ema` runs over the whole state dict.
  """
  decay = jnp.where(step < start, 0.0, decay)
  return jax.tree_util.tree_map(lambda e, c: decay * e + (1 - decay) * c, ema,
                                current)
