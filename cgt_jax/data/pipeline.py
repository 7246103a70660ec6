"""Training batches from an in-memory `ClassDataset`, as global sharded arrays.

* `BatchSampler`: the batch of step `s` is a pure function of (seed, s), so a
  run resumed at step `s` sees exactly the batches of an uninterrupted run.
  Each epoch is a fresh seeded permutation; nothing is dropped, and a batch
  may straddle two epochs.
* `to_device`: ships uint8 (4x fewer bytes than float32) with
  `jax.make_array_from_process_local_data` (multi-host safe) and scales to
  [-1, 1] on device.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from cgt_jax.data import datasets


def check_global_batch(global_batch: int, num_devices: int):
  """Raises ValueError unless `global_batch` splits evenly over the devices."""
  if global_batch <= 0:
    raise ValueError(f'batch_size must be positive, got {global_batch}')
  if global_batch % num_devices:
    lower = global_batch // num_devices * num_devices
    upper = lower + num_devices
    options = f'{lower} or {upper}' if lower else f'{upper}'
    raise ValueError(
        f'batch_size {global_batch} does not split over {num_devices} '
        f'devices: use {options} (the batch size is global: a multiple of '
        'the device count), or run on a device count that divides it')


class BatchSampler:
  """Training batches that depend on nothing but (seed, step).

  Batch `s` takes positions `s*B .. s*B+B-1` of the endless sequence formed
  by concatenating the epoch permutations
  `np.random.default_rng([seed, epoch]).permutation(n)`.
  """

  def __init__(self, dataset: datasets.ClassDataset, global_batch: int,
               seed: int):
    if len(dataset) == 0:
      raise ValueError('the dataset is empty')
    if global_batch <= 0:
      raise ValueError(f'global_batch must be positive, got {global_batch}')
    self.dataset = dataset
    self.global_batch = global_batch
    self.seed = seed
    self._cache = (None, None)  # (epoch, its permutation)

  def indices(self, step: int, rows: Optional[slice] = None) -> np.ndarray:
    """Dataset indices of batch `step` (its `rows` only, if given).

    Returns:
      int64 `[global_batch]` (or the length of `rows`).
    """
    if step < 0:
      raise ValueError(f'step must be >= 0, got {step}')
    n = len(self.dataset)
    positions = step * self.global_batch + np.arange(self.global_batch)
    if rows is not None:
      positions = positions[rows]
    epochs = positions // n
    out = np.empty(len(positions), np.int64)
    for epoch in np.unique(epochs):
      in_epoch = epochs == epoch
      out[in_epoch] = self._permutation(int(epoch))[positions[in_epoch] % n]
    return out

  def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """The global batch: uint8 images `[B, H, W, 3]`, int32 labels `[B]`."""
    return self._gather(self.indices(step))

  def process_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """This process's rows of batch `step`: `[B / process_count, ...]`.

    Process `p` takes rows `p*B/P .. (p+1)*B/P - 1`, the rows its devices
    hold under a batch-sharded `NamedSharding` over `jax.make_mesh`'s
    device order (devices grouped by process).
    """
    count, index = jax.process_count(), jax.process_index()
    if self.global_batch % count:
      raise ValueError(f'batch_size {self.global_batch} does not split over '
                       f'{count} processes')
    size = self.global_batch // count
    return self._gather(
        self.indices(step, slice(index * size, (index + 1) * size)))

  def _gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.dataset.images[indices], self.dataset.labels[indices]

  def _permutation(self, epoch: int) -> np.ndarray:
    # One epoch's permutation serves ~n/B consecutive steps: keep the latest
    # rather than redraw it per batch. One tuple, assigned at once, so the
    # prefetch thread and the caller never see a mismatched pair.
    cached_epoch, permutation = self._cache
    if cached_epoch != epoch:
      rng = np.random.default_rng([self.seed, epoch])
      permutation = rng.permutation(len(self.dataset))
      self._cache = (epoch, permutation)
    return permutation


def to_device(images: np.ndarray, labels: np.ndarray,
              sharding: jax.sharding.Sharding) -> dict:
  """This process's uint8 batch -> a global batch on the devices.

  Args:
    images: uint8 `[local_batch, H, W, 3]`, this process's rows.
    labels: int `[local_batch]`, the generator's (global) labels.
    sharding: a batch-sharded `NamedSharding`, e.g.
      `NamedSharding(mesh, P('data'))`.

  Returns:
    {'image': float32 `[B, H, W, 3]` = images / 127.5 - 1, bitwise
    torchvision's ToTensor + Normalize(0.5, 0.5), 'label': int32 `[B]`},
    both with `sharding`.
  """
  if images.dtype != np.uint8:
    raise ValueError(f'images must be uint8, got {images.dtype}')
  images = jax.make_array_from_process_local_data(sharding, images)
  labels = jax.make_array_from_process_local_data(sharding,
                                                  np.asarray(labels, np.int32))
  return {'image': _normalizer(sharding)(images), 'label': labels}


# uint8 -> [-1, 1] as a table computed once on the host: XLA rewrites
# `x / 127.5` as a multiply by the reciprocal, which is 1 ulp off for some x
# and maps 255 to 1.0000001; the table gives torchvision's exact values on
# every backend.
_UNIT_RANGE = np.arange(256, dtype=np.float32) / np.float32(127.5) - 1


@functools.lru_cache(maxsize=None)
def _normalizer(sharding: jax.sharding.NamedSharding):
  """The jitted uint8 -> [-1, 1] conversion, one per output sharding."""
  if not isinstance(sharding, jax.sharding.NamedSharding):
    raise TypeError(f'to_device needs a NamedSharding, got {sharding}')

  def normalize(images):
    return jnp.asarray(_UNIT_RANGE)[images]

  # Per device: a table lookup on a batch-sharded array is otherwise an
  # ambiguous gather to jax under explicit mesh axes.
  local = jax.shard_map(
      normalize,
      mesh=sharding.mesh,
      in_specs=sharding.spec,
      out_specs=sharding.spec)
  return jax.jit(local, out_shardings=sharding)
