"""Pure training and sampling steps (no files, no host syncs).

One iteration, as in BigGAN-PyTorch / cGANTransfer `train_fns`:

1. `num_d_steps` discriminator updates. Each update accumulates gradients
   over `num_d_accumulations` chunks of `batch_size` real images; per chunk,
   fresh z and fake labels, a train-mode G forward (its BN running stats and
   SN vectors advance, even for frozen layers) and one D forward on the
   concatenated [fake; real] batch. Chunk losses are averaged ('mean') or
   summed ('sum', the cGANTransfer CIFAR script).
2. One generator update over `num_g_accumulations` chunks: hinge loss on
   D(G(z)) in train mode (D's SN vectors advance too) plus the KP
   regularisers (eq. 7), averaged over chunks.
3. Optional EMA of every generator variable.

The random inputs of an iteration (every chunk's z and fake labels) are
drawn first, as one `Draws`, from `fold_in(seed key, s)` at step s, so a
resumed run repeats an uninterrupted one exactly. A caller may pass its own
`Draws` instead (tools/replay_iterations.py replays the authors' recorded
draws through this same step); the step consumes them in order.

Metrics come back per chunk (D terms `[S * A]`, G terms `[G]`, in the order
the chunks ran) so that a caller can report what it needs: the loop logs
their means, a replay the last chunk's, as the reference does.
"""

import contextlib
import functools
from typing import Optional

import flax
from flax import traverse_util
import jax
import jax.numpy as jnp
import optax

from cgt_jax.training import optim
from cgt_jax.runtime import parallel
from cgt_jax.runtime import xla_cpu
from cgt_jax.training import state as state_lib

G_MUTABLE = ('batch_stats', 'sn')
D_MUTABLE = ('sn',)


def _unrolled_scan(body, carry, inputs):
  """`jax.lax.scan`'s contract, unrolled in Python.

  XLA:CPU runs convolution gradients inside a loop body about 40x slower
  than outside one (measured here: a D gradient takes 0.05 s, 2.2 s inside
  `lax.scan`, even with `unroll=True`), and our loops are short (chunks and
  D steps per iteration), so unrolling costs only compile time there.
  """
  outputs = []
  for i in range(jax.tree_util.tree_leaves(inputs)[0].shape[0]):
    carry, out = body(carry, jax.tree_util.tree_map(lambda x: x[i], inputs))
    outputs.append(out)
  return carry, jax.tree_util.tree_map(lambda *o: jnp.stack(o), *outputs)


# Set by `unrolled_loops` while a step is traced for its cost analysis.
_FORCE_UNROLLED = False


@contextlib.contextmanager
def unrolled_loops():
  """Steps traced inside unroll their chunk loops on every backend.

  For counting, not running: XLA's cost analysis counts a loop body once,
  whatever its trip count, so the FLOPs of an iteration with scanned chunks
  come from an unrolled twin (`cgt_jax.experiments.step_timing`).
  """
  global _FORCE_UNROLLED
  before, _FORCE_UNROLLED = _FORCE_UNROLLED, True
  try:
    yield
  finally:
    _FORCE_UNROLLED = before


def _loops_unrolled() -> bool:
  return _FORCE_UNROLLED or xla_cpu.unrolled_loops_pay()


def _accumulation_loop(body, carry, inputs):
  """The loop over chunks: unrolled on XLA:CPU (see `_unrolled_scan`),
  `lax.scan` elsewhere, where an unrolled loop would only grow the program
  with every accumulation."""
  if _loops_unrolled():
    return _unrolled_scan(body, carry, inputs)
  return jax.lax.scan(body, carry, inputs)


def _constrain(x):
  """Splits x's batch (first) axis over the data axis of the mesh set with
  `jax.set_mesh` (`make_train_step` sets it); no mesh: unchanged."""
  mesh = jax.sharding.get_abstract_mesh()
  if parallel.DATA_AXIS not in mesh.axis_names:
    return x
  return jax.lax.with_sharding_constraint(
      x, jax.sharding.PartitionSpec(parallel.DATA_AXIS))


class Draws(flax.struct.PyTreeNode):
  """The random inputs of one iteration, consumed in order.

  Attributes:
    d_z: `[S, A, B, dim_z]` latents of D update s, chunk a.
    d_labels: `[S, A, B]` global fake labels of those chunks.
    g_z: `[G, B, dim_z]` latents of G accumulation g.
    g_labels: `[G, B]` global fake labels of those accumulations.
  S = num_d_steps, A = num_d_accumulations, G = num_g_accumulations,
  B = batch_size (the batch axis is the one sharded over devices).
  """
  d_z: jax.Array
  d_labels: jax.Array
  g_z: jax.Array
  g_labels: jax.Array

  @staticmethod
  def shardings(batch_sharding):
    """A `Draws` of shardings splitting each batch axis like `batch_sharding`
    splits a batch (None: no sharding)."""
    if batch_sharding is None:
      return None
    mesh, axis = batch_sharding.mesh, batch_sharding.spec[0]
    split = lambda leading: jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(*([None] * leading), axis))
    return Draws(
        d_z=split(2), d_labels=split(2), g_z=split(1), g_labels=split(1))


def sample_latents(rng, setup: state_lib.StageSetup, batch_size: int):
  """z ~ N(0, I) `[B, dim_z]` and uniform fake labels in `setup.fake_labels`."""
  z_rng, y_rng = jax.random.split(rng)
  z = jax.random.normal(z_rng, (batch_size, setup.generator.dim_z))
  low, high = setup.fake_labels
  labels = jax.random.randint(y_rng, (batch_size,), low, high)
  return _constrain(z), _constrain(labels)


def sample_draws(rng, setup: state_lib.StageSetup) -> Draws:
  """The `Draws` of the iteration whose rng is `rng` (see `step_rng`).

  One key per chunk, split in the order the chunks run: D update s gets
  `split(split(rng)[0], S)[s]`, its chunk a `split(that, A)[a]`, G
  accumulation g `split(split(rng)[1], G)[g]`.
  """
  d_rng, g_rng = jax.random.split(rng)
  chunk_keys = [
      jax.random.split(key, setup.num_d_accumulations)
      for key in jax.random.split(d_rng, setup.num_d_steps)
  ]
  sample = lambda key: sample_latents(key, setup, setup.batch_size)
  d_z, d_labels = _stack([[sample(k) for k in keys] for keys in chunk_keys])
  g_z, g_labels = _stack(
      [sample(k) for k in jax.random.split(g_rng, setup.num_g_accumulations)])
  return Draws(d_z=d_z, d_labels=d_labels, g_z=g_z, g_labels=g_labels)


def _stack(nested):
  """Nested lists of `(z, labels)` pairs -> `(z, labels)` stacked alike."""
  if isinstance(nested, tuple):
    return nested
  z, labels = zip(*(_stack(item) for item in nested))
  return jnp.stack(z), jnp.stack(labels)


def regularizer_keys(state, setup):
  """`[S, A]` keys of the D chunks' regularisers (`losses.Losses`) and
  DiffAugment, from
  `fold_in(step rng, 1)`: the draws' keys (`sample_draws`) stay as they
  were."""
  keys = jax.random.split(
      jax.random.fold_in(step_rng(state), 1),
      setup.num_d_steps * setup.num_d_accumulations)
  return keys.reshape((setup.num_d_steps, setup.num_d_accumulations))


def g_augment_keys(state, setup):
  """`[G]` DiffAugment keys of the G chunks, from `fold_in(step rng, 2)`
  (the D chunks augment with `fold_in(regularizer key, 1)`)."""
  return jax.random.split(
      jax.random.fold_in(step_rng(state), 2), setup.num_g_accumulations)


def step_rng(state):
  """The rng of the state's current step: `fold_in(seed key, step)`."""
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def generate_train_mode(setup, g_params, g_state, z, labels):
  """A train-mode G forward: `(images, new g_state)`."""
  images, new_state = setup.generator.apply({
      'params': g_params,
      **g_state
  },
                                            z,
                                            labels,
                                            train=True,
                                            mutable=G_MUTABLE)
  # Collections the forward does not change (source_stats) are kept.
  new_state = {**g_state, **new_state}
  if setup.kept_g_sn:
    new_state['sn'] = _keep_sn(g_state['sn'], new_state['sn'], setup.kept_g_sn)
  return images, new_state


def _keep_sn(before, after, kept_layers):
  """`after`'s SN vectors, but `before`'s for the layers in `kept_layers`
  (chosen while tracing: nothing is computed for them)."""
  old = traverse_util.flatten_dict(dict(before), sep='/')
  new = traverse_util.flatten_dict(dict(after), sep='/')
  return traverse_util.unflatten_dict(
      {
          path: old[path] if path.rsplit('/', 1)[0] in kept_layers else value
          for path, value in new.items()
      },
      sep='/')


def discriminate_train_mode(setup,
                            d_params,
                            d_state,
                            images,
                            labels,
                            return_features: bool = False):
  """A train-mode D forward: `(logits [B, 1], new d_state)`; with
  `return_features` the first item is `(logits, penultimate features)`."""
  out, new_state = setup.discriminator.apply({
      'params': d_params,
      **d_state
  },
                                             images,
                                             labels,
                                             train=True,
                                             return_features=return_features,
                                             mutable=D_MUTABLE)
  return out, dict(new_state)


def _d_chunk_loss(d_params,
                  d_state,
                  setup,
                  fake,
                  fake_labels,
                  real,
                  real_labels,
                  key=None):
  """D's loss of one chunk; fake and real go through D in one call (and
  through the losses' regulariser, if any, in its own calls)."""
  # [fake; real] as one batch whose rows stay on their devices.
  sizes = (fake.shape[0], real.shape[0])
  images = parallel.concat_batches([fake, real])
  labels = parallel.concat_batches([fake_labels, real_labels])
  if setup.augment is not None:  # DiffAugment, real and fake alike
    images = setup.augment(images, jax.random.fold_in(key, 1),
                           parallel.batch_order(sizes))
  logits, d_state_after = discriminate_train_mode(setup, d_params, d_state,
                                                  images, labels)
  d_fake, d_real = parallel.split_batches(logits, sizes)
  loss, terms = setup.losses.discriminator(d_real, d_fake)
  if setup.losses.regularizes_discriminator:
    extra, extra_terms = _d_regularizer(d_params, d_state, setup, fake,
                                        fake_labels, real, real_labels, key)
    loss, terms = loss + extra, {**terms, **extra_terms}
  return loss, (d_state_after, {
      'd_loss': loss,
      **terms, 'd_real': jnp.mean(d_real),
      'd_fake': jnp.mean(d_fake)
  })


def _d_regularizer(d_params, d_state, setup, fake, fake_labels, real,
                   real_labels, key):
  """The losses' D regulariser with a critic of the chunk's D (train mode,
  the chunk's SN vectors; the state it would advance is dropped)."""

  def critic(images, labels):
    return discriminate_train_mode(
        setup, d_params, d_state, images, labels, return_features=True)[0]

  return setup.losses.discriminator_regularizer(critic, real, real_labels, fake,
                                                fake_labels, key)


def d_update(state, setup, real, real_labels, z, fake_labels, keys=None):
  """One D optimizer step over A chunks.

  Args:
    state: the TrainState.
    setup: the StageSetup.
    real, real_labels: `[A, B, H, W, 3]` images and `[A, B]` global labels.
    z, fake_labels: `[A, B, dim_z]` and `[A, B]`, the fakes' draws.
    keys: `[A]` PRNG keys of the chunks' regularisers (augmentations),
      when the losses have one (`Losses.regularizes_discriminator`).
  Returns:
    (new state, metrics with a leading chunk axis `[A]`).
  """
  num_chunks = real.shape[0]
  scale = 1.0 if setup.d_chunk_reduction == 'sum' else 1.0 / num_chunks
  grad_fn = jax.grad(_d_chunk_loss, has_aux=True)

  def chunk(carry, inputs):
    grads, g_state, d_state = carry
    real_chunk, labels_chunk, z_chunk, fake_labels_chunk, *key = inputs
    fake, g_state = generate_train_mode(setup, state.g_params, g_state, z_chunk,
                                        fake_labels_chunk)
    chunk_grads, (d_state, metrics) = grad_fn(state.d_params, d_state, setup,
                                              jax.lax.stop_gradient(fake),
                                              fake_labels_chunk, real_chunk,
                                              labels_chunk, *key)
    grads = jax.tree_util.tree_map(lambda a, g: a + scale * g, grads,
                                   chunk_grads)
    return (grads, g_state, d_state), metrics

  zeros = jax.tree_util.tree_map(jnp.zeros_like, state.d_params)
  (grads, g_state, d_state), metrics = _accumulation_loop(
      chunk, (zeros, state.g_state, state.d_state),
      (real, real_labels, z, fake_labels) + (() if keys is None else (keys,)))
  updates, d_opt_state = setup.d_optimizer.update(grads, state.d_opt_state,
                                                  state.d_params)
  state = state.replace(
      d_params=optax.apply_updates(state.d_params, updates),
      d_opt_state=d_opt_state,
      g_state=g_state,
      d_state=d_state)
  return state, metrics


def _g_chunk_loss(g_params,
                  g_state,
                  d_state,
                  d_params,
                  setup,
                  z,
                  labels,
                  key=None):
  """Generator loss of one chunk (hinge + KP regularisers); with DiffAugment
  D sees the augmented fakes and the gradient flows through the
  augmentation."""
  fake, g_state = generate_train_mode(setup, g_params, g_state, z, labels)
  if setup.augment is not None:
    fake = setup.augment(fake, key)
  d_fake, d_state = discriminate_train_mode(setup, d_params, d_state, fake,
                                            labels)
  loss, terms = setup.losses.generator(d_fake, g_params)
  return loss, (g_state, d_state, {'g_loss': loss, **terms})


def g_update(state, setup, z, labels, keys=None):
  """One G optimizer step over the G chunks `z` `[G, B, dim_z]`, `labels`
  `[G, B]` (losses averaged; `keys` `[G]`: the chunks' DiffAugment keys,
  with DiffAugment on); metrics have a leading chunk axis `[G]`."""
  num_chunks = z.shape[0]
  grad_fn = jax.grad(_g_chunk_loss, has_aux=True)

  def chunk(carry, inputs):
    grads, g_state, d_state = carry
    chunk_grads, (g_state, d_state, metrics) = grad_fn(state.g_params, g_state,
                                                       d_state, state.d_params,
                                                       setup, *inputs)
    grads = jax.tree_util.tree_map(lambda a, g: a + g / num_chunks, grads,
                                   chunk_grads)
    return (grads, g_state, d_state), metrics

  zeros = jax.tree_util.tree_map(jnp.zeros_like, state.g_params)
  (grads, g_state,
   d_state), metrics = _accumulation_loop(chunk,
                                          (zeros, state.g_state, state.d_state),
                                          (z, labels) + (() if keys is None else
                                                         (keys,)))
  updates, g_opt_state = setup.g_optimizer.update(grads, state.g_opt_state,
                                                  state.g_params)
  state = state.replace(
      g_params=optax.apply_updates(state.g_params, updates),
      g_opt_state=g_opt_state,
      g_state=g_state,
      d_state=d_state)
  return state, metrics


def as_chunks(x, setup):
  """`[B * S * A, ...]` -> `[S, A, B, ...]`, keeping B the sharded axis.

  Row r of the flat batch goes to sample r // (S * A) of chunk r % (S * A):
  every chunk then draws from every device's shard (a reshape that keeps the
  sharded axis major needs no communication).
  """
  s, a = setup.num_d_steps, setup.num_d_accumulations
  x = x.reshape((setup.batch_size, s, a) + x.shape[1:])
  return jnp.moveaxis(x, 0, 2)


def as_flat_batch(chunks):
  """Inverse of `as_chunks`: `[S, A, B, ...]` -> `[B * S * A, ...]`, the
  layout of a training batch (for callers holding chunk-major data)."""
  chunks = jnp.asarray(chunks)
  return jnp.moveaxis(chunks, 2, 0).reshape((-1,) + chunks.shape[3:])


def train_step(state,
               batch,
               draws: Optional[Draws] = None,
               *,
               setup: state_lib.StageSetup):
  """One iteration: D updates then a G update (and EMA).

  Args:
    state: the TrainState.
    batch: {'image': [S * A * B, H, W, 3] float in [-1, 1], 'label':
      [S * A * B] global labels}, sharded over devices along the batch;
      S = num_d_steps, A = num_d_accumulations, B = batch_size.
    draws: the iteration's z and fake labels; None draws them from the
      state's rng (`sample_draws(step_rng(state), ...)`).
    setup: the static StageSetup.
  Returns:
    (new state, metrics on device: D terms `[S * A]`, G terms `[G]`, one
    value per chunk in the order they ran).
  """
  if draws is None:
    draws = sample_draws(step_rng(state), setup)

  def one_d_step(carry, inputs):
    return d_update(carry, setup, *inputs)

  images, labels = (as_chunks(batch[k], setup) for k in ('image', 'label'))
  inputs = (images, labels, draws.d_z, draws.d_labels)
  if setup.losses.regularizes_discriminator or setup.augment is not None:
    inputs += (regularizer_keys(state, setup),)
  state, d_metrics = _accumulation_loop(one_d_step, state, inputs)
  g_keys = () if setup.augment is None else (g_augment_keys(state, setup),)
  state, g_metrics = g_update(state, setup, draws.g_z, draws.g_labels, *g_keys)
  if setup.ema_decay is not None:
    ema = optim.ema_update(state.g_ema, state.g_variables(), setup.ema_decay,
                           state.step, setup.ema_start)
    state = state.replace(g_ema=ema)
  d_metrics = jax.tree_util.tree_map(lambda m: m.reshape(-1), d_metrics)
  return state.replace(step=state.step + 1), {**d_metrics, **g_metrics}


def make_train_step(setup, mesh=None, with_draws: bool = False):
  """`train_step` jitted over `mesh` (state replicated, batch sharded).

  Returns `step(state, batch)`, or with `with_draws` `step(state, batch,
  draws)`: the same `train_step`, fed the given `Draws` instead of drawing
  them. The state argument is donated: its buffers are reused for the new
  state. The step traces under `jax.set_mesh(mesh)`, so the draws it makes
  itself are split over the devices like the batch.

  Equal setups get the same jitted step (jit keys its traces on the
  function): a process that sets a stage up again (a resume, a comparison
  over seeds, the test suite) traces and compiles its program once. What
  else shapes the trace (the loop form, the convolution kernels) is part
  of the key; `clear_train_step_cache` drops them all.
  """
  key = (setup, mesh, with_draws, _loops_unrolled(),
         xla_cpu.convolution_kernels())
  try:
    hash(key)
  except TypeError:  # a field holding a dict or an array: not cached
    # (optax objects hash by identity: cached, but only ever equal to
    # themselves)
    return _jitted_train_step(setup, mesh, with_draws)
  return _cached_train_step(*key)


def _jitted_train_step(setup, mesh, with_draws):
  step = functools.partial(train_step, setup=setup)
  if mesh is None:
    return jax.jit(step, donate_argnums=0)
  batch_sharding = parallel.data_sharding(mesh)
  in_shardings = (parallel.replicated(mesh), batch_sharding)
  if with_draws:
    in_shardings += (Draws.shardings(batch_sharding),)
  jitted = jax.jit(
      step,
      in_shardings=in_shardings,
      out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)),
      donate_argnums=0)

  @functools.wraps(jitted)
  def on_mesh(*args):
    with jax.set_mesh(mesh):
      return jitted(*args)

  on_mesh.lower = lambda *args: _lower_on_mesh(jitted, mesh, *args)
  return on_mesh


@functools.lru_cache(maxsize=8)  # a few: each holds its compiled programs
def _cached_train_step(setup, mesh, with_draws, *trace_choices):
  del trace_choices  # in the key only
  return _jitted_train_step(setup, mesh, with_draws)


def clear_train_step_cache():
  """Forget the jitted steps: the next `make_train_step` traces anew (for
  code that patches what a step calls while it traces, as tests do)."""
  _cached_train_step.cache_clear()


def _lower_on_mesh(jitted, mesh, *args):
  with jax.set_mesh(mesh):
    return jitted.lower(*args)


def generate(generator, variables, z, labels, train: bool = False):
  """Images `[B, R, R, 3]` in [-1, 1]; train=True also returns the new state
  (one train-mode forward: batch statistics, SN vectors advance)."""
  if train:
    return generator.apply(variables, z, labels, train=True, mutable=G_MUTABLE)
  return generator.apply(variables, z, labels)


# One jitted `generate` for the process: the generator (a module, equal to
# any other with its fields) is static, so every evaluator and sample grid
# of an equal generator shares one trace (jit's own caches are bounded, so
# a process that evaluates many generators does not grow without end).
jitted_generate = jax.jit(generate, static_argnums=0, static_argnames='train')
