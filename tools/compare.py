"""Compares the evaluations of training runs: a table and a plot.

    python tools/compare.py RUN_DIR... [--stage finetune] [--metric domain_fd]
        [--out DIR]

Reads RUN_DIR/<stage>/eval_history.json and summary.json of each run
(a `cgt_jax.main` workdir) and writes DIR/comparison.md, one row per run
(best value, iteration of the best value, final value, number of
evaluations, wall time; the shape of the paper's Table 1), and
DIR/comparison.png, the metric against the iteration for every run with
its best point marked (the paper's Fig. 5). The stage, the table and the
files written are printed too.

The default stage is the runs' last evaluated one: the last of their
configured stages (config.json) with an eval_history.json in every run,
which is the stage a run's own WORKDIR/comparison.md reports. DIR defaults
to the working directory.
"""

import sys

from absl import app
from absl import flags

from cgt_jax import default_config
from cgt_jax.evaluation import comparison
from cgt_jax.runtime import cli


def _flags() -> flags.FlagValues:
  """The comparison's flags, on a FlagValues of their own (`runtime.cli`)."""
  values = flags.FlagValues()
  flags.DEFINE_enum(
      'stage',
      None,
      default_config.STAGES,
      "the stage to compare (default: the runs' last evaluated stage, the "
      'last of their configured stages with an eval_history.json in every '
      'run)',
      flag_values=values)
  flags.DEFINE_string(
      'metric',
      None, 'e.g. fid, kmmd, is, domain_fd, domain_kmmd, class_accuracy '
      "(default: 'fid' if evaluated with Inception, else 'domain_fd')",
      flag_values=values)
  cli.define_path(
      'out', '.', "folder for comparison.md and comparison.png "
      "('.': the working directory)", values)
  return values


def _run(args) -> int:
  if not args.runs:
    raise app.UsageError('no RUN_DIR: name the cgt_jax.main workdirs to '
                         'compare')
  runs = [cli.check_exists(run, 'dir') for run in args.runs]
  stage = args.stage or comparison.default_stage(runs)
  text = comparison.compare(runs, stage, args.metric, args.out)
  chosen = '' if args.stage else " (the runs' last evaluated stage)"
  print(f'stage: {stage}{chosen}')
  print(text)
  print(f'wrote {args.out / "comparison.md"} and '
        f'{args.out / "comparison.png"}')
  return 0


def main(argv=None) -> int:
  return cli.main(
      _flags(),
      _run,
      argv,
      __doc__,
      errors=(comparison.CompareError,),
      positional='runs')


if __name__ == '__main__':
  sys.exit(main())
