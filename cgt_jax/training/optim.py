"""Optimizers with frozen parameters, and the generator EMA.

Frozen parameters go through `optax.set_to_zero` inside `multi_transform`:
their update is exactly zero and Adam keeps no moments for them. (Beware
`optax.masked(adam, mask)`: it passes masked-out gradients through
unchanged, which does not freeze.)
"""

import dataclasses
import functools
from typing import Any, Optional

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


@dataclasses.dataclass(frozen=True)
class FrozenTree:
  """A pytree of Python scalars as a hashable value (its structure and
  leaves)."""
  treedef: Any
  leaves: tuple

  @classmethod
  def of(cls, tree) -> 'FrozenTree':
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return cls(treedef, tuple(leaves))

  def tree(self):
    return jax.tree_util.tree_unflatten(self.treedef, self.leaves)


@dataclasses.dataclass(frozen=True)
class AdamRecipe:
  """`adam`, optionally `with_frozen` or `with_learning_rate_factors`, held
  as the values it is built from.

  optax transformations are closures, equal only to themselves; recipes
  are equal when their values are. Two stages set up from the same config
  then hold equal `StageSetup`s, and the train step jitted for one serves
  the other without tracing it again (`training.steps.make_train_step`).
  Give at most one of `trainable` (bools) and `factors` (floats).
  """
  learning_rate: float
  b1: float
  b2: float
  eps: float
  trainable: Optional[FrozenTree] = None
  factors: Optional[FrozenTree] = None

  @functools.cached_property
  def transformation(self) -> optax.GradientTransformation:
    make = lambda lr: adam(lr, self.b1, self.b2, self.eps)
    if self.factors is not None:
      return with_learning_rate_factors(make, self.learning_rate,
                                        self.factors.tree())
    if self.trainable is not None:
      return with_frozen(make(self.learning_rate), self.trainable.tree())
    return make(self.learning_rate)

  def init(self, params):
    return self.transformation.init(params)

  def update(self, updates, state, params=None):
    return self.transformation.update(updates, state, params)


def ema_update(ema, current, decay: float, step, start: int):
  """BigGAN's EMA: a copy until `start`, then decay * ema + (1 - decay) * new.

  Applied to every generator variable (params, BN statistics, SN vectors),
  as BigGAN-PyTorch's `utils.ema` runs over the whole state dict.
  """
  decay = jnp.where(step < start, 0.0, decay)
  return jax.tree_util.tree_map(lambda e, c: decay * e + (1 - decay) * c, ema,
                                current)
