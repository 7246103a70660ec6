"""Images -> features with a feature network, sharded over all devices.

An `Extractor` bundles what the metrics need from a feature network: a pure
`apply_fn(variables, images) -> {'features': [b, d], 'logits': [b, k]}` on
images in [-1, 1], its weights, its kind (`'inception'` or `'domain'`, which
decides the metric names) and an identity string that changes whenever the
network or its weights do (it keys the reference-statistics cache).

`extract` runs an `apply_fn` over an array or an iterator of image batches:
fixed-size batches split over a 1-D `'data'` mesh of every device, the last
partial batch padded with zeros and the padding dropped from the outputs.
Single-process only (every output is gathered on this host).
"""

import dataclasses
import functools
import sys
from typing import Any, Callable, Iterable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from cgt_jax.runtime import parallel
from cgt_jax.evaluation import inception
from cgt_jax.evaluation import inception_convert

KINDS = ('inception', 'domain')
Images = Union[np.ndarray, Iterable[np.ndarray]]


@dataclasses.dataclass(frozen=True, eq=False)
class Extractor:
  """A feature network with its weights (see the module docstring)."""
  kind: str
  identity: str
  apply_fn: Callable[[Any, jax.Array], dict]
  variables: Any = dataclasses.field(repr=False)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'unknown extractor kind {self.kind!r}: use {KINDS}')


def inception_extractor(directory) -> Extractor:
  """The Inception network of a directory written by convert_inception.py."""
  variables, metadata = inception_convert.load(directory)
  return Extractor('inception', inception_convert.identity(metadata),
                   inception.apply_fn(metadata['variant']), variables)


def to_model_range(images: jax.Array) -> jax.Array:
  """uint8 images -> float32 in [-1, 1]; float images pass through."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 127.5 - 1
  return images.astype(jnp.float32)


@functools.lru_cache(maxsize=32)
def _compiled(apply_fn: Callable, mesh: jax.sharding.Mesh):
  """apply_fn on uint8/float images, jitted for `mesh` (cached per pair)."""
  data = parallel.data_sharding(mesh)
  return jax.jit(
      lambda variables, images: apply_fn(variables, to_model_range(images)),
      in_shardings=(parallel.replicated(mesh), data),
      out_shardings=data)


def _fixed_batches(images: Images, batch_size: int):
  """Yields `(batch [batch_size, ...], num_valid)`; the last one zero-padded.

  `images` is one array `[n, h, w, 3]` or an iterable of such arrays of any
  lengths; arrays are re-chunked into equal batches (one compiled shape).
  """
  chunks = [images] if isinstance(images, np.ndarray) else images
  pending, num_pending = [], 0
  for chunk in chunks:
    pending.append(np.asarray(chunk))
    num_pending += len(pending[-1])
    while num_pending >= batch_size:
      data = pending[0] if len(pending) == 1 else np.concatenate(pending)
      yield data[:batch_size], batch_size
      pending, num_pending = [data[batch_size:]], num_pending - batch_size
  if num_pending:
    data = np.concatenate(pending)
    padding = np.zeros((batch_size - num_pending,) + data.shape[1:], data.dtype)
    yield np.concatenate([data, padding]), num_pending


def _check_batch(batch: np.ndarray):
  if batch.ndim != 4 or batch.shape[-1] != 3:
    raise ValueError(f'images must be [n, height, width, 3], got a batch of '
                     f'shape {batch.shape}')


def extract(apply_fn: Callable,
            variables,
            images: Images,
            batch_size: int = 256,
            mesh: Optional[jax.sharding.Mesh] = None,
            progress: Optional[bool] = None) -> dict:
  """Runs `apply_fn(variables, images)` over all images, on all devices.

  Args:
    apply_fn: pure `fn(variables, images [b, h, w, 3] in [-1, 1]) -> pytree`
      of `[b, ...]` arrays. Keep one function object per network: compiled
      programs are cached per (apply_fn, mesh).
    variables: its weights; placed on every device once per call.
    images: uint8 (0..255) or float ([-1, 1]) `[n, h, w, 3]`, or an iterable
      of such batches.
    batch_size: global batch (at most n), rounded up to a multiple of the
      device count; every batch has this size (the last one zero-padded), so
      one compiled program serves all.
    mesh: a mesh with a 'data' axis; default `parallel.make_mesh()` (all
      devices).
    progress: show a tqdm bar on stderr; None: only on a terminal.
  Returns:
    The pytree of `apply_fn` with numpy leaves `[n, ...]`.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  num_shards = mesh.shape[parallel.DATA_AXIS]
  total = len(images) if isinstance(images, np.ndarray) else None
  if total:  # a few images need no full (padded) batch
    batch_size = min(batch_size, total)
  batch_size = -(-batch_size // num_shards) * num_shards
  fn = _compiled(apply_fn, mesh)
  variables = jax.device_put(variables, parallel.replicated(mesh))
  bar = tqdm.tqdm(
      total=total,
      unit='img',
      desc='features',
      file=sys.stderr,
      disable=None if progress is None else not progress)
  outputs, previous = [], None
  with bar:
    for batch, num_valid in _fixed_batches(images, batch_size):
      _check_batch(batch)
      result = fn(variables, jax.device_put(batch,
                                            parallel.data_sharding(mesh)))
      # Fetch the previous batch while this one computes (async dispatch).
      if previous is not None:
        outputs.append(_to_host(*previous))
      previous = (result, num_valid)
      bar.update(num_valid)
    if previous is not None:
      outputs.append(_to_host(*previous))
  if not outputs:
    raise ValueError('no images to extract features from')
  return jax.tree_util.tree_map(lambda *parts: np.concatenate(parts), *outputs)


def _to_host(result, num_valid: int):
  return jax.tree_util.tree_map(lambda x: np.asarray(x)[:num_valid], result)
