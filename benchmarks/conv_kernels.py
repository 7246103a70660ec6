"""Times the 3x3 convolutions of the CIFAR BigGAN in JAX and in PyTorch.

A cgt_jax training iteration is mostly convolutions (3,580 GFLOP per KP
iteration at ch 64), so how fast it can get against the PyTorch reference is
bounded by how fast each framework's convolution kernels are. This prints,
for every 256 -> 256 channel 3x3 convolution shape the iteration uses
(batch 100 = D on [fake; real], batch 50 = G and D on fakes), the forward,
input-gradient and kernel-gradient times of XLA:CPU (with whatever kernels
cgt_jax selects, see `cgt_jax/xla_cpu.py`) and of PyTorch (oneDNN), and
their ratio, then sums each library's times over the passes one KP-stage
iteration runs: the time that iteration spends in these convolutions alone.
Runs alternate between the two libraries, shape by shape.

    python benchmarks/conv_kernels.py               # JAX and, if installed, torch
    python benchmarks/conv_kernels.py --repeats=9 --threads=2

PyTorch is optional (`pip install torch`); without it only JAX is timed.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import cgt_jax  # noqa: F401  (sets the XLA:CPU kernel flags before JAX starts)
from cgt_jax.runtime import xla_cpu
from cgt_jax.models import layers

CHANNELS = 256
PASSES = ('forward', 'input grad', 'kernel grad')
# How often one CIFAR KP-stage iteration (ch 64: 256 channels) runs each pass
# of a 256 -> 256 3x3 convolution, per (batch, pixels). Batch 100: D on
# [fake; real] in each of the 4 D chunks (1 conv at 32 px, 2 at 16, 4 at 8;
# forward, input and kernel gradient). Batch 50: 5 G forwards (4 chunks + the
# G step; 2 convs per resolution), D's forward and input gradient in the G
# step, and G's input gradients (its kernels are frozen). The 1x1 shortcuts
# and the 3-channel convolutions at both ends (about 3% of the FLOPs) are
# left out. The counts match the 256 -> 256 convolutions of XLA's compiled step.
KP_ITERATION_PASSES = {
    (100, 32): (4, 4, 4),
    (50, 32): (11, 3, 0),
    (100, 16): (8, 8, 8),
    (50, 16): (12, 4, 0),
    (100, 8): (16, 16, 16),
    (50, 8): (14, 6, 0),
}


def median_seconds(fn, repeats):
  fn()  # warm-up (compilation, oneDNN primitive creation)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def make_inputs(batch, pixels, channels=CHANNELS, seed=0):
  """NHWC input, HWIO kernel and NHWC output gradient, float32 numpy."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, pixels, pixels, channels), np.float32)
  w = 0.02 * rng.standard_normal((3, 3, channels, channels), np.float32)
  g = rng.standard_normal((batch, pixels, pixels, channels), np.float32)
  return x, w, g


def jax_passes(x, w, g):
  """Forward, input gradient and kernel gradient as jitted zero-arg calls."""

  def conv(x, w):
    return layers.conv2d_same(x, w, jnp.float32)

  def input_grad(w, g):
    return jax.vjp(lambda t: conv(t, w), jnp.zeros_like(g))[1](g)[0]

  def kernel_grad(x, g):
    return jax.vjp(lambda k: conv(x, k), jnp.zeros_like(w))[1](g)[0]

  x, w, g = map(jnp.asarray, (x, w, g))
  calls = ((conv, (x, w)), (input_grad, (w, g)), (kernel_grad, (x, g)))
  return [
      lambda f=jax.jit(f), a=args: jax.block_until_ready(f(*a))
      for f, args in calls
  ]


def torch_passes(torch, x, w, g):
  """The same three passes in PyTorch (NCHW / OIHW), as zero-arg calls."""
  x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
  w = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()
  g = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous()
  conv2d, grad = torch.nn.functional.conv2d, torch.nn.grad
  return [
      lambda: conv2d(x, w, padding=1),
      lambda: grad.conv2d_input(x.shape, w, g, padding=1),
      lambda: grad.conv2d_weight(x, w.shape, g, padding=1),
  ]


def time_passes(calls, repeats):
  return [median_seconds(call, repeats) for call in calls]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument(
      '--threads',
      type=int,
      default=2,
      help='PyTorch intra-op threads (XLA uses every core).')
  args = parser.parse_args()
  try:
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(args.threads)
  except ImportError:
    torch = None
    print('PyTorch not installed: timing JAX only.')
  kernels = xla_cpu.convolution_kernels()
  print(f'| batch x px | pass | per KP iteration | JAX ({kernels}) ms |'
        ' JAX GFLOP/s | PyTorch ms | PyTorch GFLOP/s | PyTorch / JAX time |')
  print('|---|---|---|---|---|---|---|---|')
  totals = np.zeros(2)
  for (batch, pixels), counts in KP_ITERATION_PASSES.items():
    gflop = 2 * batch * pixels * pixels * CHANNELS * CHANNELS * 9 / 1e9
    inputs = make_inputs(batch, pixels)
    jax_s = time_passes(jax_passes(*inputs), args.repeats)
    if torch:
      with torch.no_grad():
        torch_s = time_passes(torch_passes(torch, *inputs), args.repeats)
    else:
      torch_s = [float('nan')] * 3
    totals += np.dot(counts, np.stack([jax_s, torch_s], axis=1))
    for name, count, js, ts in zip(PASSES, counts, jax_s, torch_s):
      print(f'| {batch} x {pixels} | {name} | {count} | {1e3 * js:.1f} |'
            f' {gflop / js:.0f} | {1e3 * ts:.1f} | {gflop / ts:.0f} |'
            f' {ts / js:.2f} |')
  print(f'\nOne KP iteration\'s 256-channel 3x3 convolutions, summed: JAX'
        f' {totals[0]:.1f} s, PyTorch {totals[1]:.1f} s'
        f' ({totals[1] / totals[0]:.2f}x).')


if __name__ == '__main__':
  main()
