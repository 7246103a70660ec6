"""Entry point: `python -m cgt_jax.main --config=CONFIG --workdir=DIR`.

Runs the stages of CONFIG (see configs/); `--config.x=y` overrides a value.
Rerunning the same command resumes an interrupted run.

Rerunning it on a workdir with progress resumes with the settings the run
started with: other settings that would change the results are refused
with the list of differences (`--accept_config_changes` accepts them);
more `num_steps` trains on, a finished stage included
(cgt_jax/training/resume_check.py).

Exit status: 0 finished; 2 a user mistake or a run that cannot go on (one
`error:` line on stderr naming the fix: a bad config value, a workdir
another run holds or that cannot be written, a full disk, a diverged run);
75 stopped by SIGTERM with the state saved (requeue: the same command
resumes).
"""

import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from cgt_jax.runtime import cli
from cgt_jax.runtime import process
from cgt_jax.training import loop

FLAGS = flags.FLAGS
flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, samples, '
    'TensorBoard logs and the exported models.')
config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file.', lock_config=True)
flags.DEFINE_bool(
    'distributed', False, 'Multi-host: call '
    'jax.distributed.initialize() first (TPU pods, SLURM, ... find the '
    'values below themselves).')
flags.DEFINE_string(
    'coordinator_address', None, 'With --distributed elsewhere: host:port '
    'of process 0, the same on every process.')
flags.DEFINE_integer('num_processes', None, 'With --distributed elsewhere.')
flags.DEFINE_integer('process_id', None, 'With --distributed elsewhere: '
                     '0..num_processes-1.')
flags.DEFINE_bool(
    'accept_config_changes', False, 'Resume a workdir with settings that '
    'differ from those it started with (refused otherwise: the error lists '
    'the differences); the old ones are kept as config.<time>.json.')
flags.DEFINE_bool(
    'verbose', False, "Also show other libraries' INFO lines (JAX's "
    "backend probing, orbax's saves) and TensorFlow's and XLA's C++ "
    'banners.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  process.configure(
      distributed=FLAGS.distributed,
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
      verbose=FLAGS.verbose)
  logging.info('cgt_jax: %d device(s) (%s), %d process(es)', jax.device_count(),
               jax.devices()[0].platform, jax.process_count())
  sys.exit(run(FLAGS.config, FLAGS.workdir, FLAGS.accept_config_changes))


def run(config, workdir, accept_config_changes: bool = False) -> int:
  """Trains `config` in `workdir`; returns the exit status (module doc)."""
  try:
    loop.train_and_evaluate(config, workdir, accept_config_changes)
  except loop.Preempted as stop:
    logging.warning('%s', stop)
    return loop.PREEMPTED_STATUS
  except (loop.USER_ERRORS + (ValueError,)) as error:
    # ValueError: bad values caught by model/layer checks.
    cli.print_error(error)
    return cli.USAGE_STATUS
  return 0


def _parse(argv):
  """absl's parsing of the flags above, with cgt_jax's convention
  (`runtime.cli`): a usage mistake (an unknown `--config.` field, a bad
  value, a missing flag) is one `error:` line and exit status 2."""
  try:
    cli.parse(FLAGS, argv[1:], __doc__)
  except cli.Exit as stop:
    sys.exit(stop.status)
  return argv[:1]


if __name__ == '__main__':
  app.run(main, flags_parser=_parse)
