"""One resolved plan per run, and one `StageSpec` per stage.

`resolve(config)` is the only place that reads `config.method` and decides
which stages run: it applies the method's switches, builds its `Method`
object (`cgt_jax.transfer.methods`), drops the stages that do not apply and
checks every value. `stage_spec` then describes one stage completely (its
networks, starting variables, masks, labels and the static training setup);
the loop, the evaluator and the export all read that one object.

* `pretrain`: a BigGAN from scratch on the N source classes.
* `transfer`: the networks the method builds from the source model.
* `finetune`: the transferred model, training what the method's
  fine-tuning groups say (KP: all of G but similarity and prior, sec. 5.4).
"""

import dataclasses
import pathlib
from typing import Any, Optional

import jax
import jax.numpy as jnp

from cgt_jax import default_config
from cgt_jax.data import datasets
from cgt_jax.data import pipeline
from cgt_jax.models import biggan
from cgt_jax.models import model_io
from cgt_jax.training import diffaugment
from cgt_jax.training import losses as losses_lib
from cgt_jax.training import state as state_lib
from cgt_jax.transfer import groups
from cgt_jax.transfer import methods
from cgt_jax.transfer import surgery


class ConfigError(ValueError):
  """A config value is invalid; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a run does, decided once from its config.

  Attributes:
    config: the config with the method's switches and overrides applied
      and the stages that apply to the method (`config.stages`).
    method: the transfer method.
    stages: the stages this run trains, in order (`pretrain` is left out
      when a source model is given).
    loss: the adversarial loss of the transfer and fine-tuning stages
      (`config.loss`, else the method's default; pretraining is BigGAN's
      hinge loss).
  """
  config: Any
  method: methods.Method
  stages: tuple
  loss: str = 'hinge'

  def stage_config(self, stage: str):
    """The settings `stage` trains with (the method may derive them)."""
    return self.method.stage_config(stage, self.config)

  @property
  def source_checkpoint(self) -> Optional[str]:
    return self.config.source_checkpoint or None

  @property
  def needs_source_data(self) -> bool:
    """Whether the run loads the source classes' images: to pretrain on
    them, or for the evaluation's domain classifier."""
    return 'pretrain' in self.stages or self.config.eval.get(
        'classifier_with_source', False)

  def target_first_label(self) -> Optional[int]:
    """The generator label of the first new class: N after N source
    classes, 0 for a model of the new classes only; None: the number of
    source classes the data lists (the run pretrains on them)."""
    if not self.method.uses_source:
      return 0
    if not self.config.model.conditional:
      return 1  # after the unconditional source's one class
    if self.source_checkpoint:
      arch = model_io.load_architecture(self.source_checkpoint)
      generator = model_io.build_generator(arch['generator'])
      if 'transfer' in self.stages:
        # After every class the source knows (continual extension: its
        # source classes and the classes it learned).
        return generator.num_labels
      return generator.first_new_label  # fine-tuning its newest classes
    return None


def resolve(config) -> Plan:
  """The run's plan; raises ConfigError (or MethodError) naming the fix."""
  try:
    config = methods.configure(config)
    method = methods.build(config)
  except methods.MethodError as error:
    raise ConfigError(str(error)) from None
  config.stages = method.stages(config.stages)
  _validate(config, method)
  trained = tuple(
      s for s in config.stages
      if not (s == 'pretrain' and config.source_checkpoint))
  return Plan(config, method, trained, config.loss or method.default_loss)


def _check_choice(name, value, choices):
  if value not in choices:
    raise ConfigError(f'config.{name}={value!r} is not valid: use one of '
                      f'{list(choices)}')


def _validate(config, method):
  """Raises ConfigError for values that cannot work, naming the fix."""
  chosen = list(config.stages)
  if not chosen:
    raise ConfigError("config.stages is empty: e.g. ('pretrain', 'transfer')")
  for stage in chosen:
    _check_choice('stages', stage, default_config.STAGES)
  order = [default_config.STAGES.index(s) for s in chosen]
  if order != sorted(set(order)):
    raise ConfigError(f'config.stages={tuple(chosen)} must be in the order '
                      'pretrain, transfer, finetune, each at most once')
  needs_model = chosen[0] == 'finetune' or method.uses_source
  if chosen[0] != 'pretrain' and needs_model and not config.source_checkpoint:
    raise ConfigError(
        f'stage {chosen[0]!r} needs a model to start from: add '
        "'pretrain' to config.stages or set config.source_checkpoint")
  # Every method option is checked, whichever method runs: a typo in one
  # that the chosen method ignores is still a mistake.
  options = config.method_options
  _check_choice('method_options.new_class_init', options.new_class_init,
                surgery.NEW_CLASS_INITS)
  _check_choice('method_options.bsa_start', options.bsa_start,
                surgery.BSA_STARTS)
  _check_choice('model.init', config.model.init, ('ortho', 'N02'))
  try:
    diffaugment.Policy.parse(config.get('augment', ''))
  except diffaugment.AugmentError as error:
    raise ConfigError(str(error)) from None
  _check_choice('finetune.start_from',
                config.finetune.get('start_from', 'best'), ('best', 'final'))
  _check_choice('model.resolution', config.model.resolution,
                sorted(biggan.G_ARCH))
  _check_choice('dtype', config.dtype, ('float32', 'bfloat16'))
  _check_choice('frozen_sn', config.get('frozen_sn', 'auto'), FROZEN_SN)
  _check_choice('loss', config.loss, ('',) + tuple(losses_lib.ADVERSARIAL))
  for stage in chosen:
    _validate_stage(stage, method.stage_config(stage, config),
                    config.eval.final)


def _validate_stage(stage, c, final_eval: bool):
  _check_choice(f'{stage}.d_chunk_reduction', c.d_chunk_reduction,
                ('mean', 'sum'))
  _check_choice(f'{stage}.export', c.get('export', 'final'), ('final', 'best'))
  if c.get('export', 'final') == 'best' and not (c.eval_every or final_eval):
    raise ConfigError(f"config.{stage}.export='best' needs evaluations: set "
                      f'config.{stage}.eval_every or config.eval.final=True, '
                      "or export 'final'")
  for key in ('num_steps', 'batch_size', 'num_d_steps', 'num_d_accumulations',
              'num_g_accumulations', 'log_every', 'checkpoint_every'):
    if c[key] <= 0:
      raise ConfigError(f'config.{stage}.{key}={c[key]} must be positive')
  try:
    pipeline.check_global_batch(c.batch_size, jax.device_count())
  except ValueError as error:
    raise ConfigError(f'config.{stage}.{error}') from None
  if not 0 <= c.ema_decay < 1:
    raise ConfigError(f'config.{stage}.ema_decay={c.ema_decay} must be in '
                      '[0, 1) (0 turns the EMA off)')


# ----------------------------------------------------------------------------
# One stage
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class StageSpec:
  """Everything one stage trains with, built once.

  Attributes:
    stage: 'pretrain', 'transfer' or 'finetune'.
    generator, discriminator: the Flax modules.
    g_variables, d_variables: the variables the stage starts from.
    g_trainable, d_trainable: bool trees like the parameters, True where a
      parameter trains.
    dataset: the real images of the classes the stage trains, with the
      generator's labels (`dataset.label_range`).
    setup: the static training description the jitted step closes over.
    model_classes: the generator's class names in label order, recorded
      with its exports; () when not known (a source model that does not
      record them, with no source class list in the config).
  """
  stage: str
  generator: Any
  discriminator: Any
  g_variables: dict
  d_variables: dict
  g_trainable: dict
  d_trainable: dict
  dataset: datasets.ClassDataset
  setup: state_lib.StageSetup
  model_classes: tuple = ()

  @property
  def class_names(self) -> list:
    return list(self.dataset.class_names)

  @property
  def label_range(self) -> tuple:
    """`(first, one past the last)` generator label the stage trains."""
    return self.dataset.label_range

  def trainable_counts(self) -> dict:
    """Scalars that train in each network (the parameter cost of a method)."""
    return {
        'generator':
            groups.count_trained(self.g_variables['params'], self.g_trainable),
        'discriminator':
            groups.count_trained(self.d_variables['params'], self.d_trainable),
    }


def compute_dtype(config):
  """The dtype of convolutions, matmuls and activations (`config.dtype`)."""
  return jnp.bfloat16 if config.dtype == 'bfloat16' else jnp.float32


UNCONDITIONAL = 'all source classes'  # the one class of an unconditional G


def fresh_models(config,
                 num_classes: int,
                 projection: bool = True) -> methods.Models:
  """A BigGAN G and D from scratch for `num_classes` (labels 0..K-1); D
  without its class projection when not `projection`."""
  m = config.model
  generator = biggan.Generator(
      resolution=m.resolution,
      num_classes=num_classes,
      ch=m.g_ch,
      dim_z=m.dim_z,
      shared_dim=m.shared_dim,
      hier=m.hier,
      attention=tuple(m.g_attention),
      weights_init=m.init,
      bn_eps=m.bn_eps,
      sn_eps=m.sn_eps,
      dtype=compute_dtype(config))
  discriminator = biggan.Discriminator(
      resolution=m.resolution,
      num_classes=num_classes,
      ch=m.d_ch,
      attention=tuple(m.d_attention),
      weights_init=m.init,
      sn_eps=m.sn_eps,
      projection=projection,
      dtype=compute_dtype(config))
  g_vars, d_vars = methods.fresh_variables(generator, discriminator,
                                           config.seed)
  return methods.Models(generator, discriminator, g_vars, d_vars)


def load_models(model_dir) -> methods.Models:
  """A model directory's networks (with a discriminator) and variables."""
  generator, discriminator, variables = model_io.load(model_dir)
  if discriminator is None:
    raise ConfigError(
        f'{model_dir} has no discriminator, which training needs: convert '
        'the source with --discriminator D.pth')
  return methods.Models(generator, discriminator, variables['generator'],
                        variables['discriminator'])


def _transfer_models(plan, data, previous, stage_dir) -> methods.Models:
  """The networks the transfer stage of `plan.method` starts from."""
  config, num_new = plan.config, data.target.num_classes
  context = methods.BuildContext(
      num_new=num_new,
      seed=config.seed,
      dtype=compute_dtype(config),
      fresh=lambda count: fresh_models(config, count),
      stage_dir=stage_dir)
  source = None
  if plan.method.uses_source:
    source = load_models(previous)
    _check_source(source.generator, previous, plan, data)
  return plan.method.models(source, context)


def _source_names(config, data) -> list:
  """The source classes the config names (or the run loaded), else []."""
  return list(config.data.source_classes) or data.source_names


def _check_source(generator, previous, plan, data):
  config = plan.config
  if not config.model.conditional:
    if generator.num_classes != 1:
      raise ConfigError(
          f'config.model.conditional=False needs an unconditional source, but '
          f'{previous} is a conditional BigGAN of {generator.num_classes} '
          'classes: give a one-class (unconditional) model, or pretrain '
          "one with 'pretrain' in config.stages")
    return
  if generator.num_new_classes and not plan.method.continual:
    raise ConfigError(
        f'{previous} already has {generator.num_new_classes} new classes: '
        f'config.method={config.method} starts from a plain BigGAN; extend it '
        'again with kp or bsa (continual extension) or fine-tune it (stage '
        'finetune)')
  recorded = model_io.recorded_classes(previous)
  taught = [n for n in data.target.class_names if n in recorded]
  if taught:
    raise ConfigError(
        f'{previous} already has the classes {taught}: remove them from '
        'config.data.target_classes')
  names = _source_names(config, data)
  known = generator.num_labels
  if names and len(names) != known:
    hint = (' (a one-class model is unconditional: set '
            'config.model.conditional=False)' if known == 1 else '')
    if known != generator.num_classes:
      hint = (f' ({generator.num_classes} source classes, then the '
              f'{known - generator.num_classes} it learned, in label order)')
    raise ConfigError(
        f'the source model {previous} has {known} classes but the config '
        f'names {len(names)} source classes: make config.data.source_classes '
        f'match the classes of the model{hint}')
  if recorded and names and names != recorded:
    wrong = next(i for i, (a, b) in enumerate(zip(names, recorded)) if a != b)
    raise ConfigError(
        f'config.data.source_classes[{wrong}] is {names[wrong]!r} but label '
        f'{wrong} of {previous} is {recorded[wrong]!r}: list the model\'s '
        'classes in label order (its architecture.json "classes")')


def _model_classes(stage, source_names, previous, generator, dataset) -> tuple:
  """The class names of a stage's generator in label order, when known:
  the model's own record (fine-tuning), or the source model's classes
  (recorded, else the config's when they add up) and the new ones; ()
  when they are not known."""
  if generator.num_labels == dataset.num_classes:  # the new classes only
    return tuple(dataset.class_names)
  recorded = model_io.recorded_classes(previous) if previous else []
  if stage == 'finetune' and len(recorded) == generator.num_labels:
    return tuple(recorded)
  known = (recorded if stage == 'transfer' else []) or list(source_names)
  if len(known) != generator.first_new_label:
    return ()
  return tuple(known) + tuple(dataset.class_names)


def _finetune_models(plan, data, previous) -> methods.Models:
  models = load_models(previous)
  if models.generator.num_new_classes != data.target.num_classes:
    raise ConfigError(
        f'{previous} has {models.generator.num_new_classes} new classes but '
        f'config.data.target_classes lists {data.target.num_classes}: '
        'fine-tune with the target classes the model was transferred to')
  dtype = compute_dtype(plan.config)
  return dataclasses.replace(
      models,
      generator=models.generator.clone(dtype=dtype),
      discriminator=models.discriminator.clone(dtype=dtype))


def stage_spec(stage: str,
               plan: Plan,
               data,
               previous,
               stage_dir: Optional[pathlib.Path] = None) -> StageSpec:
  """The complete description of `stage` (models built, masks computed).

  Args:
    stage: one of `plan.stages`.
    plan: the run's plan.
    data: the run's `splits.SplitData` (global labels).
    previous: the model directory the stage starts from (the previous
      stage's export or the source checkpoint); None for pretraining.
    stage_dir: the stage's folder, where a method may keep what it computes
      before training (None: nothing is kept).
  """
  if stage == 'pretrain':
    models, dataset = _pretrain_models(plan.config, data)
    classes = tuple(dataset.class_names)
  else:
    if stage == 'transfer':
      models = _transfer_models(plan, data, previous, stage_dir)
    else:
      models = _finetune_models(plan, data, previous)
    dataset = data.target
    classes = _model_classes(stage, _source_names(plan.config, data), previous,
                             models.generator, dataset)
  g_mask, d_mask, setup = training_setup(stage, plan, models,
                                         dataset.label_range)
  return StageSpec(stage, models.generator, models.discriminator,
                   models.g_variables, models.d_variables, g_mask, d_mask,
                   dataset, setup, classes)


def fresh_source(config, num_source_classes: int) -> methods.Models:
  """A source BigGAN from scratch: conditional on the source classes, or
  (`config.model.conditional` False) of one class, D without projection."""
  if config.model.conditional:
    return fresh_models(config, num_source_classes)
  return fresh_models(config, 1, projection=False)


def _pretrain_models(config, data) -> tuple:
  """The source BigGAN from scratch and what it trains on: every source
  class, or (`config.model.conditional` False) all of them as one class."""
  models = fresh_source(config, data.source.num_classes)
  if config.model.conditional:
    return models, data.source
  return models, data.source.as_one_class(UNCONDITIONAL)


def training_setup(stage: str, plan: Plan, models: methods.Models,
                   label_range: tuple) -> tuple:
  """`(g_trainable, d_trainable, StageSetup)` of `stage` on `models`, whose
  classes have the generator labels `label_range` (`[first, end)`).

  Pretraining trains a whole BigGAN with the hinge loss; the transfer and
  fine-tuning stages train what the method says, with its losses.
  """
  c = plan.stage_config(stage)
  frozen_layers, factors = (), None
  if stage == 'pretrain':
    trained, frozen, losses = groups.SOURCE, 0, losses_lib.Hinge()
  else:
    method = plan.method
    trained = method.generator_groups(stage)
    factors = method.generator_lr_factors(stage)
    frozen = method.frozen_d_blocks() if stage == 'transfer' else 0
    if stage == 'transfer':
      frozen_layers = method.frozen_d_layers()
    losses = method.losses(c, losses_lib.ADVERSARIAL[plan.loss]())
  g_params = models.g_variables['params']
  g_mask = groups.generator_mask(g_params, trained)
  if factors is not None:
    factors = groups.learning_rate_factors(g_params, trained, factors)
  d_mask = groups.discriminator_mask(models.d_variables['params'], frozen,
                                     frozen_layers)
  d_frozen = not all(jax.tree_util.tree_leaves(d_mask))
  g_opt, d_opt = state_lib.optimizers(c, g_mask, d_mask if d_frozen else None,
                                      factors)
  kept_sn = frozenset()
  if stage != 'pretrain' and keeps_frozen_sn(plan.config, models.generator):
    kept_sn = groups.frozen_sn_layers(models.g_variables, g_mask)
  generator, discriminator = models.generator, models.discriminator
  if plan.config.get('remat', False):
    generator = generator.clone(remat=True)
    discriminator = discriminator.clone(remat=True)
  setup = state_lib.StageSetup(
      generator=generator,
      discriminator=discriminator,
      g_optimizer=g_opt,
      d_optimizer=d_opt,
      fake_labels=tuple(label_range),
      batch_size=c.batch_size,
      num_d_steps=c.num_d_steps,
      num_d_accumulations=c.num_d_accumulations,
      d_chunk_reduction=c.d_chunk_reduction,
      num_g_accumulations=c.num_g_accumulations,
      losses=losses,
      ema_decay=c.ema_decay or None,
      ema_start=c.ema_start,
      augment=diffaugment.Policy.parse(plan.config.get('augment', '')),
      kept_g_sn=kept_sn)
  return g_mask, d_mask, setup


FROZEN_SN = ('auto', 'advance', 'keep')


def keeps_frozen_sn(config, generator) -> bool:
  """Whether G's frozen layers keep their SN vectors (`config.frozen_sn`;
  'auto': when the generator extends an already extended one)."""
  choice = config.get('frozen_sn', 'auto')
  if choice == 'auto':
    return bool(getattr(generator, 'extensions', ()))
  return choice == 'keep'
