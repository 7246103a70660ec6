"""Continual class extension: add classes to an extended generator, again
and again, and compare with adding them all at once.

    python tools/extend_continually.py --config=configs/demo_continual.py \\
        --workdir=DIR [--one_shot=false]

`config.continual_steps` splits `config.data.target_classes` into the
classes each step adds, in order. Step k trains in DIR/step_<k> from step
k - 1's model (step 1 from the source model); DIR/one_shot transfers all
of them at once. Every model is then scored alike on each step's classes
and on all of them: DIR/continual.md (printed), continual.json,
continual_samples.png and continual_similarity.png
(`cgt_jax.experiments.continual`). Config overrides work as in
`cgt_jax.main`. A rerun skips finished runs and resumes an interrupted one.

A bad config, data or step split and a workdir another run holds are
reported as one `error: ...` line (exit status 2); a run stopped by SIGTERM
exits with 75 (rerun to resume).
"""

import sys

from absl import flags

from cgt_jax.experiments import continual
from cgt_jax.runtime import cli
from cgt_jax.training import loop

_ERRORS = (continual.ContinualError,) + loop.USER_ERRORS


def _flags(argv: list) -> flags.FlagValues:
  """The tool's flags, on a FlagValues of their own (`runtime.cli`)."""
  values = flags.FlagValues()
  cli.define_config(values, argv, lock_config=True)
  cli.define_path(
      'workdir', None, 'Folder of the step runs.', values, required=True)
  flags.DEFINE_boolean(
      'one_shot',
      True,
      'Also transfer all the new classes at once, for comparison',
      flag_values=values)
  return values


def _run(args) -> int:
  continual.step_classes(args.config)  # a bad split fails before training
  # Stopped by SIGTERM: the same command resumes.
  status = cli.report(
      lambda: continual.run(args.config, args.workdir, args.one_shot),
      (loop.Preempted,), loop.PREEMPTED_STATUS)
  if not status:
    print(f'wrote {args.workdir}/continual.md, continual.json, '
          'continual_samples.png and continual_similarity.png')
  return status


def main(argv=None) -> int:
  return cli.main(
      _flags(cli.command_line(argv)), _run, argv, __doc__, errors=_ERRORS)


if __name__ == '__main__':
  sys.exit(main())
