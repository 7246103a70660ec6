"""Transfer methods: knowledge propagation and its baselines, as objects.

`config.method` names how the `transfer` stage teaches the source BigGAN
the new classes. `resolve` turns it, once, into a `Method` object that owns
everything that differs between methods; the loop, data, losses' plumbing
and evaluation are shared:

| method      | the transfer stage trains               | G trains       | D |
|-------------|-----------------------------------------|----------------|---|
| scratch     | a fresh BigGAN of the M new classes     | everything     | fresh, all |
| transfergan | the source + M class-table rows         | everything     | all |
| freezed     | as transfergan                          | everything     | low k frozen |
| bsa         | the source + free per-class BN vectors  | those vectors  | all |
| kp          | the source + knowledge propagation      | the KP layers  | all |
| minegan     | the source + a miner per class in front | miners, then   | all |
|             | of G (two stages)                       | miners + G     |     |
| hypermod    | an UNCONDITIONAL source + class network | class network, | all but |
|             | and per-layer hypernetworks modulating  | hypernetworks  | the RGB |
|             | its block convs (self-aligned first)    |                | layers; K heads |

A method object says:

* `models(source, context)`: the generator and discriminator the transfer
  stage starts from, with their variables (weight surgery:
  `cgt_jax.transfer.surgery`); a module in front of G, an unconditional
  source or another D head is a matter of what this returns;
* `generator_groups(stage)` / `frozen_d_blocks` / `frozen_d_layers`: what
  trains (`cgt_jax.transfer.groups`), and `generator_lr_factors(stage)`
  the groups' learning-rate factors;
* `losses(stage_config, adversarial)`: its D and G losses
  (`cgt_jax.training.losses`; `adversarial` is the run's choice);
* `stages(requested)`: which stages apply to it, and
  `stage_config(stage, config)` the settings each trains with;
* `continual`: whether it extends an already extended generator again
  (kp, bsa: `models.extensions`; the classes it knew become sources).

Adding a method is one subclass here (or a module beside it) plus its tests.
Variants are named sets of config switches on a method: the paper's Table 2
ablations and `kp_finetune` (KP, then fine-tuning, sec. 5.4 / Table 3).
"""

import copy
import dataclasses
import functools
import pathlib
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from cgt_jax.models import biggan
from cgt_jax.models import bsa
from cgt_jax.models import extensions
from cgt_jax.models import hypermod
from cgt_jax.models import kp
from cgt_jax.models import minegan
from cgt_jax.models import variables as variables_lib
from cgt_jax.training import losses as losses_lib
from cgt_jax.transfer import groups
from cgt_jax.transfer import self_alignment
from cgt_jax.transfer import surgery

STAGES = ('pretrain', 'transfer', 'finetune')


class MethodError(ValueError):
  """An unknown method or an option it cannot take; names the fix."""


@dataclasses.dataclass
class Models:
  """A stage's networks and the variables they start from."""
  generator: Any
  discriminator: Any
  g_variables: dict
  d_variables: dict


@dataclasses.dataclass(frozen=True)
class BuildContext:
  """What a method needs to build its models.

  Attributes:
    num_new: M, the new classes.
    seed: the run's seed (fresh initialisation).
    dtype: the compute dtype of the modules.
    fresh: `num_classes -> Models`, the configured BigGAN from scratch.
    stage_dir: the stage's folder, where a method keeps what it computes
      before training (Hyper-Modulation's self-alignment), or None.
  """
  num_new: int
  seed: int
  dtype: Any
  fresh: Callable
  stage_dir: Optional[pathlib.Path] = None


def fresh_variables(generator, discriminator, seed: int) -> tuple:
  """Freshly initialised variables of both networks (jitted init)."""
  labels = jnp.full((2,), generator.num_labels - 1, jnp.int32)
  z = jnp.zeros((2, generator.dim_z))
  res = discriminator.resolution
  key_g, key_d = jax.random.split(jax.random.key(seed))
  g_vars = _jitted_init(generator, key_g, z, labels)
  d_vars = _jitted_init(discriminator, key_d, jnp.zeros((2, res, res, 3)),
                        labels)
  return g_vars, d_vars


# The module is a static argument: modules are frozen dataclasses, so an
# equal architecture reuses the traced and compiled init (a comparison
# builds the same networks for each method).
@functools.partial(jax.jit, static_argnums=0)
def _jitted_init(module, key, *inputs):
  return module.init(key, *inputs)


@dataclasses.dataclass(frozen=True)
class Method:
  """A way to learn the new classes (subclasses fill in the hooks).

  Attributes:
    name: the `config.method` value of the base method.
    summary: one line for tables and --help.
  """
  name: str
  summary: str

  # Whether the transfer stage starts from a pretrained source model.
  uses_source = True
  # Whether a fine-tuning stage (sec. 5.4) can follow: it needs a
  # new-class layer to keep apart from the source generator.
  can_finetune = False
  # The adversarial loss when `config.loss` is '' (`losses.ADVERSARIAL`).
  default_loss = 'hinge'
  # The source form it transfers: conditional (N classes) or one class
  # (`config.model.conditional`); a comparison pretrains what each needs.
  conditional_source = True
  # Whether it can extend an already extended generator again, every class
  # it knows a source (continual extension, `models.extensions`).
  continual = False

  @classmethod
  def from_config(cls, name: str, summary: str, config) -> 'Method':
    """The method with its options read from a configured config."""
    del config
    return cls(name, summary)

  def check(self, config) -> None:
    """Raises MethodError for options that cannot work, naming the fix."""
    del config

  def stages(self, requested: tuple) -> tuple:
    """The requested stages that apply to this method, in order."""
    dropped = set()
    if not self.uses_source:
      dropped.add('pretrain')  # nothing to pretrain
    if not self.can_finetune:
      dropped.add('finetune')  # no new-class layer to fine-tune around
    return tuple(s for s in requested if s not in dropped)

  def models(self, source: Optional[Models], context: BuildContext) -> Models:
    """The transfer stage's networks and starting variables."""
    raise NotImplementedError

  def generator_groups(self, stage: str) -> frozenset:
    """The generator groups (`transfer.groups`) that train in `stage`
    ('transfer', or 'finetune' when `can_finetune`)."""
    raise NotImplementedError

  def generator_lr_factors(self, stage: str) -> Optional[dict]:
    """None (every trained group at the stage's g_lr), or `{group: factor}`
    of the groups that train at `factor * g_lr` in `stage`."""
    del stage
    return None

  def frozen_d_blocks(self) -> int:
    """How many of the lowest D blocks stay frozen in the transfer stage."""
    return 0

  def frozen_d_layers(self) -> tuple:
    """Path prefixes of single D layers frozen in the transfer stage."""
    return ()

  def losses(self, stage_config, adversarial):
    """The D and G losses of the method's stages (`training.losses`):
    the run's `adversarial` loss plus the method's own terms."""
    del stage_config
    return adversarial

  def stage_config(self, stage: str, config):
    """The settings `stage` trains with (`config[stage]` unless the method
    derives them, as MineGAN derives its two stages from `transfer`)."""
    return config[stage]

  def _extended(self, source: Models, generator, context: BuildContext,
                g_variables: Callable) -> Models:
    """Source G/D grown to the new classes; `g_variables(fresh_g)` builds
    G's starting variables, D gets a fresh projection table (`new_embed`),
    as cGANTransfer's D does (extended again: fresh rows for the newest
    classes after the rows it had)."""
    # An unconditional source D (no projection) gains one for the new
    # classes only.
    source_d = source.discriminator
    discriminator = source_d.clone(
        num_new_classes=source_d.num_new_classes + context.num_new,
        projection=True,
        source_projection=source_d.source_projection and source_d.projection,
        dtype=context.dtype)
    fresh_g, fresh_d = fresh_variables(generator, discriminator, context.seed)
    d_source = surgery.extend_new_class_projection(source.d_variables, fresh_d)
    d_vars = variables_lib.merge(d_source, fresh_d, 'discriminator')
    return Models(generator, discriminator, g_variables(fresh_g), d_vars)


def _with_new_classes(source: Models, form, context: BuildContext):
  """The source G with `context.num_new` new classes of `form`; a source
  already extended keeps its newest classes as an earlier extension
  (continual extension, `models.extensions`)."""
  source_g = source.generator
  earlier = tuple(source_g.extensions)
  if source_g.num_new_classes:
    earlier += (extensions.Extension(source_g.num_new_classes,
                                     source_g.new_classes),)
  return source_g.clone(
      num_new_classes=context.num_new,
      new_classes=form,
      extensions=earlier,
      dtype=context.dtype)


def _from_source(source: Models, fresh: dict) -> dict:
  """G's starting variables: the source's copied in, the KP prior filled
  from every class the source knows (`surgery`)."""
  if source.generator.num_new_classes:
    return surgery.extend_again(source.generator, source.g_variables, fresh)
  return surgery.init_from_source(source.g_variables, fresh)


@dataclasses.dataclass(frozen=True)
class Scratch(Method):
  """A fresh BigGAN of the new classes only (labels 0..M-1)."""
  uses_source = False

  def models(self, source, context):
    del source
    return context.fresh(context.num_new)

  def generator_groups(self, stage):
    return groups.SOURCE


@dataclasses.dataclass(frozen=True)
class ClassExtension(Method):
  """TransferGAN: a plain BigGAN with M more class rows, all of G and D
  training. FreezeD is this with its lowest D blocks frozen."""
  new_class_init: str = 'mean'
  frozen_blocks: int = 0

  @classmethod
  def from_config(cls, name, summary, config):
    return cls(name, summary, config.method_options.new_class_init)

  def frozen_d_blocks(self):
    return self.frozen_blocks

  def models(self, source, context):
    num_source = source.generator.num_classes
    generator = source.generator.clone(
        num_classes=num_source + context.num_new, dtype=context.dtype)
    return self._extended(
        source, generator, context, lambda fresh: surgery.extend_class_tables(
            source.g_variables, fresh, num_source, self.new_class_init))

  def generator_groups(self, stage):
    return groups.SOURCE


@dataclasses.dataclass(frozen=True)
class FrozenDiscriminatorBlocks(ClassExtension):
  """FreezeD: TransferGAN with `method_options.frozen_d_blocks` of the
  lowest D blocks (each with the attention after it) frozen."""

  @classmethod
  def from_config(cls, name, summary, config):
    options = config.method_options
    return cls(name, summary, options.new_class_init, options.frozen_d_blocks)

  def check(self, config):
    blocks = len(biggan.D_ARCH.get(config.model.resolution, ((), ()))[1])
    if not 0 <= self.frozen_blocks <= blocks:
      raise MethodError(
          f'config.method_options.frozen_d_blocks={self.frozen_blocks}: '
          f'the {config.model.resolution} px discriminator has {blocks} '
          f'blocks; freeze 0..{blocks} of them')


@dataclasses.dataclass(frozen=True)
class FreeVectors(Method):
  """BSA: a frozen G, free per-class BN scale/shift vectors."""
  bsa_start: str = 'mean'
  can_finetune = True
  continual = True

  @classmethod
  def from_config(cls, name, summary, config):
    return cls(name, summary, config.method_options.bsa_start)

  def models(self, source, context):
    generator = _with_new_classes(source, bsa.FreeVectors(), context)

    def variables(fresh):
      return surgery.start_bsa_vectors(
          _from_source(source, fresh), self.bsa_start, generator.sn_eps)

    return self._extended(source, generator, context, variables)

  def generator_groups(self, stage):
    if stage == 'finetune':
      return groups.SOURCE | groups.BSA_VECTORS
    return groups.BSA_VECTORS


@dataclasses.dataclass(frozen=True)
class KnowledgePropagation(Method):
  """cGANTransfer: new classes' BN parameters propagated from the source
  classes' (similarity, updatable prior, residuals; eq. 5-7)."""
  options: kp.KPOptions = kp.KPOptions()
  update_prior: bool = True
  can_finetune = True
  continual = True

  @classmethod
  def from_config(cls, name, summary, config):
    return cls(
        name,
        summary,
        kp.KPOptions(config.model.use_residuals,
                     config.model.shared_similarity),
        update_prior=config.transfer.update_prior)

  def models(self, source, context):
    generator = _with_new_classes(source, self.options, context)
    return self._extended(source, generator, context,
                          lambda fresh: _from_source(source, fresh))

  def generator_groups(self, stage):
    if stage == 'finetune':  # paper sec. 5.4: all but similarity and prior
      return groups.SOURCE | {'z_projection', 'residual'}
    if self.update_prior:
      return groups.KNOWLEDGE_PROPAGATION
    return groups.KNOWLEDGE_PROPAGATION - {'prior'}

  def losses(self, stage_config, adversarial):
    return losses_lib.KnowledgePropagationLosses(stage_config.similarity_l1,
                                                 stage_config.residual_l2,
                                                 adversarial)


@dataclasses.dataclass(frozen=True)
class LatentMining(Method):
  """MineGAN (Wang et al. 2020): an affine miner per new class in front of
  the source G (`models.minegan`), mined first with G frozen (the
  `transfer` stage), then trained together with G (the `finetune` stage).

  The run's transfer budget, `transfer.num_steps`, is split: the first
  `method_options.minegan.mining_steps` iterations mine, the rest train
  miner and G; both stages otherwise keep the transfer stage's settings,
  with MineGAN's learning rates and Adam eps (`method_options.minegan`).
  """
  options: Any = None  # config.method_options.minegan
  can_finetune = True
  default_loss = 'non_saturating'

  @classmethod
  def from_config(cls, name, summary, config):
    return cls(name, summary, config.method_options.minegan)

  def check(self, config):
    budget, mining = config.transfer.num_steps, self.options.mining_steps
    if not 0 < mining < budget:
      raise MethodError(
          f'config.method_options.minegan.mining_steps={mining} must be '
          f'between 1 and config.transfer.num_steps - 1 = {budget - 1} '
          '(MineGAN mines for the first mining_steps of the transfer '
          'budget, then trains G too): lower it or raise '
          'config.transfer.num_steps')
    overridden = {'g_lr', 'd_lr', 'adam_eps'} & set(
        config.get('method_overrides', {}).get(self.name, {}))
    if overridden:
      raise MethodError(
          f'config.method_overrides.{self.name} sets {sorted(overridden)}, '
          'which MineGAN takes from config.method_options.minegan '
          '(mining_g_lr, mining_d_lr, g_lr, d_lr, adam_eps): set them there')
    targets = len(config.data.target_classes)
    if self.options.single_target and targets > 1:
      raise MethodError(
          'config.method_options.minegan.single_target=True is the '
          f'published set-up for ONE target class, but {targets} are '
          'configured: set config.data.target_classes to one class or '
          'single_target=False')

  def stages(self, requested):
    if 'transfer' in requested:  # stage 2 always follows the mining stage
      requested = _add_finetune(requested)
    return super().stages(requested)

  def stage_config(self, stage, config):
    if stage not in ('transfer', 'finetune'):
      return config[stage]
    options, derived = self.options, copy.deepcopy(config.transfer)
    mining = stage == 'transfer'
    derived.num_steps = (
        options.mining_steps if mining else config.transfer.num_steps -
        options.mining_steps)
    derived.g_lr = options.mining_g_lr if mining else options.g_lr
    derived.d_lr = options.mining_d_lr if mining else options.d_lr
    derived.adam_eps = options.adam_eps
    return derived

  def models(self, source, context):
    if self.options.single_target and context.num_new != 1:
      raise MethodError(
          'config.method_options.minegan.single_target=True needs exactly '
          f'one target class, the data has {context.num_new}: keep one '
          'class or set single_target=False')
    generator = source.generator.clone(
        num_new_classes=context.num_new,
        new_classes=minegan.Miners(),
        dtype=context.dtype)
    models = self._extended(
        source, generator, context,
        lambda fresh: surgery.init_from_source(source.g_variables, fresh))
    if self.options.single_target:  # the authors' D: no class projection
      models = dataclasses.replace(
          models, discriminator=models.discriminator.clone(projection=False))
    return models

  def generator_groups(self, stage):
    if stage == 'finetune':
      return groups.SOURCE | groups.MINER
    return groups.MINER


# The layers of BigGAN's D that read the RGB pixels: block 0's 3x3 conv1
# and its 1x1 shortcut (StyleGAN's from_rgb, which the authors freeze).
D_RGB_LAYERS = ('block_0/conv1/', 'block_0/conv_sc/')
HYPERMOD_STARTS = ('self_alignment', 'closed_form')


@dataclasses.dataclass(frozen=True)
class HyperModulation(Method):
  """Hyper-Modulation (Laria et al. 2022): an unconditional source turned
  conditional by a class network and per-layer hypernetworks that modulate
  both 3x3 convolutions of every G block (`models.hypermod`); the rest of
  G frozen. They start self-aligned to the source (no real data,
  `transfer.self_alignment`) or in the closed form. D: a head of K logits
  replaces its output layer, its RGB layers are frozen, and its loss gains
  R1 and Barlow Twins on two augmented views (`losses.
  HyperModulationLosses`). Options: `config.method_options.hypermod`.
  """
  options: Any = None  # config.method_options.hypermod
  default_loss = 'non_saturating'
  conditional_source = False

  @classmethod
  def from_config(cls, name, summary, config):
    return cls(name, summary, config.method_options.hypermod)

  def check(self, config):
    if config.model.conditional:
      raise MethodError(
          'config.method=hypermod transfers an UNCONDITIONAL source: set '
          'config.model.conditional=False (the pretrain stage then trains '
          'one on all source classes) and give a one-class '
          'source_checkpoint, if any')
    if self.options.start not in HYPERMOD_STARTS:
      raise MethodError(
          f'config.method_options.hypermod.start={self.options.start!r} is '
          f'not valid: use one of {list(HYPERMOD_STARTS)}')
    ins, outs, _ = biggan.G_ARCH.get(config.model.resolution, ((), (), ()))
    for conv_in, conv_out in zip(ins + outs, outs + outs):
      try:
        hypermod.check_rank(self.options.rank, conv_in * config.model.g_ch,
                            conv_out * config.model.g_ch)
      except ValueError as error:
        raise MethodError(
            f'config.method_options.hypermod.rank: {error}') from None

  def models(self, source, context):
    if source.generator.num_classes != 1:
      raise MethodError(
          'hypermod needs an unconditional (one-class) source, not one of '
          f'{source.generator.num_classes} classes: pretrain one with '
          'config.model.conditional=False')
    generator = source.generator.clone(
        num_new_classes=context.num_new,
        new_classes=hypermod.Modulation(self.options.rank),
        dtype=context.dtype)
    discriminator = source.discriminator.clone(
        num_new_classes=context.num_new,
        projection=False,
        source_projection=False,
        class_heads=True,
        dtype=context.dtype)
    fresh_g, fresh_d = fresh_variables(generator, discriminator, context.seed)
    g_vars = self._starting_variables(source, generator, fresh_g, context)
    # The K-logit head replaces the source's output layer.
    source_d = {
        collection: {
            k: v for k, v in tree.items() if k != 'linear'
        } for collection, tree in source.d_variables.items()
    }
    d_vars = variables_lib.merge(source_d, fresh_d, 'discriminator')
    return Models(generator, discriminator, g_vars, d_vars)

  def _starting_variables(self, source, generator, fresh, context):
    closed_form = self.options.start == 'closed_form'

    def started(model, fresh_vars):
      return surgery.start_modulated_convs(
          surgery.init_from_source(source.g_variables, fresh_vars),
          model.sn_eps, closed_form)

    if closed_form:
      return started(generator, fresh)
    dummy = generator.clone(num_new_classes=1)
    dummy_vars = started(
        dummy,
        fresh_variables(dummy, source.discriminator, context.seed)[0])
    o = self.options
    cache = context.stage_dir and context.stage_dir / 'self_alignment'
    aligned, _ = self_alignment.cached_or_aligned(
        cache,
        dummy,
        dummy_vars,
        num_steps=o.alignment_steps,
        batch_size=o.alignment_batch_size,
        lr=o.alignment_lr,
        class_network_factor=o.alignment_class_network_lr_factor,
        seed=context.seed,
        log_every=o.alignment_log_every)
    return self_alignment.to_classes(aligned, started(generator, fresh))

  def generator_groups(self, stage):
    return groups.HYPER_MODULATION

  def generator_lr_factors(self, stage):
    return {'class_network': self.options.class_network_lr_factor}

  def frozen_d_layers(self):
    return D_RGB_LAYERS

  def losses(self, stage_config, adversarial):
    o = self.options
    return losses_lib.HyperModulationLosses(adversarial, o.r1_weight,
                                            o.contrastive_weight,
                                            o.off_diagonal_weight)


# ----------------------------------------------------------------------------
# The registry: methods, and variants (named config switches on a method).
# ----------------------------------------------------------------------------

METHODS = {
    'scratch': (Scratch, 'BigGAN trained from scratch on the new classes only'),
    'transfergan':
        (ClassExtension, 'fine-tune all of G and D (Wang et al. 2018)'),
    'freezed': (FrozenDiscriminatorBlocks,
                'fine-tune with the lowest D blocks frozen (Mo et al. 2020)'),
    'bsa': (FreeVectors,
            'frozen G, free per-class BN scale/shift (Noguchi & Harada 2019)'),
    'kp': (KnowledgePropagation, 'knowledge propagation (cGANTransfer, ours)'),
    'minegan': (LatentMining,
                'mine G\'s latent and class inputs, then fine-tune (Wang et '
                'al. 2020)'),
    'hypermod': (HyperModulation,
                 'class hypernetworks modulating an unconditional G\'s convs '
                 '(Laria et al. 2022)'),
}


def _add_finetune(stages):
  return tuple(stages) + (() if 'finetune' in stages else ('finetune',))


@dataclasses.dataclass(frozen=True)
class Variant:
  """A named set of switches on a method (an ablation or a stage chain).

  Attributes:
    base: the method it configures.
    summary: one line for tables.
    switches: `(dotted config key, value)` pairs; a value may be a function
      of the current value.
    continues: in a comparison of methods, the method whose transferred
      model this variant continues from (its own stages run after that
      method's transfer), or None.
  """
  base: str
  summary: str
  switches: tuple
  continues: Optional[str] = None


_NO_KP_REGULARISERS = (('transfer.similarity_l1', 0.0), ('transfer.residual_l2',
                                                         0.0))
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
            'kp',
            'kp, then fine-tuning all but similarity and prior (sec. 5.4)',
            (('stages', _add_finetune),),
            continues='kp'),
}
TABLE2_ABLATIONS = ('kp_frozen_prior_no_res', 'kp_frozen_prior', 'kp_no_res',
                    'kp_shared_w_no_res', 'kp_no_reg', 'kp_no_l1', 'kp_no_l2',
                    'kp')
NAMES = tuple(METHODS) + tuple(VARIANTS)
# Method groups of the comparison command.
GROUPS = {
    'baselines': tuple(METHODS),
    'table2': TABLE2_ABLATIONS,
    'all': NAMES,
}


def _check_name(name: str):
  if name not in NAMES:
    raise MethodError(f'config.method={name!r} is not a method: use one of '
                      f'{list(NAMES)}')


def base_name(name: str) -> str:
  """The method a name (method or variant) configures."""
  _check_name(name)
  return VARIANTS[name].base if name in VARIANTS else name


def summary(name: str) -> str:
  _check_name(name)
  return VARIANTS[name].summary if name in VARIANTS else METHODS[name][1]


def conditional_source(name: str) -> bool:
  """Whether the method (or variant) transfers a conditional source model
  (else an unconditional one-class model: Hyper-Modulation)."""
  return METHODS[base_name(name)][0].conditional_source


def continues_from(name: str) -> Optional[str]:
  """The method a variant's comparison run continues from (else None)."""
  _check_name(name)
  return VARIANTS[name].continues if name in VARIANTS else None


def _set(config, dotted: str, value: Any):
  """Sets `config.a.b` from 'a.b'; a callable value maps the old value."""
  *parents, leaf = dotted.split('.')
  node = config
  for part in parents:
    node = node[part]
  if callable(value):
    value = value(node[leaf])
  node[leaf] = value


def configure(config):
  """A copy of `config` with its method's switches and overrides applied.

  Order: the variant's switches, then the user's
  `config.method_overrides.<base method>` and `.<variant>` (fields of the
  transfer stage). Applying it twice gives the same config.
  """
  name = config.method
  base = base_name(name)
  config = copy.deepcopy(config)
  for key, value in VARIANTS[name].switches if name in VARIANTS else ():
    _set(config, key, value)
  overrides = config.get('method_overrides', {})
  for key in dict.fromkeys((base, name)):
    if key in overrides:
      config.transfer.update(overrides[key])
  return config


def build(config) -> Method:
  """The method object of a configured config (`configure`)."""
  base = base_name(config.method)
  cls, text = METHODS[base]
  method = cls.from_config(base, text, config)
  method.check(config)
  return method


def names_of(text: str) -> list:
  """Method names from a comma list with groups expanded, each once."""
  names = []
  for item in filter(None, (t.strip() for t in text.split(','))):
    names.extend(GROUPS.get(item, (item,)))
  unknown = [n for n in names if n not in NAMES]
  if unknown or not names:
    raise MethodError(
        f'--methods: unknown {unknown or "(empty)"}; use names from '
        f'{list(NAMES)} or the groups {list(GROUPS)}')
  return list(dict.fromkeys(names))
