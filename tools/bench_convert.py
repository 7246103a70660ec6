"""Benchmarks tools/convert_biggan.py: wall time and peak memory.

    python tools/bench_convert.py [--dump biggan_pytorch_I128_ch96] [--repeat 2]

Writes a `.pth` pair of RANDOM weights with the real shapes of a reference
key dump (tests/fixtures/keys/<dump>_G_D_keys.tsv; default: the full-size
ImageNet 128 px BigGAN, about 158M parameters) into a temporary folder, with
a small numpy-only writer of PyTorch's zip format (no torch needed), then
runs the converter in a fresh subprocess per repeat and prints a table:
wall time (process start to exit, imports included) and peak RSS of that
process (`os.wait4` rusage), also as a multiple of the checkpoint size.
"""

import collections
import os
import pathlib
import pickle
import subprocess
import sys
import tempfile
import time
import zipfile

from absl import flags
import numpy as np

from cgt_jax.runtime import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
KEYS = ROOT / 'tests' / 'fixtures' / 'keys'


class _Global:
  """Pickles as a reference to `module.name` without importing `module`."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle requires reduce callables be callable
    raise NotImplementedError


class _Storage:
  """A tensor's storage: pickled as a persistent id, bytes stored apart."""

  def __init__(self, key: str, numel: int):
    self.key, self.numel = key, numel


class _Tensor:
  """Pickles as `torch._utils._rebuild_tensor_v2(storage, 0, size, stride)`."""

  def __init__(self, storage: _Storage, shape: tuple):
    self.storage, self.shape = storage, shape

  def __reduce__(self):
    stride = [int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape))]
    return (_Global('torch._utils',
                    '_rebuild_tensor_v2'), (self.storage, 0, tuple(self.shape),
                                            tuple(stride), False,
                                            collections.OrderedDict()))


class _TorchPickler(pickle._Pickler):  # the Python pickler allows dispatch
  dispatch = dict(pickle._Pickler.dispatch)

  def save_global_ref(self, obj):
    self.write(pickle.GLOBAL + f'{obj.module}\n{obj.name}\n'.encode('ascii'))
    self.memoize(obj)

  dispatch[_Global] = save_global_ref

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ('storage', _Global('torch',
                                 'FloatStorage'), obj.key, 'cpu', obj.numel)
    return None


def write_state_dict(path, arrays: dict) -> None:
  """Writes `{key: float32 array}` as `torch.save(state_dict)` would (zip)."""
  tensors, storages = collections.OrderedDict(), []
  for index, (key, array) in enumerate(arrays.items()):
    array = np.asarray(array, dtype='<f4', order='C')  # keeps 0-d shapes
    tensors[key] = _Tensor(_Storage(str(index), array.size), array.shape)
    storages.append(array)
  pickled = pathlib.Path(path).with_suffix('.pkl.tmp')
  with open(pickled, 'wb') as file:
    _TorchPickler(file, protocol=2).dump(tensors)
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as archive:
    archive.write(pickled, 'archive/data.pkl')
    archive.writestr('archive/byteorder', 'little')
    for index, array in enumerate(storages):
      archive.writestr(f'archive/data/{index}', array.tobytes())
    archive.writestr('archive/version', '3\n')
  pickled.unlink()


def read_dump(name: str) -> dict:
  """{'G': {key: shape}, 'D': {...}} of a reference key dump."""
  shapes = {'G': {}, 'D': {}}
  for line in (KEYS / f'{name}_G_D_keys.tsv').read_text().splitlines():
    net, key, shape = line.split('\t')[:3]
    if key != 'TOTAL_PARAMS':
      shapes[net][key] = tuple(
          int(s) for s in shape.strip('()').split(',') if s)
  return shapes


def random_state_dict(shapes: dict, seed: int) -> dict:
  """Random float32 weights: N(0, 0.02), positive running variances."""
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape in shapes.items():
    value = rng.standard_normal(shape, dtype=np.float32) * 0.02
    if key.endswith(('stored_var', 'running_vars')):
      value = np.abs(value) + 1
    state[key] = value
  return state


def run_converter(args: list) -> tuple:
  """`(wall seconds, peak RSS bytes)` of one converter process."""
  start = time.perf_counter()
  process = subprocess.Popen(
      [sys.executable,
       str(ROOT / 'tools' / 'convert_biggan.py')] + args)
  _, status, usage = os.wait4(process.pid, 0)
  wall = time.perf_counter() - start
  process.returncode = os.waitstatus_to_exitcode(status)
  if process.returncode:
    raise SystemExit(f'converter failed with status {process.returncode}')
  return wall, usage.ru_maxrss * 1024  # Linux reports KiB


def _flags() -> flags.FlagValues:
  """The benchmark's flags, on a FlagValues of their own (`runtime.cli`)."""
  values = flags.FlagValues()
  flags.DEFINE_string(
      'dump',
      'biggan_pytorch_I128_ch96',
      'reference key dump: tests/fixtures/keys/<dump>_G_D_keys.tsv',
      flag_values=values)
  flags.DEFINE_integer(
      'repeat', 2, 'converter runs to time', flag_values=values)
  return values


def _run(args) -> int:
  shapes = read_dump(args.dump)
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    params = 0
    for net in ('G', 'D'):
      state = random_state_dict(shapes[net], seed=len(net))
      params += sum(v.size for v in state.values())
      write_state_dict(tmp / f'{net}.pth', state)
      del state
    size = sum((tmp / f'{net}.pth').stat().st_size for net in ('G', 'D'))
    print(f'{args.dump}: G + D, {params / 1e6:.1f}M values, checkpoint '
          f'{size / 2**20:.0f} MiB\n')
    print('| run | wall time (s) | peak RSS (MiB) | peak RSS / checkpoint |')
    print('|---|---|---|---|')
    for run in range(args.repeat):
      wall, peak = run_converter([
          '--generator',
          str(tmp / 'G.pth'), '--discriminator',
          str(tmp / 'D.pth'), '--out',
          str(tmp / f'out{run}')
      ])
      print(f'| {run + 1} | {wall:.1f} | {peak / 2**20:.0f} | '
            f'{peak / size:.2f} |')
  return 0


def main(argv=None) -> int:
  try:
    args = cli.parse(_flags(), argv, __doc__)
  except cli.Exit as stop:
    return stop.status
  # No process.configure(): this process runs no JAX, and a JAX backend
  # started here would hold GPU memory that the timed converters need (each
  # converter process configures itself).
  return cli.run(lambda: _run(args), errors=(OSError,))


if __name__ == '__main__':
  sys.exit(main())
