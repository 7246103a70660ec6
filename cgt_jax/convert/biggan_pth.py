"""BigGAN-PyTorch and cGANTransfer `.pth` files -> cgt_jax modules and variables.

The in-memory half of `tools/convert_biggan.py` (which then writes a model
directory); `tools/replay_iterations.py` uses it too, so that what a replay
checks is the converter users run. The format is recognised from the keys
and the architecture from the tensor shapes (`infer`); `overrides` replace
inferred architecture fields (e.g. `sn_eps`, which no checkpoint records).
"""

import dataclasses
from typing import Optional

import jax
import numpy as np

from cgt_jax.models import model_io
from cgt_jax.convert import infer
from cgt_jax.convert import keymap
from cgt_jax.convert import pth_reader


@dataclasses.dataclass
class Network:
  """One converted network: its format, architecture, module and variables."""
  format: str
  arch: dict
  module: object
  variables: dict


def read(path, fmt: str = 'auto') -> tuple:
  """`(state dict, format)` of one checkpoint file."""
  state = pth_reader.load_state_dict(path)
  return state, fmt if fmt != 'auto' else infer.detect_format(state, str(path))


def contiguous(variables):
  """C-ordered copies of transposed kernels: orbax would copy them while
  writing, all at once; here it is one network at a time."""
  # (np.ascontiguousarray would turn the 0-d attention gammas into [1].)
  return jax.tree_util.tree_map(lambda a: np.asarray(a, order='C'), variables)


def generator_from_state(state: dict,
                         fmt: str,
                         source: str,
                         overrides: Optional[dict] = None) -> Network:
  """A BigGAN-PyTorch or cGANTransfer generator from its state dict."""
  arch = infer.generator_arch(state, fmt, source, overrides)
  module = model_io.build_generator(arch)
  variables = keymap.load_state_dict(
      state, model_io.abstract_generator_variables(module), source)
  return Network(fmt, arch, module, contiguous(variables))


def load_discriminator(path,
                       generator: Network,
                       fmt: str = 'auto',
                       overrides: Optional[dict] = None) -> Network:
  """The discriminator at `path`, checked against its generator."""
  source = str(path)
  state, fmt = read(path, fmt)
  if fmt != generator.format:
    raise infer.ArchitectureError(
        f'{source}: a {fmt} discriminator, but the generator is a '
        f'{generator.format} generator')
  arch = infer.discriminator_arch(state, fmt, source, generator.arch, overrides)
  infer.check_pair(generator.arch, arch, source)
  module = model_io.build_discriminator(arch)
  variables = keymap.load_state_dict(
      state, model_io.abstract_discriminator_variables(module), source)
  return Network(fmt, arch, module, contiguous(variables))


def load_pair(generator_path,
              discriminator_path,
              fmt: str = 'auto',
              generator_overrides: Optional[dict] = None,
              discriminator_overrides: Optional[dict] = None) -> tuple:
  """`(generator, discriminator)` Networks of a G.pth / D.pth pair."""
  state, fmt = read(generator_path, fmt)
  if fmt == infer.BIGGAN_DEEP:
    raise infer.ArchitectureError(
        f'{generator_path} is a BigGAN-deep generator, which has no '
        'discriminator: use BigGAN-PyTorch or cGANTransfer checkpoints')
  generator = generator_from_state(state, fmt, str(generator_path),
                                   generator_overrides)
  del state
  return generator, load_discriminator(discriminator_path, generator, fmt,
                                       discriminator_overrides)
