"""Logical-axis rule tables: how each named tensor axis maps onto mesh axes.

Parameters carry logical axis names (`embed`, `heads`, `kv_heads`, `head_dim`, `mlp`, `vocab`,
`layers`); batches use `batch` and `length`. A parallelism strategy is a rule table, never a model
change:

- `fsdp` (default): parameters sharded over `fsdp` along `embed`, the batch over every data axis;
- `fsdp_tp`: as `fsdp`, plus tensor parallelism — heads, kv heads, mlp and vocab over `tensor`;
- `dp`: pure data parallelism, parameters replicated;
- `auto` (the default): `dp` on CPU hosts, where collectives between virtual devices are slow and
  memory is plentiful, `fsdp` on accelerators.

A mesh axis is dropped from a dimension it does not divide (e.g. 2 kv heads on a 4-way tensor
axis): that dimension is replicated instead of failing to compile.

Activations have one layout under every table (`constrain`): rows over the data axes, heads /
kv heads / mlp / vocab over `tensor`, everything else (length, d_model, head_dim) whole. The model
pins its activations to it at each layer's matmuls; left to itself GSPMD resolves "batch and the
weights' `embed` both on `fsdp`" by splitting activations along d_model and all-reducing every
projection's full-batch output (measured: 11× the parameter bytes per step at the `small` preset,
40× at `tiny`) instead of all-gathering the weights, which is what FSDP means.
"""

from __future__ import annotations

import jax
from jax.sharding import PartitionSpec

DATA_AXES = ("dcn_data", "data", "fsdp")  # every axis the global batch is split over

RULES: dict[str, dict[str, tuple[str, ...] | None]] = {
    "fsdp": {"batch": DATA_AXES, "embed": ("fsdp",)},
    "fsdp_tp": {
        "batch": DATA_AXES,
        "embed": ("fsdp",),
        "heads": ("tensor",),
        "kv_heads": ("tensor",),
        "mlp": ("tensor",),
        "vocab": ("tensor",),
    },
    "dp": {"batch": DATA_AXES},
}


def resolve(rules: str, platform: str | None = None) -> str:
    """The rule table a name stands for (`auto` depends on the platform)."""
    if rules != "auto":
        return rules
    platform = platform or jax.devices()[0].platform
    return "dp" if platform == "cpu" else "fsdp"


ACTIVATION_RULES: dict[str, tuple[str, ...]] = {
    "batch": DATA_AXES,
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
    "vocab": ("tensor",),
}


def mesh_spec(
    logical: PartitionSpec | tuple, shape: tuple[int, ...], rules: str, mesh: jax.sharding.Mesh
) -> PartitionSpec:
    """Logical axis names of one array -> its mesh PartitionSpec under `rules`."""
    table = RULES[resolve(rules, mesh.devices.flat[0].platform)]
    return _fit(tuple(logical), shape, table, dict(mesh.shape))


def constrain(x: jax.Array, logical: tuple[str | None, ...]) -> jax.Array:
    """Pin an activation to the activation layout (`ACTIVATION_RULES`) of the mesh being traced
    under; unchanged outside a mesh or on a single device. logical: one name per dimension
    (`batch`, `length`, `embed`, `heads`, `kv_heads`, `head_dim`, `mlp`, `vocab`, or None).

    Only the mesh's Auto axes (the project's meshes: `parallel.mesh.make_mesh`) are used: on an
    Explicit axis a sharding constraint is an assertion about the array's sharding, not a hint."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return x
    auto = {
        name: size
        for name, size, kind in zip(mesh.axis_names, mesh.axis_sizes, mesh.axis_types)
        if kind == jax.sharding.AxisType.Auto
    }
    if not auto:
        return x
    spec = _fit(logical, x.shape, ACTIVATION_RULES, auto)
    return jax.lax.with_sharding_constraint(x, spec)


def _fit(logical: tuple, shape: tuple[int, ...], table: dict, mesh_shape: dict) -> PartitionSpec:
    """Each dimension's mesh axes from `table`, each mesh axis used once, keeping only axes whose
    product divides the dimension."""
    used: set[str] = set()
    out = []
    for name, size in zip(logical, shape):
        axes = tuple(a for a in (table.get(name) or ()) if a in mesh_shape and a not in used)
        # Keep only axes whose product divides the dimension (replicate otherwise).
        kept, product = [], 1
        for axis in axes:
            if size % (product * mesh_shape[axis]) == 0:
                kept.append(axis)
                product *= mesh_shape[axis]
        used.update(kept)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*out)


def batch_spec(rules: str, mesh: jax.sharding.Mesh, global_batch: int) -> PartitionSpec:
    """[batch, length] arrays: rows over the data axes."""
    return mesh_spec(("batch", "length"), (global_batch, 1), rules, mesh)
