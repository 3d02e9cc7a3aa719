"""Data parallelism over a Mesh with one 'data' axis (NamedSharding; no pmap).

Parameters and optimizer state are replicated; batches are split along their leading axis over
every device of every process. Each process feeds only the rows it read itself, and
`global_batch` assembles them into one global jax.Array, so the same code runs on one CPU, one
GPU, a multi-GPU host or a multi-host pod under jax.distributed.
"""

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over all (or the first `num_devices`) devices, classic GSPMD (Auto) axes."""
  devices = jax.devices()
  if num_devices is not None:
    if num_devices > len(devices):
      raise ValueError(f'asked for {num_devices} devices, {len(devices)} exist')
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """Rows each process reads per step; the global batch must split evenly over devices."""
  if global_batch_size % mesh.size:
    raise ValueError(f'batch size {global_batch_size} is not divisible by {mesh.size} devices')
  return global_batch_size // jax.process_count()


def global_batch(local: dict, mesh: Mesh) -> dict:
  """Per-process numpy arrays -> global arrays sharded along the batch axis."""
  sharding = data_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def process_slice(global_rows: int) -> slice:
  """This process's share of a batch every process holds whole (evaluation)."""
  per = global_rows // jax.process_count()
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)
