"""The train state (one pytree) and the static pieces a stage trains with."""

import dataclasses
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp

from cgt_jax.models import biggan
from cgt_jax.training import losses as losses_lib
from cgt_jax.training import optim


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training, replicated on every device.

  `g_state` holds the generator's `batch_stats` and `sn` collections,
  `d_state` the discriminator's `sn`; `g_ema` is `{}` when EMA is off.
  """
  step: jax.Array
  rng: jax.Array
  g_params: Any
  g_state: Any
  d_params: Any
  d_state: Any
  g_opt_state: Any
  d_opt_state: Any
  g_ema: Any

  def g_variables(self, ema: bool = False) -> dict:
    if ema and self.g_ema:
      return self.g_ema
    return {'params': self.g_params, **self.g_state}

  def d_variables(self) -> dict:
    return {'params': self.d_params, **self.d_state}


@dataclasses.dataclass(frozen=True)
class StageSetup:
  """Static description of one training stage (hashable, closed over by jit).

  Attributes:
    generator, discriminator: the Flax modules.
    g_optimizer, d_optimizer: `optim.AdamRecipe`s (frozen leaves masked;
      values, so that equal setups compare equal), or optax transformations.
    fake_labels: `(low, high)` global labels sampled for fakes: the labels
      of the classes the stage trains.
    batch_size: samples per D chunk and per G accumulation (global).
    num_d_steps: separate D updates per iteration.
    num_d_accumulations: chunks per D update.
    d_chunk_reduction: 'mean' (BigGAN: loss / accumulations) or 'sum' (the
      cGANTransfer CIFAR script: one update on the sum of its chunk losses).
    num_g_accumulations: chunks per G update (mean).
    losses: the stage's D and G losses (`training.losses`), as its method
      chose them (KP: hinge + eq. 7's regularisers).
    ema_decay, ema_start: G EMA (decay None: off).
    augment: the DiffAugment `Policy` applied to every image D sees in
      training (`training.diffaugment`), or None.
    kept_g_sn: '/'-joined paths of G's layers whose spectral-norm vector
      stays as it is in train-mode forwards (`config.frozen_sn` 'keep':
      the frozen layers).
  """
  generator: biggan.Generator
  discriminator: biggan.Discriminator
  g_optimizer: Any
  d_optimizer: Any
  fake_labels: tuple
  batch_size: int
  num_d_steps: int = 1
  num_d_accumulations: int = 1
  d_chunk_reduction: str = 'mean'
  num_g_accumulations: int = 1
  losses: Any = losses_lib.Hinge()
  ema_decay: Optional[float] = None
  ema_start: int = 0
  augment: Any = None
  kept_g_sn: frozenset = frozenset()

  @property
  def real_per_step(self) -> int:
    """Real images one iteration consumes."""
    return self.batch_size * self.num_d_steps * self.num_d_accumulations


def optimizers(stage_config, g_trainable, d_trainable=None, g_factors=None):
  """`(g_optimizer, d_optimizer)` for a stage config (see configs/).

  `g_trainable`/`d_trainable`: bool pytrees like the parameters, True where
  a parameter trains (`cgt_jax.transfer.groups`); `d_trainable=None`: all of D.
  `g_factors`: None, or a float pytree of G's learning-rate factors (0
  where frozen), which then replaces `g_trainable`.
  """
  if g_factors is not None:
    g_opt = _adam(stage_config, stage_config.g_lr, factors=g_factors)
  else:
    g_opt = _adam(stage_config, stage_config.g_lr, trainable=g_trainable)
  d_opt = _adam(stage_config, stage_config.d_lr, trainable=d_trainable)
  return g_opt, d_opt


def _adam(stage_config, learning_rate, trainable=None, factors=None):
  frozen = lambda tree: None if tree is None else optim.FrozenTree.of(tree)
  return optim.AdamRecipe(learning_rate, stage_config.adam_b1,
                          stage_config.adam_b2, stage_config.adam_eps,
                          frozen(trainable), frozen(factors))


def create(setup: StageSetup, g_variables: dict, d_variables: dict,
           seed: int) -> TrainState:
  """A fresh train state (step 0, new optimizer moments) from variables."""
  g_params = g_variables['params']
  g_state = {k: v for k, v in g_variables.items() if k != 'params'}
  d_params = d_variables['params']
  d_state = {k: v for k, v in d_variables.items() if k != 'params'}
  g_ema = {}
  if setup.ema_decay is not None:
    # Copies: sharing buffers with g_params would break donation.
    g_ema = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True),
                                   dict(g_variables))
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      rng=jax.random.key_data(jax.random.key(seed)),
      g_params=g_params,
      g_state=g_state,
      d_params=d_params,
      d_state=d_state,
      g_opt_state=setup.g_optimizer.init(g_params),
      d_opt_state=setup.d_optimizer.init(d_params),
      g_ema=g_ema)
