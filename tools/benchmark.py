"""Times the jitted train step of a config on whatever devices exist.

    python tools/benchmark.py --config=configs/cifar100_80to20.py \\
        --stage=transfer --steps=5

Builds the stage's models with random weights (no dataset, no source
checkpoint needed: the class counts come from the config), compiles the
train step, runs it `--steps` times on random data and prints a table
(`cgt_jax.experiments.step_timing`): iterations/s, real images/s, XLA FLOPs
per iteration, the achieved FLOP/s and the peak device memory. Every
accelerator setting at once: benchmarks/device_check.sh. Config overrides
work as in main:
`--config.transfer.batch_size=64`, `--config.dtype=bfloat16`,
`--config.remat=True`.
"""

import sys

from absl import flags

from cgt_jax.experiments import step_timing
from cgt_jax.runtime import cli
from cgt_jax.training import loop


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


def _run(args) -> int:
  row = step_timing.measure(args.config, args.stage, args.steps,
                            args.num_source_classes)
  print(step_timing.markdown_table([row]))
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
