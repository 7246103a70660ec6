"""Compares the evaluations of training runs: a table and a plot.

    python tools/compare.py RUN_DIR... [--stage transfer] [--metric domain_fd]
        [--out DIR]

Reads RUN_DIR/<stage>/eval_history.json and summary.json of each run
(a `cgt_jax.main` workdir) and writes DIR/comparison.md, one row per run
(best value, iteration of the best value, final value, number of
evaluations, wall time; the shape of the paper's Table 1), and
DIR/comparison.png, the metric against the iteration for every run with
its best point marked (the paper's Fig. 5). The table is printed too.
"""

import argparse
import pathlib
import sys

from cgt_jax.evaluation import comparison


def parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('runs', nargs='+', help='cgt_jax.main workdirs')
  parser.add_argument(
      '--stage',
      default='transfer',
      choices=('pretrain', 'transfer', 'finetune'))
  parser.add_argument(
      '--metric',
      help="e.g. fid, kmmd, is, domain_fd, domain_kmmd, class_accuracy "
      "(default: 'fid' if evaluated with Inception, else 'domain_fd')")
  parser.add_argument(
      '--out',
      type=pathlib.Path,
      default=pathlib.Path('.'),
      help='folder for comparison.md and comparison.png')
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse(argv)
  try:
    text = comparison.compare(args.runs, args.stage, args.metric, args.out)
  except comparison.CompareError as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  print(text)
  print(f'wrote {args.out / "comparison.md"} and '
        f'{args.out / "comparison.png"}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
