"""Evaluates a finished stage's exported generator, outside training.

    python tools/evaluate.py --workdir DIR [--stage transfer]
        [--num_samples N] [--inception_dir D]

Rebuilds the run's config from DIR/config.json, loads its data and
DIR/<stage>/model, and runs the same evaluator as training
(`cgt_jax.evaluation.saved_stage.evaluate`): the domain-classifier metrics,
or FID/KMMD/IS with Inception weights. Prints a table and writes
DIR/<stage>/evaluation.json. The default stage is the last finished one
(finetune, transfer, pretrain).

Any problem with the workdir is reported as one `error: ...` line (exit
status 2).
"""

import sys

from absl import flags

from cgt_jax import default_config
from cgt_jax.data import datasets
from cgt_jax.evaluation import saved_stage
from cgt_jax.models import model_io
from cgt_jax.runtime import cli
from cgt_jax.transfer import stages

_ERRORS = (saved_stage.EvaluateError, datasets.DatasetError,
           model_io.ModelDirError, stages.ConfigError)


def _flags() -> flags.FlagValues:
  """The evaluation's flags, on a FlagValues of their own (`runtime.cli`)."""
  values = flags.FlagValues()
  cli.define_path(
      'workdir',
      None,
      'a cgt_jax.main workdir',
      values,
      exists='dir',
      required=True)
  flags.DEFINE_enum(
      'stage',
      None,
      default_config.STAGES,
      'default: the last finished stage',
      flag_values=values)
  flags.DEFINE_integer(
      'num_samples',
      None,
      'default: config.eval.num_samples',
      flag_values=values)
  flags.DEFINE_string(
      'inception_dir',
      None, 'FID/KMMD/IS with these Inception weights instead of the '
      "run's config.eval.inception_dir ('' for the domain classifier)",
      flag_values=values)
  return values


def _run(args) -> int:
  stage, metrics = saved_stage.evaluate(args.workdir, args.stage,
                                        args.num_samples, args.inception_dir)
  print(saved_stage.format_table(stage, metrics))
  print(f'wrote {args.workdir / stage / "evaluation.json"}')
  return 0


def main(argv=None) -> int:
  return cli.main(_flags(), _run, argv, __doc__, errors=_ERRORS)


if __name__ == '__main__':
  sys.exit(main())
