"""Times the jitted train step of a config on whatever devices exist.

What `tools/benchmark.py` and `benchmarks/device_check.py` print: the
stage's models with random weights (no dataset, no source checkpoint: the
class counts come from the config), the train step compiled over all
devices (state replicated, batch sharded), then timed on random data. Per
row: iterations/s, real images/s, XLA FLOPs per iteration (the compiled
program's cost analysis), the achieved FLOP/s and the peak device memory
(the compiled program's memory analysis; on GPUs also what the allocator
saw).

Imports nothing that needs TensorFlow, a dataset or the network, so it runs
on a device machine from the working tree.
"""

import copy
import dataclasses
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cgt_jax.runtime import parallel
from cgt_jax.runtime import xla_cpu
from cgt_jax.training import state as state_lib
from cgt_jax.training import steps
from cgt_jax.transfer import methods
from cgt_jax.transfer import stages

GIB = 2**30


def _resolve(config):
  config = copy.deepcopy(config)
  # Random weights stand in for the source model the stage would load.
  config.source_checkpoint = config.source_checkpoint or '(random weights)'
  return stages.resolve(config)


def source_models(config, num_source: int = 0) -> methods.Models:
  """A random source BigGAN of the config's source classes (or
  `num_source` when the config lists none; one class when
  `config.model.conditional` is False)."""
  plan = _resolve(config)
  num_classes = len(config.data.source_classes) or num_source
  return _with_random_values(
      lambda: stages.fresh_source(plan.config, num_classes))


def stage_models(config, stage: str, source: methods.Models) -> tuple:
  """`(models, label_range)` that `stage` trains, from random `source`
  models: the source itself for pretraining, else grown to the config's
  new classes by its method. Build once and time several `measure` rows
  (dtype and remat are applied per row)."""
  if stage == 'pretrain':
    return source, (0, source.generator.num_labels)
  plan = _resolve(config)
  context = methods.BuildContext(
      num_new=len(config.data.target_classes),
      seed=0,
      dtype=source.generator.dtype,
      fresh=lambda n: stages.fresh_models(plan.config, n))
  models = _with_random_values(lambda: plan.method.models(source, context))
  # The stage's classes are the generator's last labels.
  labels = models.generator.num_labels
  return models, (labels - context.num_new, labels)


def _with_random_values(build) -> methods.Models:
  """`build()`'s Models with variables drawn on the host, not computed.

  The rows time steps on random weights, so what the inits and the weight
  surgery compute does not matter, but compiling them does: on a CPU a
  KP generator's init compiles for 10-20 s, longer than the step it is
  built for. So `build` is only traced (`jax.eval_shape`), and its
  variables are filled: parameters N(0, 0.02), the other collections
  (BN statistics, spectral-norm vectors) ones, which are valid values for
  each. A build that needs concrete values runs as it is (Hyper-
  Modulation's self-alignment, which logs its losses as it trains).
  """
  built = []

  def variables():
    built.append(build())
    return built[-1].g_variables, built[-1].d_variables

  try:
    g_shapes, d_shapes = jax.eval_shape(variables)
  except jax.errors.JAXTypeError:  # it reads a value (a progress line)
    return build()
  rng = np.random.default_rng(0)

  def draw(path, shape):
    collection = path[0].key
    values = (
        rng.normal(0.0, 0.02, shape.shape)
        if collection == 'params' else np.ones(shape.shape))
    return jnp.asarray(values, shape.dtype)

  return dataclasses.replace(
      built[0],
      g_variables=jax.tree_util.tree_map_with_path(draw, g_shapes),
      d_variables=jax.tree_util.tree_map_with_path(draw, d_shapes))


def compiled_peak_bytes(compiled) -> int:
  """The device memory a compiled program needs at its peak, by XLA's
  buffer assignment: arguments + outputs - donated (aliased) + temporaries.

  On XLA:CPU this is an estimate of what an accelerator needs: it does not
  see rematerialisation (`config.remat`), whose recomputation XLA:CPU
  schedules early (docs/PERFORMANCE.md, "Memory").
  """
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes -
          m.alias_size_in_bytes + m.temp_size_in_bytes)


def allocator_peak_bytes() -> float:
  """The peak bytes the first device's allocator handed out so far (GPUs
  report it; CPUs and some TPUs do not: NaN)."""
  stats = jax.devices()[0].memory_stats() or {}
  return float(stats.get('peak_bytes_in_use', float('nan')))


def _flops(costed) -> float:
  cost = costed.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get('flops', float('nan')))


def _scanned_loop_flops(compiled_flops, lowered, setup, mesh, state,
                        batch) -> float:
  """The FLOPs of an iteration whose chunk loops are `lax.scan`s (GPU,
  TPU): XLA's cost analysis counts a loop body once, so the compiled
  count is scaled by how much more an unrolled twin counts before
  optimisation (traced, never compiled)."""
  with steps.unrolled_loops():
    unrolled = steps.make_train_step(setup, mesh).lower(state, batch)
  return compiled_flops * _flops(unrolled) / _flops(lowered)


def _random_batch(setup, resolution, mesh):
  n = setup.real_per_step
  low, high = setup.fake_labels
  images = np.random.default_rng(0).uniform(-1, 1,
                                            (n, resolution, resolution, 3))
  return jax.device_put(
      {
          'image': jnp.asarray(images, jnp.float32),
          'label': jnp.asarray(np.arange(n) % (high - low) + low, jnp.int32),
      }, parallel.data_sharding(mesh))


def measure(config,
            stage: str,
            num_steps: int,
            num_source: int = 0,
            progress: Optional[Callable[[str], None]] = None,
            built: Optional[tuple] = None) -> dict:
  """One table row: the compiled step of `stage` timed over `num_steps`
  iterations after one warm-up (`progress` hears of each phase).

  `built`: the `stage_models` of this config and stage, when the caller
  reuses them across rows; by default built here.
  """
  say = progress or (lambda message: None)
  if built is None:
    say('building the models')
    built = stage_models(config, stage, source_models(config, num_source))
  models, labels = built
  dtype = stages.compute_dtype(config)
  models = dataclasses.replace(
      models,
      generator=models.generator.clone(dtype=dtype),
      discriminator=models.discriminator.clone(dtype=dtype))
  _, _, setup = stages.training_setup(stage, _resolve(config), models, labels)
  mesh = parallel.make_mesh()
  # Copies: the step donates its state, and `built` may serve more rows.
  # (`device_put(..., may_alias=False)` is not enough: replicating a
  # one-device array over several devices keeps its buffer as the first
  # device's copy.)
  state = jax.tree_util.tree_map(
      jnp.copy,
      jax.device_put(
          state_lib.create(setup, models.g_variables, models.d_variables, 0),
          parallel.replicated(mesh)))
  batch = _random_batch(setup, config.model.resolution, mesh)
  step = steps.make_train_step(setup, mesh)
  say('tracing and compiling the step')
  start = time.perf_counter()
  lowered = step.lower(state, batch)
  trace_seconds = time.perf_counter() - start
  compiled = lowered.compile()
  compile_seconds = time.perf_counter() - start
  flops = _flops(compiled)
  chunks = setup.num_d_steps * setup.num_d_accumulations
  if not xla_cpu.unrolled_loops_pay(
  ) and chunks * setup.num_g_accumulations > 1:
    flops = _scanned_loop_flops(flops, lowered, setup, mesh, state, batch)
  say(f'traced in {trace_seconds:.0f} s, compiled in '
      f'{compile_seconds - trace_seconds:.0f} s; timing {num_steps} '
      'iterations')
  state, metrics = compiled(state, batch)  # warm-up
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(num_steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  seconds = (time.perf_counter() - start) / num_steps
  return {
      'stage': stage,
      'devices': f'{jax.device_count()}x {jax.devices()[0].device_kind}',
      'cpu kernels': xla_cpu.convolution_kernels(),
      'dtype': config.dtype + (' + remat' if config.get('remat') else ''),
      'batch': f'{setup.batch_size} x {chunks} D chunks',
      'compile_s': compile_seconds,
      's_per_iteration': seconds,
      'real_images_per_s': setup.real_per_step / seconds,
      'gflop_per_iteration': flops / 1e9,
      'gflop_per_s': flops / 1e9 / seconds,
      'peak_memory_gib': compiled_peak_bytes(compiled) / GIB,
      'allocator_peak_gib': allocator_peak_bytes() / GIB,
  }


def markdown_table(rows: list) -> str:
  """Rows (dicts) as one markdown table; columns in first-seen order, a
  missing cell '-', floats to 3 significant digits."""
  keys = list(dict.fromkeys(key for row in rows for key in row))
  cell = lambda v: f'{v:.3g}' if isinstance(v, float) else str(v)
  lines = ['| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys)]
  for row in rows:
    lines.append('| ' + ' | '.join(cell(row.get(k, '-')) for k in keys) + ' |')
  return '\n'.join(lines)
