"""Device mesh, logical-axis rules, train-state shardings, global batches.

The mesh has three axes: `data` (pure data parallel), `fsdp` (data parallel
that also shards parameters and optimizer state, ZeRO-3 style) and `tensor`
(parameters split along MLP and attention-head dimensions). The model names
its parameter and activation axes logically (`embed`, `mlp`, `heads`, ...);
the rules map those names to mesh axes, so every strategy is a config change.
"""

import contextlib
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
from jax.experimental import mesh_utils
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')
# Auto axes: XLA propagates shardings from the inputs, outputs and the
# model's logical constraints.
_AUTO = (AxisType.Auto,) * len(MESH_AXES)

# Logical axis -> mesh axes. A mesh axis used once in an array's spec is not
# used again for a later logical axis of the same array (Flax's rule), so
# activations (batch over data+fsdp) keep `embed` unsharded while parameters
# shard `embed` over fsdp.
DEFAULT_RULES = (
    ('batch', ('data', 'fsdp')),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv', None),
    ('length', None),
    ('layers', None),
    ('classes', None),
    ('conv_in', None),
    ('conv_out', 'fsdp'),
)


def resolve_mesh_shape(mesh_config: Mapping[str, int], num_devices: int
                       ) -> tuple[int, ...]:
  """Axis sizes with the single -1 replaced by "the rest of the devices"."""
  unknown = set(mesh_config) - set(MESH_AXES)
  if unknown:
    raise ValueError(f'unknown mesh axes {sorted(unknown)}; expected '
                     f'{MESH_AXES}.')
  sizes = [int(mesh_config.get(axis, 1)) for axis in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f'mesh {dict(zip(MESH_AXES, sizes))} has more than one '
                     f'axis of size -1; at most one axis may take the rest.')
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(
          f'mesh {dict(zip(MESH_AXES, sizes))} needs a device count divisible '
          f'by {known}, but there are {num_devices} devices.')
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(
        f'mesh {dict(zip(MESH_AXES, sizes))} has {int(np.prod(sizes))} '
        f'devices but {num_devices} are available; set one axis to -1 or '
        f'make the sizes multiply to {num_devices}.')
  return tuple(sizes)


def slice_count(devices: Sequence[Any]) -> int:
  """TPU slices among `devices` (joined by the data-center network)."""
  return len({getattr(d, 'slice_index', 0) for d in devices})


def make_mesh(mesh_config: Mapping[str, int],
              devices: Sequence[Any] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh over all (or the given) devices.

  On multi-slice TPU the data axis spans slices (the slow network) and the
  other axes stay inside a slice.
  """
  devices = list(devices if devices is not None else jax.devices())
  shape = resolve_mesh_shape(mesh_config, len(devices))
  num_slices = slice_count(devices)
  if num_slices > 1:
    if shape[0] % num_slices:
      raise ValueError(f'the data axis ({shape[0]}) must be a multiple of the '
                       f'number of slices ({num_slices}).')
    per_slice = (shape[0] // num_slices, *shape[1:])
    grid = mesh_utils.create_hybrid_device_mesh(
        per_slice, (num_slices, 1, 1), devices)
    return Mesh(grid, MESH_AXES, axis_types=_AUTO)
  if devices == list(jax.devices()):
    return jax.make_mesh(shape, MESH_AXES, axis_types=_AUTO)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=_AUTO)


def logical_shardings(mesh: Mesh, logical_specs: Any,
                      rules: Sequence[tuple[str, Any]]) -> Any:
  """Tree of logical PartitionSpecs -> tree of NamedShardings."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, tuple(rules))


@contextlib.contextmanager
def logical_constraints(mesh: Mesh, rules: Sequence[tuple[str, Any]]):
  """Inside a jitted function: makes the model's logical activation
  constraints bind to `mesh` through `rules` (without it they are no-ops)."""
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), \
      nn.logical_axis_rules(tuple(rules)):
    yield


def optimizer_state_shardings(tx, opt_state_shapes: Any, param_shardings: Any,
                              mesh: Mesh) -> Any:
  """Each optimizer-state leaf that mirrors a parameter (Adam's moments)
  takes that parameter's sharding when its shape allows it; the rest
  (counts, Adafactor's factored moments, whose shapes differ from the
  parameter's) are replicated."""
  fallback = replicated(mesh)

  def fit(leaf, target: NamedSharding) -> NamedSharding:
    spec = tuple(target.spec)
    if len(spec) > len(leaf.shape):
      return fallback
    for dim, axes in zip(leaf.shape, spec):
      axes = (axes,) if isinstance(axes, str) else (axes or ())
      if dim % int(np.prod([target.mesh.shape[a] for a in axes])):
        return fallback
    return target
  return optax.tree_map_params(tx, fit, opt_state_shapes, param_shardings,
                               transform_non_params=lambda _: fallback)


def update_shardings(param_shardings: Any, param_shapes: Any) -> Any:
  """Where the optimizer update of each parameter runs when it is split
  over the data axis (ZeRO stage 1): the parameter's own sharding, with
  `data` added to its first dimension whose length divides by the data
  axis times the mesh axes that dimension is already split over. Each
  device then updates its part of the moments, so the optimizer's reads
  and writes of parameters and moments shrink by the data-axis size; the
  new parameters (float32) are gathered onto every device, on the
  interconnect besides the gradient's reduction (which XLA:TPU keeps an
  all-reduce of the whole gradient). A parameter without such a
  dimension keeps its sharding. Across several slices the update stays
  whole: the data axis then spans the data-center network, which should
  carry the gradient all-reduce only (not a parameter all-gather too)."""
  if slice_count(jax.tree.leaves(param_shardings)[0].mesh.devices.flat) > 1:
    return param_shardings

  def split(target: NamedSharding, shape) -> NamedSharding:
    mesh, size = target.mesh, target.mesh.shape['data']
    spec = list(target.spec) + [None] * (len(shape.shape) - len(target.spec))
    axes = [(a,) if isinstance(a, str) else tuple(a or ()) for a in spec]
    if size == 1 or any('data' in a for a in axes):
      return target
    for dim, (length, names) in enumerate(zip(shape.shape, axes)):
      if length % (size * int(np.prod([mesh.shape[a] for a in names]))) == 0:
        spec[dim] = ('data', *names)
        return NamedSharding(mesh, P(*spec))
    return target
  return jax.tree.map(split, param_shardings, param_shapes)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Examples split over every data-parallel axis."""
  return NamedSharding(mesh, P(('data', 'fsdp')))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(host_batch: Mapping[str, np.ndarray], mesh: Mesh
                 ) -> dict[str, jax.Array]:
  """This process's slice of the batch -> arrays of the global batch."""
  sharding = batch_sharding(mesh)
  out = {}
  for key, local in host_batch.items():
    local = np.asarray(local)
    global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
    out[key] = jax.make_array_from_process_local_data(sharding, local,
                                                      global_shape)
  return out


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape['data'] * mesh.shape['fsdp']


def bytes_per_device(tree: Any) -> dict[Any, int]:
  """Bytes of `tree`'s arrays held by each device (shards, not copies)."""
  held: dict[Any, int] = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
  return held


def rules_of(config) -> tuple:
  """`config.sharding_rules` (lists, as configs hold them) as the tuples
  Flax's logical-axis rules take."""
  return tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes)
               for name, axes in config.sharding_rules)
