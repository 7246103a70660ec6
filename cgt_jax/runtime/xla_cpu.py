"""XLA:CPU settings that make BigGAN's convolutions faster.

XLA:CPU can hand dot and convolution fusions to YNNPACK (XNNPACK's
successor, built into jaxlib) instead of its own Eigen kernels. That is
opt-in (`--xla_cpu_experimental_ynn_fusion_type`), and on BigGAN's wide
convolutions it pays: a 3x3, 256-channel convolution at 32 px runs 1.3x
faster forward and its kernel gradient about 3x faster. `dot` alone makes
XLA:CPU's reductions (batch-norm statistics, bias gradients) about 15x
slower (they become strided reduce-windows), so `reduce` goes with it.
The reference CIFAR transfer iteration drops from 22.4-23.9 s to
13.7-15.1 s on a 2-core EPYC (docs/PERFORMANCE.md). Results differ from
Eigen's by float rounding (relative 1e-6), which is enough to send a GAN's
training down a different, equally noisy trajectory.

XLA reads `XLA_FLAGS` once, when its CPU backend starts, so the flag must
be in the environment before the first JAX computation: the entry points
add it (`cgt_jax.runtime.process.configure`); importing cgt_jax changes no
environment variable. Nothing is added when

* `CGT_JAX_XLA_DEFAULTS=0` is set (opt out), or
* `XLA_FLAGS` already names the flag (the user's value wins), or
* the installed jaxlib is not one this was verified on: an unknown flag
  makes XLA abort at start-up, so a newer jaxlib gets Eigen's kernels
  rather than a crash.

GPU and TPU backends ignore the flag. The CPU-only workarounds of the
model code ask `unrolled_loops_pay` and `convolution_kernels` at trace
time, so on GPU/TPU the program is XLA's own.
"""

import importlib.metadata
import os
from typing import MutableMapping, Optional

YNN_FUSION_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
YNN_FUSION_TYPES = 'dot,reduce'
OPT_OUT_VARIABLE = 'CGT_JAX_XLA_DEFAULTS'
# jaxlib release series on which the flag exists and was measured.
VERIFIED_JAXLIB_SERIES = ('0.10.',)


def _jaxlib_version() -> str:
  try:
    return importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return ''


def add_default_flags(environ: MutableMapping[str, str] = os.environ,
                      jaxlib_version: Optional[str] = None) -> bool:
  """Adds the YNNPACK fusion flag to `XLA_FLAGS`; True if it was added."""
  if environ.get(OPT_OUT_VARIABLE, '1') == '0':
    return False
  flags = environ.get('XLA_FLAGS', '')
  if YNN_FUSION_FLAG in flags:
    return False
  version = _jaxlib_version() if jaxlib_version is None else jaxlib_version
  if not version.startswith(VERIFIED_JAXLIB_SERIES):
    return False
  environ['XLA_FLAGS'] = f'{flags} {YNN_FUSION_FLAG}={YNN_FUSION_TYPES}'.strip()
  return True


def library_convolutions(
    environ: MutableMapping[str, str] = os.environ) -> bool:
  """Whether `XLA_FLAGS` sends XLA:CPU's dots and convolutions to YNNPACK."""
  for flag in environ.get('XLA_FLAGS', '').split():
    name, _, value = flag.partition('=')
    if name == YNN_FUSION_FLAG:
      types = value.lower().split(',')
      return 'dot' in types or '+dot' in types
  return False


def convolution_kernels() -> str:
  """Which library runs convolutions on this backend, for benchmark tables."""
  # Imported here: this module must stay importable before JAX starts.
  import jax  # pylint: disable=import-outside-toplevel
  if jax.default_backend() != 'cpu':
    return '-'
  return 'YNNPACK' if library_convolutions() else 'Eigen'


def unrolled_loops_pay() -> bool:
  """Whether the train step's short accumulation loops should be unrolled:
  only on XLA:CPU, which runs convolution gradients inside a loop body
  about 40x slower (`cgt_jax.training.steps`)."""
  import jax  # pylint: disable=import-outside-toplevel
  return jax.default_backend() == 'cpu'
