"""Converts Inception-v3 `.pth` weights into a cgt_jax evaluation directory.

    python tools/convert_inception.py --variant fid \\
        --weights pt_inception-2015-12-05-6726825d.pth --out inception_fid
    python tools/convert_inception.py --variant torchvision \\
        --weights inception_v3_google-0cc3c7bd.pth --out inception_tv

Where the files come from and how they are verified: docs/EVALUATION.md.
Any problem with the file is reported on one line and exits with status 1.
"""

import argparse
import sys
import warnings

from cgt_jax.convert import keymap
from cgt_jax.convert import pth_reader
from cgt_jax.evaluation import inception
from cgt_jax.evaluation import inception_convert


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--weights', required=True, help='the .pth file')
  parser.add_argument(
      '--variant', required=True, choices=sorted(inception.VARIANTS))
  parser.add_argument('--out', required=True, help='directory to write')
  parser.add_argument(
      '--allow-unofficial',
      action='store_true',
      help='accept weights whose sha256 is not that of the published file '
      '(numbers will not be comparable with published ones)')
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  errors = (inception_convert.WeightsFileError, pth_reader.CheckpointReadError,
            keymap.StateDictMismatchError, OSError)
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always')
      variables, metadata = inception_convert.load_pth(args.weights,
                                                       args.variant,
                                                       args.allow_unofficial)
    for warning in caught:
      print(f'warning: {warning.message}', file=sys.stderr)
    directory = inception_convert.save(args.out, variables, metadata)
  except errors as error:
    print(f'error: {str(error).splitlines()[0]}', file=sys.stderr)
    return 1
  state = 'official' if metadata['official'] else 'UNOFFICIAL'
  print(f'wrote {directory} ({args.variant}, {state} weights, sha256 '
        f'{metadata["source_sha256"]})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
