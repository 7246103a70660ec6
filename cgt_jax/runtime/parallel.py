"""Device mesh and shardings: data parallel over every device of every host.

Parameters and optimizer state are replicated; batches are split along a
single 'data' mesh axis. Batch-norm statistics computed under `jit` on a
sharded batch are global (synchronised BN over the whole batch); the authors'
8-GPU DataParallel runs instead normalised per GPU (32 samples).
"""

import jax
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
