"""What each stage starts from and how it trains (config -> models, setup).

* `pretrain`: a BigGAN from scratch on the N source classes.
* `transfer`: the source BigGAN extended by M new classes the way
  `config.method` says (cgt_jax/methods.py); for `kp`, through knowledge
  propagation (`kp_ccbn.init_from_source`). The discriminator keeps every
  source weight and gets a fresh projection table for the new classes
  (`new_embed`). For `kp` only the KP layers of G train; all of D trains.
* `finetune`: the transferred model, training all of G except similarity
  and prior (paper sec. 5.4).
"""

import dataclasses

import jax
import jax.numpy as jnp

from cgt_jax import default_config
from cgt_jax import baselines
from cgt_jax import input_pipeline
from cgt_jax import methods
from cgt_jax import model_io
from cgt_jax import state as state_lib
from cgt_jax import trainable
from cgt_jax.models import biggan
from cgt_jax.models import kp_ccbn
from cgt_jax.models import variables as variables_lib


class ConfigError(ValueError):
  """A config value is invalid; the message names it and the fix."""


@dataclasses.dataclass
class StageModels:
  generator: biggan.Generator
  discriminator: biggan.Discriminator
  g_variables: dict
  d_variables: dict
  label_offset: int  # added to dataset labels to get global labels
  class_names: list


def _check_choice(name, value, choices):
  if value not in choices:
    raise ConfigError(f'config.{name}={value!r} is not valid: use one of '
                      f'{list(choices)}')


def validate_config(config):
  """Raises ConfigError for values that cannot work, naming the fix.

  `config` is resolved (`methods.resolve`): its method's switches applied.
  """
  _validate_method(config)
  chosen = list(config.stages)
  if not chosen:
    raise ConfigError("config.stages is empty: e.g. ('pretrain', 'transfer')")
  for stage in chosen:
    _check_choice('stages', stage, default_config.STAGES)
  order = [default_config.STAGES.index(s) for s in chosen]
  if order != sorted(set(order)):
    raise ConfigError(f'config.stages={tuple(chosen)} must be in the order '
                      'pretrain, transfer, finetune, each at most once')
  method = methods.get(config.method)
  needs_model = chosen[0] == 'finetune' or method.uses_source
  if chosen[0] != 'pretrain' and needs_model and not config.source_checkpoint:
    raise ConfigError(
        f'stage {chosen[0]!r} needs a model to start from: add '
        "'pretrain' to config.stages or set config.source_checkpoint")
  _check_choice('model.init', config.model.init, ('ortho', 'N02'))
  _check_choice('model.resolution', config.model.resolution,
                sorted(biggan.G_ARCH))
  _check_choice('dtype', config.dtype, ('float32', 'bfloat16'))
  for stage in chosen:
    c = config[stage]
    _check_choice(f'{stage}.d_chunk_reduction', c.d_chunk_reduction,
                  ('mean', 'sum'))
    for key in ('num_steps', 'batch_size', 'num_d_steps', 'num_d_accumulations',
                'num_g_accumulations', 'log_every', 'checkpoint_every'):
      if c[key] <= 0:
        raise ConfigError(f'config.{stage}.{key}={c[key]} must be positive')
    try:
      input_pipeline.check_global_batch(c.batch_size, jax.device_count())
    except ValueError as error:
      raise ConfigError(f'config.{stage}.{error}') from None
    if not 0 <= c.ema_decay < 1:
      raise ConfigError(f'config.{stage}.ema_decay={c.ema_decay} must be in '
                        '[0, 1) (0 turns the EMA off)')


def _validate_method(config):
  try:
    method = methods.get(config.method)
  except methods.MethodError as error:
    raise ConfigError(str(error)) from None
  o = config.method_options
  _check_choice('method_options.new_class_init', o.new_class_init,
                baselines.NEW_CLASS_INITS)
  _check_choice('method_options.bsa_start', o.bsa_start, baselines.BSA_STARTS)
  blocks = len(biggan.D_ARCH.get(config.model.resolution, ((), ()))[1])
  if method.freezes_d_blocks and not 0 <= o.frozen_d_blocks <= blocks:
    raise ConfigError(
        f'config.method_options.frozen_d_blocks={o.frozen_d_blocks}: the '
        f'{config.model.resolution} px discriminator has {blocks} blocks; '
        f'freeze 0..{blocks} of them')


def _dtype(config):
  return jnp.bfloat16 if config.dtype == 'bfloat16' else jnp.float32


def _kp_options(config):
  return kp_ccbn.KPOptions(
      use_residuals=config.model.use_residuals,
      shared_similarity=config.model.shared_similarity,
      propagate=methods.get(config.method).generator != 'bsa')


def _fresh(generator, discriminator, seed):
  """Freshly initialised variables of both networks (jitted init)."""
  labels = jnp.full((2,), generator.num_labels - 1, jnp.int32)
  z = jnp.zeros((2, generator.dim_z))
  res = discriminator.resolution
  key_g, key_d = jax.random.split(jax.random.key(seed))
  g_vars = jax.jit(generator.init)(key_g, z, labels)
  d_vars = jax.jit(discriminator.init)(key_d, jnp.zeros((2, res, res, 3)),
                                       labels)
  return g_vars, d_vars


def _fresh_models(config, class_names):
  """A BigGAN G and D from scratch for `class_names` (labels 0..len-1)."""
  m = config.model
  num_classes = len(class_names)
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
      dtype=_dtype(config))
  discriminator = biggan.Discriminator(
      resolution=m.resolution,
      num_classes=num_classes,
      ch=m.d_ch,
      attention=tuple(m.d_attention),
      weights_init=m.init,
      sn_eps=m.sn_eps,
      dtype=_dtype(config))
  g_vars, d_vars = _fresh(generator, discriminator, config.seed)
  return StageModels(generator, discriminator, g_vars, d_vars, 0,
                     list(class_names))


def _load(previous):
  generator, discriminator, variables = model_io.load(previous)
  if discriminator is None:
    raise ConfigError(
        f'{previous} has no discriminator, which transfer needs: convert the '
        'source with --discriminator D.pth')
  return generator, discriminator, variables


def _transfer_models(config, data, previous):
  """The models the transfer stage of `config.method` starts from."""
  method = methods.get(config.method)
  if not method.uses_source:
    return _fresh_models(config, data.target.class_names)
  generator, discriminator, variables = _load(previous)
  num_new = data.target.num_classes
  source_names = list(config.data.source_classes) or data.source_names
  if source_names and len(source_names) != generator.num_classes:
    raise ConfigError(
        f'the source model {previous} has {generator.num_classes} classes '
        f'but the config names {len(source_names)} source classes: make '
        'config.data.source_classes match the model the source was trained on')
  if generator.num_new_classes:
    raise ConfigError(
        f'{previous} already has {generator.num_new_classes} new classes: '
        'transfer starts from a plain BigGAN; use stage finetune instead')
  num_source = generator.num_classes
  if method.generator == 'extended':
    generator = generator.clone(
        num_classes=num_source + num_new, dtype=_dtype(config))
  else:
    generator = generator.clone(
        num_new_classes=num_new,
        kp_options=_kp_options(config),
        dtype=_dtype(config))
  discriminator = discriminator.clone(
      num_new_classes=num_new, dtype=_dtype(config))
  fresh_g, fresh_d = _fresh(generator, discriminator, config.seed)
  g_vars = _new_class_variables(config, method, generator, variables, fresh_g,
                                num_source)
  d_vars = variables_lib.merge(variables['discriminator'], fresh_d,
                               'discriminator')
  return StageModels(generator, discriminator, g_vars, d_vars, num_source,
                     list(data.target.class_names))


def _new_class_variables(config, method, generator, source, fresh, num_source):
  """The extended generator's variables: source weights + new classes."""
  options = config.method_options
  if method.generator == 'extended':
    return baselines.extend_class_tables(source['generator'], fresh, num_source,
                                         options.new_class_init)
  g_vars = kp_ccbn.init_from_source(source['generator'], fresh)
  if method.generator == 'bsa':
    g_vars = baselines.start_bsa_vectors(g_vars, options.bsa_start,
                                         generator.sn_eps)
  return g_vars


def _finetune_models(config, data, previous):
  generator, discriminator, variables = _load(previous)
  if generator.num_new_classes != data.target.num_classes:
    raise ConfigError(
        f'{previous} has {generator.num_new_classes} new classes but '
        f'config.data.target_classes lists {data.target.num_classes}: '
        'fine-tune with the target classes the model was transferred to')
  return StageModels(
      generator.clone(dtype=_dtype(config)),
      discriminator.clone(dtype=_dtype(config)), variables['generator'],
      variables['discriminator'], generator.num_classes,
      list(data.target.class_names))


def runs_pretraining(config) -> bool:
  return 'pretrain' in config.stages and not config.source_checkpoint


def needs_source_data(config) -> bool:
  """Whether a run loads the source classes' images: to pretrain on them,
  or for the evaluation's domain classifier."""
  return runs_pretraining(config) or config.eval.get('classifier_with_source',
                                                     False)


def initial_models(stage, config, data, previous) -> StageModels:
  """The models and variables `stage` starts from."""
  if stage == 'pretrain':
    return _fresh_models(config, data.source_names)
  if stage == 'transfer':
    return _transfer_models(config, data, previous)
  return _finetune_models(config, data, previous)


def trainable_masks(stage, config, models: StageModels) -> tuple:
  """`(g_mask, d_mask)`: True where a parameter trains in `stage`."""
  method = methods.get(config.method)
  rule = default_config.STAGE_MASKS[stage]
  if stage == 'transfer':
    rule = method.g_mask
  g_mask = trainable.generator_mask(
      models.g_variables['params'],
      rule,
      update_prior=config[stage].get('update_prior', True))
  frozen_blocks = 0
  if stage == 'transfer' and method.freezes_d_blocks:
    frozen_blocks = config.method_options.frozen_d_blocks
  d_mask = trainable.discriminator_mask(models.d_variables['params'],
                                        frozen_blocks)
  return g_mask, d_mask


def make_setup(stage, config, models: StageModels) -> state_lib.StageSetup:
  """The static training description of `stage`."""
  c = config[stage]
  g_mask, d_mask = trainable_masks(stage, config, models)
  d_frozen = not all(jax.tree_util.tree_leaves(d_mask))
  g_opt, d_opt = state_lib.optimizers(c, g_mask, d_mask if d_frozen else None)
  low = models.label_offset
  high = low + len(models.class_names)
  return state_lib.StageSetup(
      generator=models.generator,
      discriminator=models.discriminator,
      g_optimizer=g_opt,
      d_optimizer=d_opt,
      fake_labels=(low, high),
      batch_size=c.batch_size,
      num_d_steps=c.num_d_steps,
      num_d_accumulations=c.num_d_accumulations,
      d_chunk_reduction=c.d_chunk_reduction,
      num_g_accumulations=c.num_g_accumulations,
      similarity_l1=c.similarity_l1,
      residual_l2=c.residual_l2,
      ema_decay=c.ema_decay or None,
      ema_start=c.ema_start)
