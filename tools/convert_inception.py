"""Converts Inception-v3 `.pth` weights into a cgt_jax evaluation directory.

    python tools/convert_inception.py --variant fid \\
        --weights pt_inception-2015-12-05-6726825d.pth --out inception_fid
    python tools/convert_inception.py --variant torchvision \\
        --weights inception_v3_google-0cc3c7bd.pth --out inception_tv

Where the files come from and how they are verified: docs/EVALUATION.md.
Any problem with the file is reported on one line and exits with status 1;
a usage mistake (unknown or missing flag) with status 2.
"""

import sys
import warnings

from absl import flags

from cgt_jax.convert import keymap
from cgt_jax.convert import pth_reader
from cgt_jax.evaluation import inception
from cgt_jax.evaluation import inception_convert
from cgt_jax.runtime import cli

# A bad weights file exits with status 1 (as this tool always did); a usage
# mistake with 2, as every tool (cgt_jax.runtime.cli).
_FILE_ERRORS = (inception_convert.WeightsFileError,
                pth_reader.CheckpointReadError, keymap.StateDictMismatchError,
                OSError)


def _flags() -> flags.FlagValues:
  """The converter's flags, on a FlagValues of their own (`runtime.cli`)."""
  values = flags.FlagValues()
  cli.define_path(
      'weights', None, 'the .pth file', values, exists='file', required=True)
  flags.DEFINE_enum(
      'variant',
      None,
      sorted(inception.VARIANTS),
      'which Inception-v3',
      flag_values=values,
      required=True)
  flags.DEFINE_string(
      'out', None, 'directory to write', flag_values=values, required=True)
  flags.DEFINE_bool(
      'allow-unofficial',
      False, 'accept weights whose sha256 is not that of the published file '
      '(numbers will not be comparable with published ones)',
      flag_values=values)
  return values


def _run(args) -> int:
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    variables, metadata = inception_convert.load_pth(args.weights, args.variant,
                                                     args.allow_unofficial)
  for warning in caught:
    print(f'warning: {warning.message}', file=sys.stderr)
  directory = inception_convert.save(args.out, variables, metadata)
  state = 'official' if metadata['official'] else 'UNOFFICIAL'
  print(f'wrote {directory} ({args.variant}, {state} weights, sha256 '
        f'{metadata["source_sha256"]})')
  return 0


def main(argv=None) -> int:
  return cli.main(_flags(), _run, argv, __doc__, errors=_FILE_ERRORS, status=1)


if __name__ == '__main__':
  sys.exit(main())
