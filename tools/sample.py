"""Sample images from a cgt_jax model directory.

A grid, one row per class (default: every new class, else the source ones):

    python tools/sample.py --checkpoint WORKDIR/transfer/model --grid out.png

Exactly the given latents (`z` [B, dim_z], `y` [B] GLOBAL labels: source
classes 0..N-1, new class k = N + k), as float32 images in [-1, 1]:

    python tools/sample.py --checkpoint DIR --latents in.npz --out out.npz

`--mode train` runs one train-mode forward (batch statistics; the reference
CIFAR protocol), `eval` uses the running statistics. `--checkpoint` may also
be a training workdir: its last completed stage's model is used.
"""

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from cgt_jax.models import model_io
from cgt_jax.training import steps
from cgt_jax.analysis import visualize
from cgt_jax.models import biggan


def _model_dir(path: pathlib.Path) -> pathlib.Path:
  """A model directory, or the last completed stage's model of a workdir."""
  if (path / model_io.ARCHITECTURE_FILE).is_file():
    return path
  for stage in ('finetune', 'transfer', 'pretrain'):
    if (path / stage / 'model' / model_io.ARCHITECTURE_FILE).is_file():
      return path / stage / 'model'
  raise model_io.ModelDirError(
      f'{path} is neither a model directory nor a workdir with a finished '
      'stage: pass WORKDIR/<stage>/model or a tools/convert_biggan.py output')


def _read_latents(path, generator):
  try:
    with np.load(path) as data:
      z, y = np.asarray(data['z'], np.float32), np.asarray(data['y'])
  except (OSError, KeyError, ValueError) as error:
    raise ValueError(f'{path}: needs arrays z [B, dim_z] and y [B] '
                     f'({error})') from None
  if z.ndim != 2 or z.shape[1] != generator.dim_z or y.shape != z.shape[:1]:
    raise ValueError(f'{path}: z must be [B, {generator.dim_z}] and y [B]; '
                     f'got z {z.shape}, y {y.shape}')
  biggan.check_labels(y, generator.num_labels)
  return jnp.asarray(z), jnp.asarray(y.astype(np.int32))


def _grid_latents(generator, columns, seed):
  low = generator.num_classes if generator.num_new_classes else 0
  labels = np.repeat(np.arange(low, generator.num_labels), columns)
  z = jax.random.normal(jax.random.key(seed), (len(labels), generator.dim_z))
  return z, jnp.asarray(labels.astype(np.int32)), generator.num_labels - low


def run(args) -> np.ndarray:
  generator, _, variables = model_io.load(_model_dir(args.checkpoint))
  if args.latents:
    z, labels = _read_latents(args.latents, generator)
  else:
    z, labels, rows = _grid_latents(generator, args.columns, args.seed)
  sample = jax.jit(lambda v, z, y: steps.generate(
      generator, v, z, y, train=args.mode == 'train'))
  images = sample(variables['generator'], z, labels)
  images = np.asarray(images[0] if args.mode == 'train' else images, np.float32)
  if args.out:
    np.savez(args.out, images=images)
    print(f'wrote {args.out}: images {images.shape}')
  if args.grid or not (args.out or args.latents):
    path = args.grid or args.checkpoint / 'samples.png'
    rows = rows if not args.latents else 1
    visualize.save_png(visualize.grid(images, rows), path, scale=args.scale)
    print(f'wrote {path}')
  return images


def parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
      '--checkpoint',
      type=pathlib.Path,
      required=True,
      help='model directory (or a training workdir)')
  parser.add_argument(
      '--latents',
      type=pathlib.Path,
      help='npz with z [B, dim_z] and global labels y [B]')
  parser.add_argument(
      '--out',
      type=pathlib.Path,
      help='npz to write: images [B, H, W, 3] in [-1, 1]')
  parser.add_argument('--grid', type=pathlib.Path, help='PNG grid to write')
  parser.add_argument('--mode', choices=('eval', 'train'), default='eval')
  parser.add_argument(
      '--columns', type=int, default=8, help='samples per class in the grid')
  parser.add_argument(
      '--scale',
      type=int,
      default=2,
      help='enlarge the grid PNG by this factor')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument(
      '--precision',
      default='highest',
      choices=('default', 'high', 'highest'),
      help="matmul/conv precision on GPU/TPU ('highest' = "
      'float32, as the PyTorch reference)')
  return parser.parse_args(argv)


def main(argv=None):
  args = parse(argv)
  jax.config.update('jax_default_matmul_precision', args.precision)
  try:
    run(args)
  except (ValueError, model_io.ModelDirError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
