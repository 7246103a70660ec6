"""Recorded training iterations replayed through cgt_jax's own train step.

The authors' training function, run with every random draw recorded, gives
parameters after T iterations; replaying the same draws and real batches
through `steps.train_step` (the jitted step `cgt_jax.main` runs, fed
`steps.Draws` instead of drawing them) must give the same parameters. This
is the training-parity guard (tests/test_replay.py, fixtures `cgt32_train`
and `cgt128_train`; tools/replay_iterations.py is its command line).

Settings (the fixtures' `iter.json`), in the reference's names:

    stage          'BN' (transfer, default), 'FT' (fine-tuning) or
                   'pretrain' (BigGAN-PyTorch's own loop)
    chunks         C, real-batch chunks of `batch_size` per iteration
    batch_size     B
    iterations     T
    n_source, n_new    N and M (checked against the checkpoint)
    lr: {G, D}, adam_eps, optionally betas [b1, b2] (default 0, 0.999)
    config: num_D_steps, num_D_accumulations, num_G_accumulations,
            comb_l1_scale, res_l2_scale, toggle_grads, split_D,
            D_ortho, G_ortho

How the loops map onto a `StageSetup`:

* cGANTransfer (`BN`, `FT`): ONE D update per iteration over the C chunks,
  each chunk loss divided by `num_D_accumulations` (both copies of its
  `train_fns` do this with their scripts; reference notes sec. 3.2). So
  `num_D_accumulations = C` is BigGAN's 'mean', `= 1` the CIFAR script's
  'sum'.
* BigGAN-PyTorch (`pretrain`): `num_D_steps` updates of
  `num_D_accumulations` chunks each ('mean'); C = their product.

Draws (the fixtures' `iter.npz`): `x` `[T, C*B, 3, H, W]` NCHW in [-1, 1],
`y_real` `[T, C*B]`, `z_d` `[T, C, B, dim_z]`, `y_d` `[T, C, B]`, `z_g`
`[T, B, dim_z]` (or `[T, G, B, dim_z]`), `y_g` `[T, B]` (or `[T, G, B]`).
Labels index the classes the stage trains: the new classes 0..M-1 (global
label N + y) for `BN`/`FT`, the source classes for `pretrain`.
"""

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from cgt_jax import default_config
from cgt_jax.convert import keymap
from cgt_jax.runtime import parallel
from cgt_jax.training import state as state_lib
from cgt_jax.training import steps
from cgt_jax.transfer import methods
from cgt_jax.transfer import stages

# Reference stage names -> cgt_jax stages.
STAGES = {'BN': 'transfer', 'FT': 'finetune', 'pretrain': 'pretrain'}
DRAW_KEYS = ('x', 'y_real', 'z_d', 'y_d', 'z_g', 'y_g')
# The state-dict entries cgt_jax does not keep: `sv0` is the reference's
# last sigma, a logging value its forward never reads.
NOT_KEPT = ('.sv0',)


class ReplayError(ValueError):
  """Settings or draws that cannot be replayed; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """The hyper-parameters of a recorded run (see the module docstring)."""
  stage: str
  chunks: int
  batch_size: int
  iterations: int
  num_d_steps: int
  num_d_accumulations: int
  d_chunk_reduction: str
  num_g_accumulations: int
  g_lr: float
  d_lr: float
  adam_eps: float
  betas: tuple
  similarity_l1: float
  residual_l2: float
  num_source: int = 0
  num_new: int = 0


def _require(settings: dict, key: str, where: str = 'settings'):
  if key not in settings:
    raise ReplayError(f'{where} has no {key!r}: add it (see the fixtures\' '
                      'iter.json for the format)')
  return settings[key]


def read_settings(path) -> Settings:
  """Parses and checks a settings JSON file."""
  try:
    raw = json.loads(pathlib.Path(path).read_text())
  except (OSError, json.JSONDecodeError) as error:
    raise ReplayError(f'cannot read settings {path}: {error}') from None
  return parse_settings(raw)


def parse_settings(raw: dict) -> Settings:
  """`Settings` from the settings dict; ReplayError names what to fix."""
  loop = dict(_require(raw, 'config'))
  stage = raw.get('stage', 'BN')
  if stage not in STAGES:
    raise ReplayError(f'settings stage {stage!r} is not replayable: use one '
                      f'of {list(STAGES)}')
  unsupported = {
      'toggle_grads': (True, 'frozen parameters must get no update'),
      'split_D': (False, 'fake and real go through D in one call'),
      'D_ortho': (0.0, 'orthogonal regularisation is not implemented'),
      'G_ortho': (0.0, 'orthogonal regularisation is not implemented'),
  }
  for key, (value, why) in unsupported.items():
    if loop.get(key, value) != value:
      raise ReplayError(f'settings config.{key}={loop[key]!r} cannot be '
                        f'replayed ({why}): record with {key}={value!r}')
  chunks = int(_require(raw, 'chunks'))
  accumulations = int(loop.get('num_D_accumulations', 1))
  d_steps = int(loop.get('num_D_steps', 1))
  if STAGES[stage] == 'pretrain':
    if d_steps * accumulations != chunks:
      raise ReplayError(
          f'settings chunks={chunks} but BigGAN pretraining runs num_D_steps '
          f'x num_D_accumulations = {d_steps} x {accumulations} chunks: make '
          'them agree')
    d_updates, per_update, reduction = d_steps, accumulations, 'mean'
  else:
    d_updates, per_update = 1, chunks
    if accumulations == 1:
      reduction = 'sum'
    elif accumulations == chunks:
      reduction = 'mean'
    else:
      raise ReplayError(
          f'settings num_D_accumulations={accumulations} with chunks={chunks}:'
          ' each chunk loss is divided by num_D_accumulations, which cgt_jax '
          'expresses only as a sum (1) or a mean (= chunks)')
  lr = _require(raw, 'lr')
  return Settings(
      stage=STAGES[stage],
      chunks=chunks,
      batch_size=int(_require(raw, 'batch_size')),
      iterations=int(_require(raw, 'iterations')),
      num_d_steps=d_updates,
      num_d_accumulations=per_update,
      d_chunk_reduction=reduction,
      num_g_accumulations=int(loop.get('num_G_accumulations', 1)),
      g_lr=float(_require(lr, 'G', 'settings lr')),
      d_lr=float(_require(lr, 'D', 'settings lr')),
      adam_eps=float(_require(raw, 'adam_eps')),
      betas=tuple(raw.get('betas', (0.0, 0.999))),
      similarity_l1=float(loop.get('comb_l1_scale', 0.0)),
      residual_l2=float(loop.get('res_l2_scale', 0.0)),
      num_source=int(raw.get('n_source', 0)),
      num_new=int(raw.get('n_new', 0)))


def stage_plan(settings: Settings) -> stages.Plan:
  """A `kp` plan whose `settings.stage` fields are the settings.

  Built without `stages.resolve`'s checks, which are about a run's config:
  a replay splits its batch over the devices that divide it
  (`replay_mesh`), not over all of them.
  """
  config = default_config.get_config()
  config.method = 'kp'
  config.stages = (settings.stage,)
  c = config[settings.stage]
  c.batch_size = settings.batch_size
  c.num_d_steps = settings.num_d_steps
  c.num_d_accumulations = settings.num_d_accumulations
  c.d_chunk_reduction = settings.d_chunk_reduction
  c.num_g_accumulations = settings.num_g_accumulations
  c.g_lr, c.d_lr, c.adam_eps = settings.g_lr, settings.d_lr, settings.adam_eps
  c.adam_b1, c.adam_b2 = settings.betas
  c.similarity_l1 = settings.similarity_l1
  c.residual_l2 = settings.residual_l2
  c.ema_decay = 0.0  # an EMA copy changes neither G nor D
  config = methods.configure(config)
  return stages.Plan(config, methods.build(config), (settings.stage,))


@dataclasses.dataclass
class ReplayModels:
  """The converted networks and the generator labels of the stage's
  classes (`[first, end)`)."""
  models: methods.Models
  label_range: tuple

  @property
  def generator(self):
    return self.models.generator

  @property
  def discriminator(self):
    return self.models.discriminator

  @property
  def num_classes(self) -> int:
    return self.label_range[1] - self.label_range[0]


def stage_models(settings: Settings, generator, discriminator) -> ReplayModels:
  """The converted networks (`biggan_pth.Network`) for `settings.stage`."""
  g, d = generator.module, discriminator.module
  pretraining = settings.stage == 'pretrain'
  if pretraining == bool(g.num_new_classes):
    want = 'a BigGAN-PyTorch' if pretraining else 'a cGANTransfer'
    raise ReplayError(f'stage {settings.stage} replays {want} checkpoint, but '
                      f'the generator is a {generator.format} one')
  for name, expected, actual in (('n_source', settings.num_source,
                                  g.num_classes), ('n_new', settings.num_new,
                                                   g.num_new_classes)):
    if expected and expected != actual:
      raise ReplayError(f'settings {name}={expected} but the checkpoint has '
                        f'{actual}: are settings and checkpoints one run?')
  # The recorded labels index the classes the stage trains: the source
  # classes when pretraining, else the new ones (generator label N + y).
  first = 0 if pretraining else g.num_classes
  count = g.num_classes if pretraining else g.num_new_classes
  models = methods.Models(g, d, generator.variables, discriminator.variables)
  return ReplayModels(models, (first, first + count))


def check_draws(draws: dict, settings: Settings, models) -> None:
  """Raises ReplayError unless the draws fit the settings and the models."""
  missing = [k for k in DRAW_KEYS if k not in draws]
  if missing:
    raise ReplayError(f'draws have no {missing}: record all of {DRAW_KEYS}')
  t, c, b = settings.iterations, settings.chunks, settings.batch_size
  res = models.discriminator.resolution
  dim_z = models.generator.dim_z
  g = settings.num_g_accumulations
  g_shape = (t, b) if g == 1 else (t, g, b)
  expected = {
      'x': (t, c * b, 3, res, res),
      'y_real': (t, c * b),
      'z_d': (t, c, b, dim_z),
      'y_d': (t, c, b),
      'z_g': g_shape + (dim_z,),
      'y_g': g_shape,
  }
  for key, shape in expected.items():
    actual = tuple(np.shape(draws[key]))
    if actual != shape:
      raise ReplayError(
          f'draws {key!r} has shape {actual} but the settings (T={t}, C={c}, '
          f'B={b}, G={g}) and the model (dim_z {dim_z}, {res} px) need '
          f'{shape}: record draws for these settings')
  count = models.num_classes
  for key in ('y_real', 'y_d', 'y_g'):
    labels = np.asarray(draws[key])
    if labels.size and (labels.min() < 0 or labels.max() >= count):
      raise ReplayError(
          f'draws {key!r} hold labels {labels.min()}..{labels.max()}, but the '
          f'{settings.stage} stage trains {count} classes, labelled '
          f'0..{count - 1} (generator label = {models.label_range[0]} + y)')


def replay_mesh(batch_size: int):
  """A mesh over the most devices that split `batch_size` evenly."""
  count = max(
      k for k in range(1,
                       jax.device_count() + 1) if batch_size % k == 0)
  return parallel.make_mesh(jax.devices()[:count])


def _iteration_inputs(draws, t, settings, models, mesh):
  """`(batch, Draws)` of iteration t, global labels, sharded as trained."""
  s, a, b = (settings.num_d_steps, settings.num_d_accumulations,
             settings.batch_size)
  # Recorded labels -> generator labels: the one place a replay shifts them
  # (the recording's label space is the reference's, not cgt_jax's).
  offset = models.label_range[0]
  # Iteration t of a recorded array whose first `axes` axes are [C * B] or
  # [C, B] -> [S, A, B, ...]; recorded chunk c is (s, a) = divmod(c, A), the
  # order of the reference's loops.
  chunked = lambda x, axes: jnp.asarray(x[t]).reshape(
      (s, a, b) + x.shape[1 + axes:])
  images = chunked(np.asarray(draws['x']).transpose(0, 1, 3, 4, 2), 1)
  g_shape = (settings.num_g_accumulations, b)
  batch = {
      'image': steps.as_flat_batch(images),
      'label': steps.as_flat_batch(chunked(draws['y_real'], 1) + offset),
  }
  iteration_draws = steps.Draws(
      d_z=chunked(draws['z_d'], 2),
      d_labels=chunked(draws['y_d'], 2) + offset,
      g_z=jnp.asarray(draws['z_g'][t]).reshape(g_shape + (-1,)),
      g_labels=jnp.asarray(draws['y_g'][t]).reshape(g_shape) + offset)
  iteration_draws = jax.tree_util.tree_map(
      lambda x: x.astype(jnp.int32)
      if jnp.issubdtype(x.dtype, jnp.integer) else x.astype(jnp.float32),
      iteration_draws)
  batch['label'] = batch['label'].astype(jnp.int32)
  batch_sharding = parallel.data_sharding(mesh)
  return (jax.device_put(batch, batch_sharding),
          jax.device_put(iteration_draws,
                         steps.Draws.shardings(batch_sharding)))


def replay(settings: Settings, models, draws: dict, progress=None):
  """Runs the recorded iterations; returns `(state, losses [T, 3])`.

  `losses[t]` = (G loss, D_loss_real, D_loss_fake) as the reference returns
  them: its last G accumulation's loss divided by their count, and the
  hinge terms of the last D chunk.
  """
  check_draws(draws, settings, models)
  _, _, setup = stages.training_setup(settings.stage, stage_plan(settings),
                                      models.models, models.label_range)
  mesh = replay_mesh(settings.batch_size)
  state = jax.device_put(
      state_lib.create(setup, models.models.g_variables,
                       models.models.d_variables, 0), parallel.replicated(mesh))
  step = steps.make_train_step(setup, mesh, with_draws=True)
  losses = []
  for t in range(settings.iterations):
    state, metrics = step(state,
                          *_iteration_inputs(draws, t, settings, models, mesh))
    metrics = jax.device_get(metrics)
    losses.append((metrics['g_loss'][-1] / settings.num_g_accumulations,
                   metrics['d_loss_real'][-1], metrics['d_loss_fake'][-1]))
    if progress:
      progress(t + 1, losses[-1])
  return state, np.asarray(losses, np.float32)


def export(state, losses) -> dict:
  """`after.npz` contents: `G.<key>` / `D.<key>` PyTorch state-dict entries
  (`pretrain_embedding_w` aliases included) and `losses`."""
  out = {'losses': np.asarray(losses, np.float32)}
  for prefix, variables in (('G', state.g_variables()), ('D',
                                                         state.d_variables())):
    entries = keymap.to_state_dict(jax.device_get(variables), aliases=True)
    out.update({f'{prefix}.{k}': v for k, v in entries.items()})
  return out


def relative_error(actual, expected) -> float:
  """||actual - expected|| / ||expected|| (absolute where expected is 0)."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  norm = np.linalg.norm(expected)
  difference = np.linalg.norm(actual - expected)
  return float(difference / norm) if norm else float(difference)


def worst_errors(after: dict, reference: dict, prefix: str) -> dict:
  """Worst `relative_error` over parameters, buffers: `{kind: (err, key)}`."""
  worst = {'parameters': (0.0, ''), 'buffers': (0.0, '')}
  for key, expected in reference.items():
    if key.endswith(NOT_KEPT):
      continue
    kind = 'buffers' if key.endswith(
        ('.u0', '.stored_mean', '.stored_var')) else 'parameters'
    error = relative_error(after[f'{prefix}.{key}'], expected)
    worst[kind] = max(worst[kind], (error, key))
  return worst
