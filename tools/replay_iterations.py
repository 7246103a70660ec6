"""Replays recorded training iterations through cgt_jax's own train step.

    python tools/replay_iterations.py --generator G.pth --discriminator D.pth \\
        --draws iter.npz --settings iter.json --out after.npz

Loads the PyTorch checkpoints through the converter (as
tools/convert_biggan.py does), runs the T recorded iterations with the
jitted train step `cgt_jax.main` trains with, fed the recorded z, fake
labels and real batches, and writes `after.npz`: every G and D state-dict
entry after the last iteration under its PyTorch name, prefixed `G.` or
`D.` (all but the logging-only `sv0`), and `losses` `[T, 3]` = (G loss,
D_loss_real, D_loss_fake of the last D chunk), the values the authors'
training function returns. Formats of the settings and draws:
cgt_jax/training/replay.py. With `--reference-generator` and
`--reference-discriminator` it also prints the worst relative error against
the reference's state.

Any problem is reported as one `error: ...` line (exit status 2).
"""

import pathlib
import sys

from absl import flags
import numpy as np

from cgt_jax.training import replay
from cgt_jax.convert import biggan_pth
from cgt_jax.convert import pth_reader
from cgt_jax.runtime import cli

# (flag, help, what must exist: 'file' for inputs, None for the output)
_PATHS = (
    ('generator', 'G.pth before the iterations', 'file'),
    ('discriminator', 'D.pth before the iterations', 'file'),
    ('draws', 'npz of x, y_real, z_d, y_d, z_g, y_g', 'file'),
    ('settings', 'iter.json', 'file'),
    ('out', 'npz to write: the state after', None),
)


def _flags() -> flags.FlagValues:
  """The replay's flags, on a FlagValues of their own (`runtime.cli`)."""
  values = flags.FlagValues()
  for name, help_string, exists in _PATHS:
    cli.define_path(
        name, None, help_string, values, exists=exists, required=True)
  flags.DEFINE_float(
      'sn-eps',
      None, 'spectral-norm eps of the source model (not in a checkpoint; '
      'default as tools/convert_biggan.py: 1e-6 ImageNet-like, 1e-8 CIFAR)',
      flag_values=values)
  cli.define_path(
      'reference-generator',
      None,
      "the reference's G state after the iterations",
      values,
      exists='file')
  cli.define_path(
      'reference-discriminator',
      None,
      "the reference's D state after the iterations",
      values,
      exists='file')
  return values


def _load_draws(path):
  try:
    with np.load(path) as npz:
      return dict(npz)
  except (OSError, ValueError) as error:
    raise replay.ReplayError(f'cannot read draws {path}: {error}') from None


def _report(out, args):
  """Prints the worst relative errors against reference state dicts."""
  for prefix, path in (('G', args.reference_generator),
                       ('D', args.reference_discriminator)):
    if path is None:
      continue
    worst = replay.worst_errors(out, pth_reader.load_state_dict(path), prefix)
    for kind, (error, key) in worst.items():
      print(f'{prefix} {kind}: worst relative error {error:.2e} ({key})')


def run(args) -> pathlib.Path:
  settings = replay.read_settings(args.settings)
  draws = _load_draws(args.draws)
  overrides = {} if args.sn_eps is None else {'sn_eps': args.sn_eps}
  generator, discriminator = biggan_pth.load_pair(
      args.generator, args.discriminator, generator_overrides=overrides)
  models = replay.stage_models(settings, generator, discriminator)

  def progress(t, losses):
    print(
        f'iteration {t}/{settings.iterations}: G loss {losses[0]:.6g}, '
        f'D_loss_real {losses[1]:.6g}, D_loss_fake {losses[2]:.6g}',
        flush=True)

  state, losses = replay.replay(settings, models, draws, progress)
  out = replay.export(state, losses)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  np.savez(args.out, **out)
  _report(out, args)
  return args.out


def _run(args) -> int:
  print(f'wrote {run(args)}')
  return 0


def main(argv=None) -> int:
  # ReplayError, CheckpointReadError, StateDictMismatchError and
  # ArchitectureError name the file, key or shape and the fix.
  return cli.main(_flags(), _run, argv, __doc__, errors=(ValueError, OSError))


if __name__ == '__main__':
  sys.exit(main())
