"""Device mesh and shardings: data parallel over every device of every host.

Parameters and optimizer state are replicated; batches are split along a
single 'data' mesh axis. Batch-norm statistics computed under `jit` on a
sharded batch are global (synchronised BN over the whole batch); the authors'
8-GPU DataParallel runs instead normalised per GPU (32 samples).
"""

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes).

  The axis is 'Auto' (the compiler propagates shardings from the inputs and
  our constraints), not jax's newer 'Explicit' default.
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def data_sharding(mesh, leading_axes: int = 0) -> NamedSharding:
  """Splits the batch axis (after `leading_axes` unsplit axes) over 'data'."""
  return NamedSharding(mesh, P(*([None] * leading_axes), DATA_AXIS))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def sync(name: str):
  """A barrier across processes (nothing to wait for on one process): what
  process 0 wrote is there for every process afterwards."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def local_mesh(mesh) -> jax.sharding.Mesh:
  """`mesh` on one process; else a mesh of this process's own devices, for
  work every process repeats on its own (evaluation, sample grids)."""
  if jax.process_count() == 1:
    return mesh
  return make_mesh(jax.local_devices())


def local_copy(tree, mesh):
  """A replicated global pytree as arrays on this process's `local_mesh`
  (unchanged on one process, where the mesh is already local)."""
  if jax.process_count() == 1:
    return tree
  return jax.device_put(jax.device_get(tree), replicated(local_mesh(mesh)))


# ----------------------------------------------------------------------------
# Joining batches without moving rows between devices
# ----------------------------------------------------------------------------


def data_shards() -> int:
  """How many ways a batch is split: the 'data' axis of the mesh set with
  `jax.set_mesh` (1 without one)."""
  mesh = jax.sharding.get_abstract_mesh()
  return mesh.shape[DATA_AXIS] if DATA_AXIS in mesh.axis_names else 1


def _shards_for(sizes: Sequence[int]) -> int:
  """The shard count the layout below uses for batches of `sizes` (1: the
  plain concatenation, when a size does not split evenly)."""
  k = data_shards()
  return k if all(n % k == 0 for n in sizes) else 1


def concat_batches(parts: Sequence[jax.Array]) -> jax.Array:
  """The batches `parts` as one, each device's rows staying on it.

  A plain `jnp.concatenate` of batches split over k devices puts the
  first batch on the first devices, so XLA moves rows between devices (an
  all-to-all of images per D forward, tests/test_communication.py). Here
  the shard of device d holds its shard of every part, in order: the same
  rows in another order, which per-sample computations (D) do not see.
  With one shard it is the plain concatenation. `batch_order` gives each
  row's position in the plain concatenation; `split_batches` undoes it.
  """
  k = _shards_for([p.shape[0] for p in parts])
  if k == 1:
    return jnp.concatenate(parts)
  blocks = [p.reshape((k, -1) + p.shape[1:]) for p in parts]
  return jnp.concatenate(blocks, axis=1).reshape((-1,) + parts[0].shape[1:])


def batch_order(sizes: Sequence[int]) -> Optional[np.ndarray]:
  """Row r of `concat_batches` of batches of `sizes` is row `order[r]` of
  their plain concatenation; None where the two are the same."""
  k = _shards_for(sizes)
  if k == 1:
    return None
  starts = np.cumsum([0] + list(sizes[:-1]))
  return np.concatenate([
      start + shard * (n // k) + np.arange(n // k)
      for shard in range(k)
      for start, n in zip(starts, sizes)
  ])


def split_batches(x: jax.Array, sizes: Sequence[int]) -> list:
  """The parts of `concat_batches` (of batches of `sizes`) from its output
  `x` (or any per-row result of it)."""
  k = _shards_for(sizes)
  if k == 1:
    return jnp.split(x, np.cumsum(sizes)[:-1])
  blocks = x.reshape((k, -1) + x.shape[1:])
  parts, start = [], 0
  for n in sizes:
    part = blocks[:, start:start + n // k]
    parts.append(part.reshape((-1,) + x.shape[1:]))
    start += n // k
  return parts
