"""Which generator parameters train in each stage, as readable rules.

Every parameter path (`'/'`-joined) must match exactly one group below; a
stage then names the groups it trains. `generator_mask` raises on a
parameter that no group (or more than one) claims, so adding a layer
without deciding whether it trains is an error, not a silent default.

The stages reproduce the authors' `requires_grad` toggling:

* `pretrain`: a BigGAN from scratch; every source parameter trains.
* `bn` (transfer, the paper's main setting): only the knowledge-propagation
  layers (similarity, prior, z projection, residuals); the source generator
  is frozen. `update_prior=False` freezes the prior too (Table 2 ablation).
* `ft` (fine-tuning, sec. 5.4): everything except similarity and prior.

and the baselines' (cgt_jax/methods.py):

* `all`: every parameter (Scratch, TransferGAN, FreezeD).
* `bsa`: only the new classes' free BN vectors (the residuals of a KP layer
  without propagation) and, with hierarchical z, the z projection.

`discriminator_mask` freezes FreezeD's lowest discriminator blocks.
"""

import re
from typing import Mapping

from flax import traverse_util

GENERATOR_GROUPS = {
    'shared_embedding': r'^shared/',
    'z_linear': r'^linear/',
    'convolutions': r'^block_\d+/conv(1|2|_sc)/',
    'source_bn': r'^block_\d+/bn\d+/(gain|bias)/',
    'attention': r'^attention_\d+/',
    'output': r'^output_(bn|conv)/',
    'similarity': r'(/kp/|^kp_)similarity_(gamma|beta)/',
    'prior': r'/kp/prior_(gamma|beta)/',
    'z_projection': r'/kp/z_proj_(gamma|beta)/',
    'residual': r'/kp/residual_(gamma|beta)/',
}
_SOURCE = frozenset({
    'shared_embedding', 'z_linear', 'convolutions', 'source_bn', 'attention',
    'output'
})
_KP = frozenset({'similarity', 'prior', 'z_projection', 'residual'})
STAGE_GROUPS = {
    'pretrain': _SOURCE,
    'all': _SOURCE,
    'bn': _KP,
    'ft': _SOURCE | {'z_projection', 'residual'},
    'bsa': frozenset({'z_projection', 'residual'}),
}


def trainable_groups(stage: str, update_prior: bool = True) -> frozenset:
  """The generator groups that train in `stage`."""
  if stage not in STAGE_GROUPS:
    raise ValueError(f'unknown stage {stage!r}: use one of '
                     f'{sorted(STAGE_GROUPS)}')
  groups = STAGE_GROUPS[stage]
  return groups if update_prior else groups - {'prior'}


def group_of(path: str, groups: Mapping[str, str] = GENERATOR_GROUPS) -> str:
  """The one group whose rule matches `path` (error if none or several)."""
  hits = [name for name, rule in groups.items() if re.search(rule, path)]
  if len(hits) != 1:
    what = 'no group' if not hits else f'several groups {hits}'
    raise ValueError(f'parameter {path!r} matches {what} of '
                     'cgt_jax.trainable.GENERATOR_GROUPS: add or fix a rule')
  return hits[0]


def generator_mask(params: Mapping,
                   stage: str,
                   update_prior: bool = True) -> dict:
  """A pytree like `params` with True where the parameter trains."""
  train = trainable_groups(stage, update_prior)
  flat = traverse_util.flatten_dict(dict(params), sep='/')
  return traverse_util.unflatten_dict(
      {path: group_of(path) in train for path in flat}, sep='/')


def discriminator_mask(params: Mapping, frozen_blocks: int = 0) -> dict:
  """True where a discriminator parameter trains (FreezeD: the lowest blocks
  and the attention that follows them stay frozen)."""

  def trains(path):
    match = re.match(r'^(block|attention)_(\d+)/', path)
    return not (match and int(match.group(2)) < frozen_blocks)

  flat = traverse_util.flatten_dict(dict(params), sep='/')
  return traverse_util.unflatten_dict({p: trains(p) for p in flat}, sep='/')
