"""Model directories: an architecture (JSON) plus G/D variables (orbax).

This is the format `tools/convert_biggan.py` writes, every training stage
exports, `config.source_checkpoint` reads and `tools/sample.py` samples from:

    DIR/architecture.json   {"generator": {...}, "discriminator": {...},
                             "classes": [names in label order] (if known)}
    DIR/variables/          orbax StandardCheckpointer tree
                            {"generator": {...}, "discriminator": {...}}

The architecture dicts are the keyword arguments of `biggan.Generator` and
`biggan.Discriminator` (with the generator's `new_classes` form as a dict
tagged by `form`, see `NEW_CLASS_FORMS`; a continually extended one also
lists its earlier `extensions`, each `{"num_classes", "new_classes"}`), so a
directory alone rebuilds the models. A save goes to a staging sibling of
this run first and is renamed into place (`runtime.atomic_dir`), so a
failed save never leaves a half-written directory and never removes a
folder the program did not make.
"""

import contextlib
import dataclasses
import functools
import json
import pathlib
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from cgt_jax.models import biggan
from cgt_jax.models import biggan_deep
from cgt_jax.models import bsa
from cgt_jax.models import extensions
from cgt_jax.models import hypermod
from cgt_jax.models import kp
from cgt_jax.models import minegan
from cgt_jax.runtime import atomic_dir
from cgt_jax.runtime import parallel

ARCHITECTURE_FILE = 'architecture.json'
VARIABLES_DIR = 'variables'
# The generator's new-class layer forms, by their tag in architecture.json.
NEW_CLASS_FORMS = {
    'kp': kp.KPOptions,
    'bsa': bsa.FreeVectors,
    'minegan': minegan.Miners,
    'hypermod': hypermod.Modulation,
}


class ModelDirError(ValueError):
  """A model directory is missing, incomplete or inconsistent."""


def build_generator(arch: dict):
  """A `biggan.Generator` (or BigGAN-deep generator) from its architecture."""
  if arch.get('family') == biggan_deep.FAMILY:
    return biggan_deep.from_arch(arch)
  kwargs = dict(arch)
  kwargs['new_classes'] = _new_class_form(kwargs)
  kwargs['attention'] = tuple(kwargs.get('attention', ()))
  kwargs['extensions'] = tuple(
      extensions.Extension(e['num_classes'], _new_class_form(dict(e)))
      for e in kwargs.get('extensions', ()))
  return biggan.Generator(**kwargs)


def _new_class_form(kwargs: dict):
  """The `new_classes` object of an architecture dict (popping its entry).

  Directories written before the BSA layer had its own module describe it
  as `kp_options` with `propagate: false`.
  """
  legacy = kwargs.pop('kp_options', None)
  if legacy is not None:
    legacy = dict(legacy)
    form = {'form': 'kp' if legacy.pop('propagate', True) else 'bsa'}
    if form['form'] == 'kp':
      form.update(legacy)
    kwargs.setdefault('new_classes', form)
  spec = dict(kwargs.pop('new_classes', {'form': 'kp'}))
  form = spec.pop('form', 'kp')
  if form not in NEW_CLASS_FORMS:
    raise ModelDirError(f'unknown new-class form {form!r} in '
                        f'{ARCHITECTURE_FILE}: use one of '
                        f'{list(NEW_CLASS_FORMS)}')
  return NEW_CLASS_FORMS[form](**spec)


def _form_dict(value) -> dict:
  """`new_classes` as the tagged dict `_new_class_form` reads."""
  tag = {cls: name for name, cls in NEW_CLASS_FORMS.items()}[type(value)]
  return {'form': tag, **dataclasses.asdict(value)}


def build_discriminator(arch: dict) -> biggan.Discriminator:
  kwargs = dict(arch)
  kwargs['attention'] = tuple(kwargs.get('attention', ()))
  return biggan.Discriminator(**kwargs)


def module_arch(module) -> dict:
  """The JSON-able constructor arguments of a Generator/Discriminator."""
  arch = {}
  for field in dataclasses.fields(module):
    if field.name in ('parent', 'name'):
      continue
    value = getattr(module, field.name)
    if field.name == 'new_classes':
      value = _form_dict(value)
    elif field.name == 'extensions':
      value = [{
          'num_classes': e.num_classes,
          'new_classes': _form_dict(e.form)
      } for e in value]
    elif isinstance(value, tuple):
      value = list(value)
    elif field.name in ('dtype', 'remat'):
      continue  # run-time choices, not part of the architecture
    arch[field.name] = value
  return arch


def abstract_generator_variables(generator: biggan.Generator):
  """The ShapeDtypeStructs of `generator`'s variables (a fresh tree)."""
  return _fresh_tree(_abstract_generator_variables(generator))


def abstract_discriminator_variables(discriminator: biggan.Discriminator):
  """The ShapeDtypeStructs of `discriminator`'s variables (a fresh tree)."""
  return _fresh_tree(_abstract_discriminator_variables(discriminator))


def _fresh_tree(tree):
  """A copy of a cached tree's containers, so that callers may edit it."""
  return jax.tree_util.tree_map(lambda leaf: leaf, tree)


# Tracing a BigGAN's init costs seconds; modules are frozen dataclasses,
# so equal architectures share one trace (loading, converting, resuming).
@functools.lru_cache(maxsize=32)
def _abstract_generator_variables(generator: biggan.Generator):
  z = jnp.zeros((1, generator.dim_z))
  labels = jnp.zeros((1,), jnp.int32)
  return jax.eval_shape(lambda: generator.init(jax.random.key(0), z, labels))


@functools.lru_cache(maxsize=32)
def _abstract_discriminator_variables(discriminator: biggan.Discriminator):
  res = discriminator.resolution
  x = jnp.zeros((1, res, res, 3))
  label = (0 if discriminator.source_projection and
           not discriminator.class_heads else discriminator.num_classes)
  labels = jnp.full((1,), label, jnp.int32)
  return jax.eval_shape(
      lambda: discriminator.init(jax.random.key(0), x, labels))


def save(directory,
         generator_arch: dict,
         generator_variables,
         discriminator_arch: Optional[dict] = None,
         discriminator_variables=None,
         overwrite: bool = False,
         classes: Sequence[str] = ()) -> pathlib.Path:
  """Writes a model directory atomically (`runtime.atomic_dir`).

  `classes`: the generator's class names in label order, when known;
  `architecture.json` records them (`recorded_classes`), so that a later
  run can check its class lists against the model.

  An existing directory at `directory` is replaced only with `overwrite`
  (else ModelDirError, before anything is written). On several processes
  every process calls this (the orbax save is collective); process 0 alone
  touches the file system otherwise, and every process returns once the
  directory is in place.
  """
  directory = pathlib.Path(directory).absolute()
  if directory.exists() and not overwrite:
    raise ModelDirError(f'{directory} already exists: replacing it needs '
                        'overwrite=True (tools: --overwrite)')
  primary = jax.process_index() == 0
  token = atomic_dir.shared_token()
  staging = atomic_dir.staging_path(directory, token)
  if primary:
    with _naming_errors(directory):
      atomic_dir.create_staging(directory, token)
      arch = {'generator': generator_arch, 'discriminator': discriminator_arch}
      if classes:
        arch['classes'] = list(classes)
      (staging / ARCHITECTURE_FILE).write_text(json.dumps(arch, indent=2))
  parallel.sync(f'model_io: staging {staging}')
  tree = {'generator': jax.tree_util.tree_map(np.asarray, generator_variables)}
  if discriminator_variables is not None:
    tree['discriminator'] = jax.tree_util.tree_map(np.asarray,
                                                   discriminator_variables)
  try:
    with _naming_errors(directory):
      # A synchronous checkpointer: the write is complete when save returns.
      _checkpointer().save(
          staging / VARIABLES_DIR, args=ocp.args.PyTreeSave(tree))
      if primary:
        atomic_dir.commit(staging, directory)
  except BaseException:
    if primary:
      atomic_dir.discard(staging)
    raise
  parallel.sync(f'model_io: saved {directory}')
  return directory


@contextlib.contextmanager
def _naming_errors(directory: pathlib.Path):
  """An OSError (read-only, ...) or tensorstore's full-disk error while
  writing `directory` as a ModelDirError naming it, not the staging path
  the write went to."""
  try:
    yield
  except OSError as error:
    reason = error.strerror or str(error)
    raise ModelDirError(f'cannot write {directory}: {reason}: free space or '
                        'choose a writable location') from None
  except ValueError as error:  # tensorstore's write errors
    if 'RESOURCE_EXHAUSTED' not in str(error):
      raise
    raise ModelDirError(f'cannot write {directory}: the disk is full: free '
                        'space or choose another location') from None


def _checkpointer():
  """A PyTree checkpointer whose numpy handler does not copy host arrays.

  Orbax's default handler copies every numpy array before an (async) save;
  `save` waits for the write anyway, so the copy would only add the
  checkpoint's size to peak memory (ImageNet 128 px G + D: 3.5x -> 2.5x the
  file size). The handlers are a registry of this checkpointer's own, so
  orbax's global one stays as it is; the files are the ones
  `StandardCheckpointer` writes and reads. (`save` hands it numpy arrays
  only: scalars such as attention's gamma are 0-d arrays; the jax.Array
  handler is there because orbax warns on every save without one.)
  """
  registry = ocp.type_handlers.create_type_handler_registry(
      (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
      (jax.Array, ocp.type_handlers.ArrayHandler()))
  return ocp.Checkpointer(
      ocp.PyTreeCheckpointHandler(type_handler_registry=registry))


def load_architecture(directory) -> dict:
  path = pathlib.Path(directory) / ARCHITECTURE_FILE
  if not path.is_file():
    raise ModelDirError(
        f'{directory} is not a cgt_jax model directory (no {ARCHITECTURE_FILE})'
        ': point to a directory written by tools/convert_biggan.py or by a '
        'training stage (WORKDIR/<stage>/model)')
  return json.loads(path.read_text())


def recorded_classes(directory) -> list:
  """The class names a model directory records, in label order ([] when
  it does not: a converted model, or one written before they were)."""
  return list(load_architecture(directory).get('classes', ()))


def load(directory):
  """`(generator, discriminator or None, variables)` from a model directory.

  `variables` is `{'generator': ..., 'discriminator': ...}` (numpy arrays).
  """
  arch = load_architecture(directory)
  generator = build_generator(arch['generator'])
  target = {'generator': abstract_generator_variables(generator)}
  discriminator = None
  if arch.get('discriminator'):
    discriminator = build_discriminator(arch['discriminator'])
    target['discriminator'] = abstract_discriminator_variables(discriminator)
  path = pathlib.Path(directory).absolute() / VARIABLES_DIR
  try:
    variables = ocp.StandardCheckpointer().restore(path, target)
  except (FileNotFoundError, ValueError, KeyError) as error:
    raise ModelDirError(
        f'{directory}: variables do not match {ARCHITECTURE_FILE} or are '
        f'incomplete ({type(error).__name__}: {str(error)[:200]})') from None
  return generator, discriminator, variables
