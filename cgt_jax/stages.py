"""What each stage starts from and how it trains (config -> models, setup).

* `pretrain`: a BigGAN from scratch on the N source classes.
* `transfer`: the source BigGAN extended by M new classes through
  knowledge propagation (`kp_ccbn.init_from_source`); the discriminator
  keeps every source weight and gets a fresh projection table for the new
  classes (`new_embed`). Only the KP layers of G train; all of D trains.
* `finetune`: the transferred model, training all of G except similarity
  and prior (paper sec. 5.4).
"""

import dataclasses

import jax
import jax.numpy as jnp

from cgt_jax import default_config
from cgt_jax import input_pipeline
from cgt_jax import model_io
from cgt_jax import state as state_lib
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
  if chosen[0] != 'pretrain' and not config.source_checkpoint:
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


def _dtype(config):
  return jnp.bfloat16 if config.dtype == 'bfloat16' else jnp.float32


def _kp_options(config):
  return kp_ccbn.KPOptions(
      use_residuals=config.model.use_residuals,
      shared_similarity=config.model.shared_similarity)


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


def _pretrain_models(config, data):
  m = config.model
  num_classes = len(data.source_names)
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
                     list(data.source_names))


def _load(previous):
  generator, discriminator, variables = model_io.load(previous)
  if discriminator is None:
    raise ConfigError(
        f'{previous} has no discriminator, which transfer needs: convert the '
        'source with --discriminator D.pth')
  return generator, discriminator, variables


def _transfer_models(config, data, previous):
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
  generator = generator.clone(
      num_new_classes=num_new,
      kp_options=_kp_options(config),
      dtype=_dtype(config))
  discriminator = discriminator.clone(
      num_new_classes=num_new, dtype=_dtype(config))
  fresh_g, fresh_d = _fresh(generator, discriminator, config.seed)
  g_vars = kp_ccbn.init_from_source(variables['generator'], fresh_g)
  d_vars = variables_lib.merge(variables['discriminator'], fresh_d,
                               'discriminator')
  return StageModels(generator, discriminator, g_vars, d_vars,
                     generator.num_classes, list(data.target.class_names))


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


def initial_models(stage, config, data, previous) -> StageModels:
  """The models and variables `stage` starts from."""
  if stage == 'pretrain':
    return _pretrain_models(config, data)
  if stage == 'transfer':
    return _transfer_models(config, data, previous)
  return _finetune_models(config, data, previous)


def make_setup(stage, config, models: StageModels) -> state_lib.StageSetup:
  """The static training description of `stage`."""
  c = config[stage]
  g_opt, d_opt = state_lib.optimizers(c, models.g_variables['params'],
                                      default_config.STAGE_MASKS[stage])
  low = models.label_offset
  high = low + (
      models.generator.num_new_classes or models.generator.num_classes)
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
