"""Every method on the same data and source model, one table: the paper's
Table 1 (and, with --methods=table2, its Table 2 ablation) on your data.

    python tools/compare_methods.py --config=configs/demo.py \\
        --workdir=DIR [--methods=scratch,transfergan,freezed,bsa,kp]

Config overrides work as in `cgt_jax.main`: `--config.transfer.steps=200`.
Each method (a method or variant name, or the groups `baselines`, `table2`,
`all`) runs the transfer stage from one source model in DIR/<method>; the
table goes to DIR/comparison.md (and is printed), with DIR/comparison.json,
DIR/comparison.png and DIR/samples.png beside it. What runs and how:
`cgt_jax.experiments.compare`. With --seeds=0,1,2 every method runs once
per seed from one shared source (DIR/seed_<s>/<method>) and the table gives
means with 95% intervals and the evaluator's own noise
(`cgt_jax.experiments.seeds`). A rerun skips finished runs and resumes an
interrupted one.

An unknown method, a bad config or data, a diverged source model and a
workdir another run holds are reported as one `error: ...` line (exit
status 2); a run stopped by SIGTERM exits with 75 (rerun to resume).
"""

import sys

from absl import flags

from cgt_jax.evaluation import comparison
from cgt_jax.experiments import compare
from cgt_jax.experiments import seeds as seeds_lib
from cgt_jax.runtime import cli
from cgt_jax.training import loop
from cgt_jax.transfer import methods

_ERRORS = (methods.MethodError,
           comparison.CompareError) + loop.USER_ERRORS + (ValueError,)


def _flags(argv: list) -> flags.FlagValues:
  """The comparison's flags, on a FlagValues of their own (`runtime.cli`).

  Args:
    argv: the command line being parsed (program name first): the config
      flag defines its `--config.*` override flags from it.
  """
  values = flags.FlagValues()
  cli.define_config(values, argv, lock_config=True)
  cli.define_path(
      'workdir',
      None,
      'Folder of the source and method runs.',
      values,
      required=True)
  flags.DEFINE_string(
      'methods',
      'baselines',
      'Comma-separated method or variant names, or a group: '
      "'baselines' (every method: scratch, transfergan, freezed, bsa, kp, "
      "minegan, hypermod), 'table2' (the "
      "Table 2 ablations), 'all'. Known: " + ', '.join(methods.NAMES),
      flag_values=values)
  flags.DEFINE_string(
      'quality_baseline',
      'bsa',
      'The method whose best value is the quality of the time-to-quality '
      'column (first iteration reaching it, x sooner than the baseline)',
      flag_values=values)
  flags.DEFINE_list(
      'seeds', [],
      'Run every method once per seed (e.g. 0,1,2) from one shared source '
      'model and report means with 95%% intervals (cgt_jax.experiments.'
      'seeds); empty: one run per method with --config.seed',
      flag_values=values)
  flags.DEFINE_integer(
      'noise_draws',
      5, 'With --seeds: latent draws of one checkpoint that measure the '
      "evaluator's own noise (0: not measured)",
      lower_bound=0,
      flag_values=values)
  return values


def _seeds(text_values) -> list:
  try:
    seeds = [int(value) for value in text_values]
  except ValueError:
    raise ValueError(f'--seeds={",".join(text_values)}: give whole numbers, '
                     'e.g. --seeds=0,1,2') from None
  if len(set(seeds)) != len(seeds):
    raise ValueError(f'--seeds={",".join(text_values)} repeats a seed: give '
                     'each once')
  return seeds


def _compare(args, names) -> str:
  if args.seeds:
    return seeds_lib.compare_over_seeds(args.config, args.workdir, names,
                                        _seeds(args.seeds),
                                        args.quality_baseline, args.noise_draws)
  return compare.compare_methods(args.config, args.workdir, names,
                                 args.quality_baseline)


def _run(args) -> int:
  # Names and seeds first: a typo fails before any training starts.
  names = methods.names_of(args.methods)
  if args.seeds:
    _seeds(args.seeds)
  # Stopped by SIGTERM: the same command resumes.
  status = cli.report(lambda: _compare(args, names), (loop.Preempted,),
                      loop.PREEMPTED_STATUS)
  if not status:
    print(f'wrote {args.workdir}/comparison.md, comparison.json, '
          'comparison.png and samples.png')
  return status


def main(argv=None) -> int:
  return cli.main(
      _flags(cli.command_line(argv)), _run, argv, __doc__, errors=_ERRORS)


if __name__ == '__main__':
  sys.exit(main())
