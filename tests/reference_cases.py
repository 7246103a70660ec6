"""The PyTorch reference fixtures (tests/fixtures/*, see its README.md).

Each case folder holds state dicts written by the authors' code, the inputs,
and the outputs the reference produced. This module turns a case into cgt_jax
models, variables and NHWC inputs with global labels.
"""

import dataclasses
import functools
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from cgt_jax.convert import keymap
from cgt_jax.convert import pth_reader
from cgt_jax.models import biggan

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
CASES = ('biggan32', 'biggan128', 'cgt32', 'cgt128')
CGT_CASES = ('cgt32', 'cgt128')


@dataclasses.dataclass
class Case:
  name: str
  meta: dict
  io: dict
  generator: biggan.Generator
  discriminator: biggan.Discriminator
  g_variables: dict
  d_variables: dict
  z: jax.Array
  y: jax.Array  # global labels for G (and D on fakes)
  y_d: jax.Array  # global labels for D on x_real
  x_real: jax.Array  # NHWC

  def state_dict(self, filename: str) -> dict:
    return pth_reader.load_state_dict(FIXTURES / self.name / filename)

  def json(self, filename: str):
    return json.loads((FIXTURES / self.name / filename).read_text())


def nchw(images) -> np.ndarray:
  return np.asarray(images).transpose(0, 3, 1, 2)


# (model, inputs) -> the variables' ShapeDtypeStructs, per test process.
_ABSTRACT_VARIABLES = {}


def abstract_variables(model, *inputs):
  """The variables' ShapeDtypeStructs, traced once per (model, inputs) in
  a test process (tracing a BigGAN's init takes seconds)."""
  key = (model,) + tuple(
      (x.shape, str(x.dtype), np.asarray(x).tobytes()) for x in inputs)
  if key not in _ABSTRACT_VARIABLES:
    _ABSTRACT_VARIABLES[key] = jax.eval_shape(
        lambda: model.init(jax.random.key(0), *inputs))
  # Fresh containers: callers may edit the tree.
  return jax.tree_util.tree_map(lambda leaf: leaf, _ABSTRACT_VARIABLES[key])


@functools.lru_cache(maxsize=None)
def load(name: str) -> Case:
  folder = FIXTURES / name
  meta = json.loads((folder / 'meta.json').read_text())
  io = dict(np.load(folder / 'io.npz'))
  generator = biggan.Generator(
      **biggan.generator_kwargs_from_reference(meta['G_constructor_args']))
  discriminator = biggan.Discriminator(
      **biggan.discriminator_kwargs_from_reference(meta['D_constructor_args']))
  # Fixture labels of cGANTransfer cases index the new classes: shift by N.
  offset = generator.num_classes if generator.num_new_classes else 0
  z = jnp.asarray(io['z'])
  y = jnp.asarray(io['y']) + offset
  y_d = jnp.asarray(io['y_d']) + offset
  x_real = jnp.asarray(io['x_real'].transpose(0, 2, 3, 1))
  g_variables = keymap.load_state_dict(
      pth_reader.load_state_dict(folder / 'G.pth'),
      abstract_variables(generator, z, y), 'G.pth')
  d_variables = keymap.load_state_dict(
      pth_reader.load_state_dict(folder / 'D.pth'),
      abstract_variables(discriminator, x_real, y_d), 'D.pth')
  return Case(name, meta, io, generator, discriminator, g_variables,
              d_variables, z, y, y_d, x_real)


def random_variables(abstract, seed: int = 0) -> dict:
  """Concrete variables for an abstract tree, drawn on the host.

  Cheaper than `model.init` in tests: XLA compiles every random op of an
  init separately (~0.1 s each on this CPU).
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'var':
      return np.ones(leaf.shape, np.float32)
    if name == 'mean':
      return np.zeros(leaf.shape, np.float32)
    scale = 1.0 if name == 'u' else 0.02
    return (rng.standard_normal(leaf.shape) * scale).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def with_attention_gamma(variables: dict, value: float) -> dict:
  """A copy whose attention `gamma` scalars are all `value`."""
  params = dict(variables['params'])
  for name in params:
    if name.startswith('attention_'):
      params[name] = {**params[name], 'gamma': np.float32(value)}
  return {**variables, 'params': params}


def max_relative_error(actual, expected) -> float:
  """max |a - e| / max |e| (relative to the array's scale)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected)
  return float(
      np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-12))


def load_tool(name: str):
  """The module of `tools/<name>.py` (tools/ is not a package)."""
  spec = importlib.util.spec_from_file_location(
      name, FIXTURES.parent.parent / 'tools' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
