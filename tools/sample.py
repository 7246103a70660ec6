"""Sample images from a cgt_jax model directory.

A grid, one row per class (default: every new class, else the source ones),
written to `--grid` (default: samples.png in the working directory):

    python tools/sample.py --checkpoint WORKDIR/transfer/model --grid out.png

Exactly the given latents (`z` [B, dim_z], `y` [B] GLOBAL labels: source
classes 0..N-1, new class k = N + k), as float32 images in [-1, 1]:

    python tools/sample.py --checkpoint DIR --latents in.npz --out out.npz

`--mode train` runs one train-mode forward (batch statistics; the reference
CIFAR protocol), `eval` uses the running statistics. `--checkpoint` may also
be a training workdir: its last completed stage's model is used. Every file
written is printed; nothing is written into the model directory.
"""

import pathlib
import sys
import zipfile

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from cgt_jax.models import model_io
from cgt_jax.training import steps
from cgt_jax.analysis import visualize
from cgt_jax.models import biggan
from cgt_jax.runtime import cli

# The grid's file name when neither --grid nor --out/--latents is given.
DEFAULT_GRID = 'samples.png'


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
  # Not np.load's own error: for a file that is not .npz it is advice on
  # loading pickles, which is no way to fix this.
  if not pathlib.Path(path).is_file():
    raise ValueError(f'{path}: no such file: give the .npz of z and y')
  if not zipfile.is_zipfile(path):
    raise ValueError(f'{path} is not an .npz file: save the latents with '
                     'numpy.savez(path, z=z, y=y)')
  try:
    with np.load(path) as data:
      z, y = np.asarray(data['z'], np.float32), np.asarray(data['y'])
  except (OSError, KeyError, ValueError) as error:
    raise ValueError(f'{path}: needs arrays z [B, dim_z] and y [B] '
                     f'({error})') from None
  if z.ndim != 2 or z.shape[1] != generator.dim_z or y.shape != z.shape[:1]:
    raise ValueError(f'{path}: z must be [B, {generator.dim_z}] and y [B]; '
                     f'got z {z.shape}, y {y.shape}')
  bad = np.flatnonzero(~np.all(np.isfinite(z), axis=1))
  if bad.size:
    raise ValueError(f'{path}: z has NaN or infinite values in rows '
                     f'{bad[:5].tolist()}: give finite latents')
  y = _integer_labels(path, y)
  biggan.check_labels(y, generator.num_labels)
  return jnp.asarray(z), jnp.asarray(y.astype(np.int32))


def _integer_labels(path, y):
  """y as integers; whole-valued floats pass, anything else is refused."""
  if np.issubdtype(y.dtype, np.integer):
    return y
  numeric = np.issubdtype(y.dtype, np.floating)
  whole = numeric and np.all(np.isfinite(y)) and np.all(y == np.round(y))
  if not whole:
    shown = y[:5].tolist() if numeric else str(y.dtype)
    raise ValueError(f'{path}: y must hold whole class labels, got {shown}: '
                     'save integer labels')
  return y.astype(np.int64)


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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, images=images)
    print(f'wrote {args.out}: images {images.shape}')
  if args.grid or not (args.out or args.latents):
    # The default lands where the command runs, not in the model directory:
    # that is an input (a converter output, a run's export), not a scratch
    # folder.
    path = args.grid or pathlib.Path.cwd() / DEFAULT_GRID
    rows = rows if not args.latents else 1
    visualize.save_png(visualize.grid(images, rows), path, scale=args.scale)
    print(f'wrote {path}')
  return images


def _flags() -> flags.FlagValues:
  """The sampler's flags, on a FlagValues of their own (`runtime.cli`)."""
  values = flags.FlagValues()
  cli.define_path(
      'checkpoint',
      None,
      'model directory (or a training workdir)',
      values,
      exists='dir',
      required=True)
  cli.define_path('latents', None,
                  'npz with z [B, dim_z] and global labels y [B]', values)
  cli.define_path('out', None, 'npz to write: images [B, H, W, 3] in [-1, 1]',
                  values)
  cli.define_path(
      'grid', None, f'PNG grid to write (default: {DEFAULT_GRID} in the '
      'working directory, unless --out or --latents is given)', values)
  flags.DEFINE_enum(
      'mode', 'eval', ('eval', 'train'), 'batch norm mode', flag_values=values)
  flags.DEFINE_integer(
      'columns', 8, 'samples per class in the grid', flag_values=values)
  flags.DEFINE_integer(
      'scale', 2, 'enlarge the grid PNG by this factor', flag_values=values)
  flags.DEFINE_integer(
      'seed', 0, 'seed of the grid latents', flag_values=values)
  flags.DEFINE_enum(
      'precision',
      'highest', ('default', 'high', 'highest'),
      "matmul/conv precision on GPU/TPU ('highest' = float32, as the PyTorch "
      'reference)',
      flag_values=values)
  return values


def _run(args) -> int:
  jax.config.update('jax_default_matmul_precision', args.precision)
  run(args)
  return 0


def main(argv=None) -> int:
  return cli.main(
      _flags(),
      _run,
      argv,
      __doc__,
      errors=(ValueError, model_io.ModelDirError))


if __name__ == '__main__':
  sys.exit(main())
