"""Times the jitted train step of a config on whatever devices exist.

    python tools/benchmark.py --config=configs/cifar100_80to20.py \\
        --stage=transfer --steps=5

Builds the stage's models with random weights (no dataset, no source
checkpoint needed: the class counts come from the config), compiles the
train step, runs it `--steps` times on random data and prints a table:
iterations/s, real images/s, XLA FLOPs per iteration (the compiled program's
cost analysis) and the achieved FLOP/s. Config overrides work as in main:
`--config.transfer.batch_size=64`.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from cgt_jax.runtime import cli
from cgt_jax.runtime import parallel
from cgt_jax.runtime import xla_cpu
from cgt_jax.training import loop
from cgt_jax.training import state as state_lib
from cgt_jax.training import steps
from cgt_jax.transfer import methods
from cgt_jax.transfer import stages


def _flags(argv: list) -> flags.FlagValues:
  """The benchmark's flags, on a FlagValues of their own (`runtime.cli`).

  Args:
    argv: the command line being parsed (program name first): the config
      flag defines its `--config.*` override flags from it.
  """
  values = flags.FlagValues()
  cli.define_config(values, argv)
  flags.DEFINE_enum(
      'stage',
      'transfer', ['pretrain', 'transfer', 'finetune'],
      'Which stage to time.',
      flag_values=values)
  flags.DEFINE_integer(
      'steps', 5, 'Timed iterations after compilation.', flag_values=values)
  flags.DEFINE_integer(
      'num_source_classes',
      0, 'Source classes when the config does not list them '
      '(e.g. 1000 for an ImageNet source).',
      flag_values=values)
  return values


def _stage(config, stage, num_source):
  """`(plan, models, label_range)` of `stage` with random weights: a fresh
  source BigGAN, grown to the new classes by the config's method."""
  plan = stages.resolve(config)
  num_source = len(config.data.source_classes) or num_source
  num_new = len(config.data.target_classes)
  models = stages.fresh_models(plan.config, num_source)
  count = num_source
  if stage != 'pretrain':
    context = methods.BuildContext(
        num_new=num_new,
        seed=0,
        dtype=models.generator.dtype,
        fresh=lambda n: stages.fresh_models(plan.config, n))
    models = plan.method.models(models, context)
    count = num_new
  # The stage's classes are the generator's last `count` labels.
  labels = models.generator.num_labels
  return plan, models, (labels - count, labels)


def measure(config, stage, num_steps, num_source=0) -> dict:
  plan, models, labels = _stage(config, stage, num_source)
  _, _, setup = stages.training_setup(stage, plan, models, labels)
  mesh = parallel.make_mesh()
  state = jax.device_put(
      state_lib.create(setup, models.g_variables, models.d_variables, 0),
      parallel.replicated(mesh))
  n, res = setup.real_per_step, config.model.resolution
  low, high = setup.fake_labels
  batch = jax.device_put(
      {
          'image':
              jnp.asarray(
                  np.random.default_rng(0).uniform(-1, 1, (n, res, res, 3)),
                  jnp.float32),
          'label':
              jnp.asarray(np.arange(n) % (high - low) + low, jnp.int32),
      }, parallel.data_sharding(mesh))
  step = steps.make_train_step(setup, mesh)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', float('nan')))
  state, metrics = compiled(state, batch)  # warm-up
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(num_steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  seconds = (time.perf_counter() - start) / num_steps
  return {
      'stage':
          stage,
      'devices':
          f'{jax.device_count()}x {jax.devices()[0].device_kind}',
      'cpu kernels':
          xla_cpu.convolution_kernels(),
      'batch':
          f'{setup.batch_size} x {setup.num_d_steps * setup.num_d_accumulations} D chunks',
      'compile_s':
          compile_seconds,
      's_per_iteration':
          seconds,
      'real_images_per_s':
          n / seconds,
      'gflop_per_iteration':
          flops / 1e9,
      'gflop_per_s':
          flops / 1e9 / seconds,
  }


def print_table(row: dict):
  keys = list(row)
  print('| ' + ' | '.join(keys) + ' |')
  print('|' + '---|' * len(keys))
  cells = [f'{v:.3g}' if isinstance(v, float) else str(v) for v in row.values()]
  print('| ' + ' | '.join(cells) + ' |')


def _run(args) -> int:
  print_table(
      measure(args.config, args.stage, args.steps, args.num_source_classes))
  sys.stdout.flush()
  return 0


def main(argv=None) -> int:
  return cli.main(
      _flags(cli.command_line(argv)),
      _run,
      argv,
      __doc__,
      errors=loop.USER_ERRORS)


if __name__ == '__main__':
  sys.exit(main())
