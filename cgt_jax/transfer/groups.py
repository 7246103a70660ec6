"""Which parameters train: every generator parameter in exactly one group.

A method (`cgt_jax.transfer.methods`) names, per stage, the groups that
train; `generator_mask` turns that into the boolean tree optax freezes by.
A parameter that no group (or more than one) claims is an error, so adding
a layer without deciding whether it trains fails loudly instead of
silently training or freezing it.

Groups of the source BigGAN are matched on BigGAN's own layer names; the
new-class layers' groups come from the layers themselves (`kp.part_of`,
`bsa.part_of`), the one home of their names.

The authors' `requires_grad` toggling, in these terms:

* pretraining: `SOURCE` (everything of a BigGAN);
* KP transfer (their stage `BN`): `KNOWLEDGE_PROPAGATION` (similarity,
  prior, z projection, residuals), minus the prior for the "frozen prior"
  ablation;
* fine-tuning (their stage `FT`): all but similarity and prior.

MineGAN: `MINER` while mining, then `SOURCE | MINER`.

A continually extended generator (`models.extensions`) keeps the layers
of its earlier extensions in `EARLIER_CLASSES`, which no stage trains: the
classes learned before keep their images.
"""

import re
from typing import Mapping

from flax import traverse_util

from cgt_jax.models import bsa
from cgt_jax.models import extensions
from cgt_jax.models import hypermod
from cgt_jax.models import kp
from cgt_jax.models import minegan

# Groups of a plain BigGAN generator, by layer name.
SOURCE_GROUPS = {
    'shared_embedding': r'^shared/',
    'z_linear': r'^linear/',
    'convolutions': r'^block_\d+/conv(1|2|_sc)/',
    'source_bn': r'^block_\d+/bn\d+/(gain|bias)/',
    'attention': r'^attention_\d+/',
    'output': r'^output_(bn|conv)/',
}
# Groups of the new-class layers.
_KP_GROUPS = {
    kp.Part.SIMILARITY: 'similarity',
    kp.Part.PRIOR: 'prior',
    kp.Part.Z_PROJECTION: 'z_projection',
    kp.Part.RESIDUAL: 'residual',
}
_BSA_GROUPS = {
    kp.Part.RESIDUAL: 'class_vectors',
    kp.Part.Z_PROJECTION: 'z_projection',
}

SOURCE = frozenset(SOURCE_GROUPS)
KNOWLEDGE_PROPAGATION = frozenset(_KP_GROUPS.values())
BSA_VECTORS = frozenset(_BSA_GROUPS.values())
MINER = frozenset({'miner'})  # MineGAN's miners in front of G
# Hyper-Modulation: the class network and the per-layer hypernetworks.
HYPER_MODULATION = frozenset({'class_network', 'hypernetworks'})
# The frozen new-class layers of earlier extensions (continual extension).
EARLIER_CLASSES = frozenset({'earlier_classes'})
ALL = frozenset().union(SOURCE, KNOWLEDGE_PROPAGATION, BSA_VECTORS, MINER,
                        HYPER_MODULATION, EARLIER_CLASSES)


def group_of(path: str) -> str:
  """The one group a `/`-joined generator parameter path belongs to."""
  hits = []
  if extensions.index_of(path) is not None:
    hits.append('earlier_classes')
  part = kp.part_of(path)
  if part is not None:
    hits.append(_KP_GROUPS[part])
  part = bsa.part_of(path)
  if part is not None:
    hits.append(_BSA_GROUPS[part])
  if minegan.is_miner_parameter(path):
    hits.append('miner')
  part = hypermod.part_of(path)
  if part is not None:
    hits.append(part)
  hits += [
      name for name, rule in SOURCE_GROUPS.items() if re.search(rule, path)
  ]
  if len(hits) != 1:
    what = 'no group' if not hits else f'several groups {hits}'
    raise ValueError(f'parameter {path!r} matches {what} of '
                     'cgt_jax.transfer.groups: add or fix a rule')
  return hits[0]


def generator_mask(params: Mapping, trained: frozenset) -> dict:
  """A pytree like `params`, True where the parameter's group trains."""
  unknown = set(trained) - ALL
  if unknown:
    raise ValueError(f'unknown generator groups {sorted(unknown)}')
  flat = traverse_util.flatten_dict(dict(params), sep='/')
  return traverse_util.unflatten_dict(
      {path: group_of(path) in trained for path in flat}, sep='/')


def learning_rate_factors(params: Mapping, trained: frozenset,
                          factors: Mapping) -> dict:
  """A pytree like `params`: 0 where the parameter's group does not train,
  else `factors.get(group, 1)` (the group's learning-rate factor)."""
  mask = generator_mask(params, trained)
  flat = traverse_util.flatten_dict(dict(mask), sep='/')
  return traverse_util.unflatten_dict(
      {
          path: float(factors.get(group_of(path), 1.0)) if trains else 0.0
          for path, trains in flat.items()
      },
      sep='/')


def discriminator_mask(params: Mapping,
                       frozen_blocks: int = 0,
                       frozen_layers: tuple = ()) -> dict:
  """True where a discriminator parameter trains (FreezeD: the lowest blocks
  and the attention that follows them stay frozen; `frozen_layers`: path
  prefixes of single layers that stay frozen, e.g. 'block_0/conv1/')."""

  def trains(path):
    if path.startswith(tuple(frozen_layers)):
      return False
    match = re.match(r'^(block|attention)_(\d+)/', path)
    return not (match and int(match.group(2)) < frozen_blocks)

  flat = traverse_util.flatten_dict(dict(params), sep='/')
  return traverse_util.unflatten_dict({p: trains(p) for p in flat}, sep='/')


def count_trained(params: Mapping, mask: Mapping) -> int:
  """Scalars of `params` whose mask entry is True."""
  flat = traverse_util.flatten_dict(dict(params), sep='/')
  flat_mask = traverse_util.flatten_dict(dict(mask), sep='/')
  return int(sum(v.size for k, v in flat.items() if flat_mask[k]))


def frozen_sn_layers(variables: Mapping, mask: Mapping) -> frozenset:
  """'/'-joined paths of the spectrally normalised layers (`sn/<layer>/u`)
  none of whose parameters train under `mask`."""
  flat_mask = traverse_util.flatten_dict(dict(mask), sep='/')
  trains = {}
  for path, trained in flat_mask.items():
    layer = path.rsplit('/', 1)[0]
    trains[layer] = trains.get(layer, False) or trained
  sn = traverse_util.flatten_dict(dict(variables.get('sn', {})), sep='/')
  layers = {path.rsplit('/', 1)[0] for path in sn}
  return frozenset(layer for layer in layers if not trains.get(layer, False))
