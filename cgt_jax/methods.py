"""Transfer methods as configuration: knowledge propagation and its baselines.

`config.method` names how the `transfer` stage teaches the source BigGAN
the new classes. Every method runs through the same loop, losses, data and
evaluation; a method only decides which model the stage starts from and
which parameters train:

| method      | generator the stage trains            | G trains          | D |
|-------------|---------------------------------------|-------------------|---|
| scratch     | a fresh BigGAN of the M new classes   | everything        | fresh, all |
| transfergan | the source + M class-table rows       | everything        | all |
| freezed     | as transfergan                        | everything        | lowest k blocks frozen |
| bsa         | the source + per-class free BN vectors | those vectors (+ z projection) | all |
| kp          | the source + knowledge propagation    | the KP layers     | all |

D always keeps the source weights (except for `scratch`) and gets a fresh
projection table for the new classes, as cGANTransfer's D does. The
new-class starting points the literature leaves open are options in
`config.method_options` (see cgt_jax/baselines.py).

Variants are named sets of config switches on `kp`: the paper's Table 2
ablations and `kp_finetune` (KP, then fine-tuning, sec. 5.4 / Table 3).
Any of these names is a valid `config.method`.
"""

import copy
import dataclasses
from typing import Any


class MethodError(ValueError):
  """An unknown method or an option it cannot take; names the fix."""


@dataclasses.dataclass(frozen=True)
class Method:
  """A way to learn the new classes.

  Attributes:
    name: the `config.method` value.
    summary: one line for tables and --help.
    generator: 'scratch' (fresh BigGAN of the new classes), 'extended'
      (plain BigGAN with N + M class rows), 'kp' (knowledge propagation) or
      'bsa' (KP layer without propagation).
    g_mask: the `cgt_jax.trainable.STAGE_GROUPS` rule of its transfer stage.
    freezes_d_blocks: freeze the lowest `method_options.frozen_d_blocks`
      discriminator blocks (FreezeD).
    switches: `(dotted config key, value)` pairs the method sets; a value
      may be a function of the current value.
  """
  name: str
  summary: str
  generator: str
  g_mask: str
  freezes_d_blocks: bool = False
  switches: tuple = ()

  @property
  def uses_source(self) -> bool:
    return self.generator != 'scratch'

  @property
  def can_finetune(self) -> bool:
    """Fine-tuning (sec. 5.4) needs the KP layer's structure."""
    return self.generator in ('kp', 'bsa')


_NO_KP_REGULARISERS = (('transfer.similarity_l1', 0.0), ('transfer.residual_l2',
                                                         0.0))

METHODS = {
    m.name: m for m in (
        Method(
            'scratch',
            'BigGAN trained from scratch on the new classes only',
            'scratch',
            'all',
            switches=_NO_KP_REGULARISERS),
        Method(
            'transfergan',
            'fine-tune all of G and D (Wang et al. 2018)',
            'extended',
            'all',
            switches=_NO_KP_REGULARISERS),
        Method(
            'freezed',
            'fine-tune with the lowest D blocks frozen (Mo et al. 2020)',
            'extended',
            'all',
            freezes_d_blocks=True,
            switches=_NO_KP_REGULARISERS),
        Method(
            'bsa',
            'frozen G, free per-class BN scale/shift (Noguchi & Harada 2019)',
            'bsa',
            'bsa',
            switches=_NO_KP_REGULARISERS + (('model.use_residuals', True),)),
        Method('kp', 'knowledge propagation (cGANTransfer, ours)', 'kp', 'bn'),
    )
}


def _add_finetune(stages):
  return tuple(stages) + (() if 'finetune' in stages else ('finetune',))


@dataclasses.dataclass(frozen=True)
class Variant:
  """A named set of switches on a method (an ablation or a stage chain)."""
  base: str
  summary: str
  switches: tuple


_FROZEN_PRIOR = ('transfer.update_prior', False)
_NO_RESIDUALS = ('model.use_residuals', False)
VARIANTS = {
    'kp_frozen_prior_no_res':
        Variant('kp', 'Table 2: frozen prior, without residuals',
                (_FROZEN_PRIOR, _NO_RESIDUALS)),
    'kp_frozen_prior':
        Variant('kp', 'Table 2: frozen prior, with residuals',
                (_FROZEN_PRIOR,)),
    'kp_no_res':
        Variant('kp', 'Table 2: tunable prior, without residuals',
                (_NO_RESIDUALS,)),
    'kp_shared_w_no_res':
        Variant('kp',
                'Table 2: shared similarity W, tunable prior, w/o residuals',
                (('model.shared_similarity', True), _NO_RESIDUALS)),
    'kp_no_reg':
        Variant('kp', 'Table 2: final architecture without regularisation',
                _NO_KP_REGULARISERS),
    'kp_no_l1':
        Variant('kp', 'Table 2: final architecture without the L1 term',
                (('transfer.similarity_l1', 0.0),)),
    'kp_no_l2':
        Variant('kp', 'Table 2: final architecture without the L2 term',
                (('transfer.residual_l2', 0.0),)),
    'kp_finetune':
        Variant(
            'kp', 'kp, then fine-tuning all but similarity and prior '
            '(sec. 5.4)', (('stages', _add_finetune),)),
}
TABLE2_ABLATIONS = ('kp_frozen_prior_no_res', 'kp_frozen_prior', 'kp_no_res',
                    'kp_shared_w_no_res', 'kp_no_reg', 'kp_no_l1', 'kp_no_l2',
                    'kp')
NAMES = tuple(METHODS) + tuple(VARIANTS)


def get(name: str) -> Method:
  """The method `name` is (a variant's base method)."""
  if name in VARIANTS:
    name = VARIANTS[name].base
  if name not in METHODS:
    raise MethodError(f'config.method={name!r} is not a method: use one of '
                      f'{list(NAMES)}')
  return METHODS[name]


def summary(name: str) -> str:
  return VARIANTS[name].summary if name in VARIANTS else get(name).summary


def _set(config, dotted: str, value: Any):
  """Sets `config.a.b` from 'a.b'; a callable value maps the old value."""
  *parents, leaf = dotted.split('.')
  node = config
  for part in parents:
    node = node[part]
  if callable(value):
    value = value(node[leaf])
  node[leaf] = value


def resolve(config):
  """A copy of `config` with its method's switches and overrides applied.

  Order: the method's switches, then the variant's, then the user's
  `config.method_overrides.<base method>` and `.<variant>` (fields of the
  transfer stage). Stages that do not apply to the method are dropped:
  `pretrain` for scratch, `finetune` for the methods that train all of G.
  Applying `resolve` twice gives the same config.
  """
  name = config.method
  method = get(name)
  config = copy.deepcopy(config)
  switches = method.switches
  if name in VARIANTS:
    switches += VARIANTS[name].switches
  for key, value in switches:
    _set(config, key, value)
  overrides = config.get('method_overrides', {})
  for key in dict.fromkeys((method.name, name)):
    if key in overrides:
      config.transfer.update(overrides[key])
  # Stages that do not apply: scratch has no source to pretrain, and the
  # baselines that train every G weight have nothing left to fine-tune.
  skipped = {'pretrain'} if not method.uses_source else set()
  if not method.can_finetune:
    skipped.add('finetune')
  config.stages = tuple(s for s in config.stages if s not in skipped)
  return config
