"""Device meshes from `MeshConfig`: ICI axes (`data`, `fsdp`, `tensor`) and a DCN `dcn_data` axis
across slices (a hybrid mesh on multi-slice TPU pods). Axes are GSPMD Auto axes.

Validation happens before anything compiles: the axis product must equal the device count and the
global batch must divide by the data-parallel size; errors say what to change.
"""

from __future__ import annotations

import contextlib
import math
import os

import jax
import numpy as np
from jax.experimental import mesh_utils

from illada_jax.config.schema import ConfigError, MeshConfig

AXES = ("dcn_data", "data", "fsdp", "tensor")


# XLA:CPU flags for the pinned jaxlib only (an XLA that does not know a flag refuses to start).
# individual_dot: dots run as their own YNNPACK calls instead of fused with elementwise
# neighbours, which XLA otherwise does even for a softmax backward reduction; measured +5% train
# tokens/s on the small preset (bench/train.py, 2 cores, interleaved runs).
_CPU_XLA_FLAGS = {"0.10.2": ("xla_cpu_experimental_ynn_fusion_type", "individual_dot")}


def _add_cpu_xla_flags() -> None:
    import jaxlib.version

    flag = _CPU_XLA_FLAGS.get(jaxlib.version.__version__)
    current = os.environ.get("XLA_FLAGS", "")
    if flag and flag[0] not in current:  # the user's own setting wins
        os.environ["XLA_FLAGS"] = f"{current} --{flag[0]}={flag[1]}".strip()


def configure_cpu_devices(count: int) -> None:
    """Split a CPU host into `count` virtual devices (0 = one per core) before JAX starts.

    XLA:CPU runs many non-matmul fusions on one thread; giving each core its own device and
    splitting the batch over them uses the whole machine. No effect on GPU/TPU hosts, when the
    user set the device count in XLA_FLAGS, or once JAX's backends are initialised. Also adds the
    CPU compiler flags above (read when the CPU backend starts).
    """
    _add_cpu_xla_flags()
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    count = count or os.cpu_count() or 1
    # RuntimeError: backends already initialised (e.g. inside a test session).
    with contextlib.suppress(RuntimeError):
        jax.config.update("jax_num_cpu_devices", count)


def resolve_shape(cfg: MeshConfig, n_devices: int) -> dict[str, int]:
    """Axis sizes with the single -1 axis filled in; raises ConfigError when they cannot fit."""
    sizes = {"dcn_data": cfg.dcn_data, "data": cfg.data, "fsdp": cfg.fsdp, "tensor": cfg.tensor}
    free = [name for name, size in sizes.items() if size == -1]
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if n_devices % fixed:
            raise ConfigError(
                f"mesh: the fixed axes ({fixed} devices) do not divide the {n_devices} devices; "
                f"set mesh.{free[0]} explicitly or change the other axes"
            )
        sizes[free[0]] = n_devices // fixed
    if math.prod(sizes.values()) != n_devices:
        raise ConfigError(
            f"mesh: dcn_data×data×fsdp×tensor = {sizes} uses {math.prod(sizes.values())} "
            f"devices but {n_devices} are available; make the product {n_devices} (or set one "
            "axis to -1 to fill the rest)"
        )
    return sizes


def make_mesh(cfg: MeshConfig, devices=None) -> jax.sharding.Mesh:
    devices = list(devices if devices is not None else jax.devices())
    sizes = resolve_shape(cfg, len(devices))
    ici = (1, sizes["data"], sizes["fsdp"], sizes["tensor"])
    dcn = (sizes["dcn_data"], 1, 1, 1)
    slices = {getattr(d, "slice_index", 0) for d in devices}
    if len(slices) > 1 and sizes["dcn_data"] == 1:
        raise ConfigError(
            f"the devices span {len(slices)} slices joined by the data-center network, and "
            "mesh.dcn_data=1 would shard the parameters across it; set "
            f"--config=set:mesh.dcn_data={len(slices)} (data parallelism across slices)"
        )
    if sizes["dcn_data"] > 1 and len(slices) > 1:  # a real multi-slice job: DCN outermost
        if len(slices) != sizes["dcn_data"]:
            raise ConfigError(
                f"mesh.dcn_data={sizes['dcn_data']} but the job spans {len(slices)} slices; "
                f"set mesh.dcn_data={len(slices)}"
            )
        # Splitting a physical torus axis between two mesh axes (a tensor axis of 2 on a 4x4x8
        # slice) is how such meshes are built; without the flag mesh_utils refuses them.
        array = mesh_utils.create_hybrid_device_mesh(
            ici, dcn, devices, allow_split_physical_axes=True
        )
    else:
        shape = tuple(sizes[a] for a in AXES)
        try:
            array = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        except (ValueError, NotImplementedError, AssertionError):
            array = np.asarray(devices).reshape(shape)  # CPU / abstract devices: any order
    return jax.sharding.Mesh(array, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
    return mesh.shape["dcn_data"] * mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch(mesh: jax.sharding.Mesh, global_batch: int, grad_accum: int = 1) -> None:
    """Refuse a global batch the data-parallel axes (times `grad_accum`) do not divide, in one
    line that names the nearest valid global batches below and above and, when one helps, the
    mesh that keeps this batch (the spare factor of each slice on a tensor axis)."""
    dp = data_parallel_size(mesh)
    unit = dp * grad_accum
    if global_batch % unit == 0:
        return
    below, above = global_batch // unit * unit, (global_batch // unit + 1) * unit
    nearest = (
        f"the nearest valid global batches are {below} and {above}"
        if below
        else f"the smallest valid global batch is {above}"
    )
    raise ConfigError(
        f"train.batch_size={global_batch} must be a multiple of the data-parallel size {dp} "
        f"(dcn_data×data×fsdp) times train.grad_accum={grad_accum}: {nearest} "
        f"(--config=set:train.batch_size=N){_tensor_hint(mesh, global_batch, grad_accum)}"
    )


# A tensor axis wider than this is not suggested: iLLaDA-8B has 8 KV heads (LLaDA-1B 4), and the
# rule tables replicate a dimension the axis does not divide (parallel/rules.py), so more chips on
# `tensor` would repeat work instead of splitting it.
MAX_SUGGESTED_TENSOR = 8


def _tensor_hint(mesh: jax.sharding.Mesh, global_batch: int, grad_accum: int) -> str:
    """`, or keep N with a tensor axis: ...`: the mesh directives that keep this batch by giving
    the chips its micro-batch cannot cover to a tensor axis (640 rows on 256 FSDP chips:
    fsdp=128, tensor=2), or "" when no such mesh exists (a tensor axis already set, or one wider
    than `MAX_SUGGESTED_TENSOR` needed)."""
    shape = mesh.shape
    outer = shape["dcn_data"] * shape["data"]
    if global_batch % grad_accum or shape["tensor"] != 1:
        return ""
    rows = global_batch // grad_accum  # one micro-batch
    if rows % outer:
        return ""
    fsdp = math.gcd(rows // outer, shape["fsdp"])
    tensor = shape["fsdp"] // fsdp
    if tensor == 1 or tensor > MAX_SUGGESTED_TENSOR:
        return ""
    return (
        f", or keep {global_batch} with a tensor axis: --config=set:mesh.fsdp={fsdp} "
        f"--config=set:mesh.tensor={tensor} --config=set:mesh.rules=fsdp_tp"
    )
