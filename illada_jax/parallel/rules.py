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


def mesh_spec(
    logical: PartitionSpec | tuple, shape: tuple[int, ...], rules: str, mesh: jax.sharding.Mesh
) -> PartitionSpec:
    """Logical axis names of one array -> its mesh PartitionSpec under `rules`."""
    table = RULES[resolve(rules, mesh.devices.flat[0].platform)]
    used: set[str] = set()
    out = []
    for name, size in zip(tuple(logical), shape):
        axes = tuple(a for a in (table.get(name) or ()) if a in mesh.shape and a not in used)
        # Keep only axes whose product divides the dimension (replicate otherwise).
        kept, product = [], 1
        for axis in axes:
            if size % (product * mesh.shape[axis]) == 0:
                kept.append(axis)
                product *= mesh.shape[axis]
        used.update(kept)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*out)


def batch_spec(rules: str, mesh: jax.sharding.Mesh, global_batch: int) -> PartitionSpec:
    """[batch, length] arrays: rows over the data axes."""
    return mesh_spec(("batch", "length"), (global_batch, 1), rules, mesh)
