"""TPU runtime settings as code: the libtpu/XLA flags a pod run sets, per TPU generation.

Pod users of JAX set a handful of libtpu flags through `LIBTPU_INIT_ARGS` (MaxText's and the
Cloud TPU performance guides' recipes): asynchronous collectives fused with and overlapped by
compute (FSDP's all-gathers and reduce-scatters hide behind the matmuls), and the scoped VMEM
limit that Pallas kernels such as splash attention may use. Across slices, the data-parallel
all-reduce over DCN is optimised as well. This module is the one table of them:

- `libtpu_flags(accelerator_type, num_slices)` -> {flag: value} for a slice name (`v5p-256`,
  `v5litepod-16`, `v6e-8`, `2xv5p-256`);
- `libtpu_init_args(...)` -> the `LIBTPU_INIT_ARGS` string; `merged_init_args(user, ...)` keeps
  every flag the user already set (the user's value wins);
- `runtime_record()` -> what the running process was started with (the variables above, jax,
  jaxlib and libtpu versions), which the runner stores in `WORKDIR/config.json`.

The launchers (`launch/tpu_vm.py`, `launch/xpk.py`) put the table's `LIBTPU_INIT_ARGS` into every
worker's environment, and `illada compile` compiles with the same flags, so the report describes
the program the pod runs. libtpu refuses an unknown flag when it starts; the tests compile with
each generation's flags to keep the table valid for the pinned libtpu.

Nothing here imports JAX: the launchers import this module on a client without it.
"""

from __future__ import annotations

import os
import re
import sys

# Collective/compute overlap: all-gathers and reduce-scatters run asynchronously, fused into
# compute where possible, over several steps of a loop (the layer scan), overlapped with the
# TensorCore's matmuls. libtpu allows the "continuation fusion" of all-gathers that
# `xla_enable_async_all_gather` adds to the fused collectives on v5e only (elsewhere it refuses
# to compile: FAILED_PRECONDITION, checked with the pinned libtpu).
_OVERLAP = {
    "xla_tpu_enable_async_collective_fusion": "true",
    "xla_tpu_enable_async_collective_fusion_fuse_all_gather": "true",
    "xla_tpu_enable_async_collective_fusion_multiple_steps": "true",
    "xla_tpu_overlap_compute_collective_tc": "true",
}
_OVERLAP_BY_GENERATION = {"v5e": {**_OVERLAP, "xla_enable_async_all_gather": "true"}}

# Scoped VMEM (KiB) a kernel may claim: splash attention's blocks of 512 want more than the
# default (MaxText's dense-model setting is 96 MiB). The pinned libtpu's maxima (it logs
# INVALID_ARGUMENT and ignores a larger value): v5p 65,472 KiB, v6e 131,008, v5e 131,072; v4
# keeps libtpu's default.
_VMEM_KIB = {"v5p": 61440, "v6e": 98304, "v5e": 98304}

# Across slices (DCN): the data-parallel all-reduce of the gradients, split and overlapped.
_MULTI_SLICE = {
    "xla_tpu_enable_data_parallel_all_reduce_opt": "true",
    "xla_tpu_data_parallel_opt_different_sized_ops": "true",
}

GENERATIONS = ("v4", "v5e", "v5p", "v6e")
_ALIASES = {"v5litepod": "v5e", "v5": "v5p", "v6": "v6e"}
_SLICE = re.compile(r"^(?:(?P<slices>\d+)x)?(?P<gen>[a-z0-9]+)[-:]")


def generation_of(accelerator_type: str) -> str:
    """`v5p-256` / `v5litepod-16` / `2xv6e-8` / `v5p:4x4x8` -> `v5p` / `v5e` / `v6e` / `v5p`."""
    match = _SLICE.match(accelerator_type.strip().lower())
    name = _ALIASES.get(match["gen"], match["gen"]) if match else None
    if name not in GENERATIONS:
        raise ValueError(
            f"{accelerator_type!r} is not a TPU slice name (e.g. v5p-256, v5litepod-16, v6e-8); "
            f"known generations: {', '.join(GENERATIONS)}"
        )
    return name


def slices_of(accelerator_type: str) -> int:
    """The `K` of a `Kx<slice>` name (1 without a prefix)."""
    match = _SLICE.match(accelerator_type.strip().lower())
    return int(match["slices"]) if match and match["slices"] else 1


def libtpu_flags(accelerator_type: str, num_slices: int | None = None) -> dict[str, str]:
    """The table's flags for a slice (see the module docstring), in a stable order."""
    generation = generation_of(accelerator_type)
    slices = num_slices or slices_of(accelerator_type)
    flags = dict(_OVERLAP_BY_GENERATION.get(generation, _OVERLAP))
    if generation in _VMEM_KIB:
        flags["xla_tpu_scoped_vmem_limit_kib"] = str(_VMEM_KIB[generation])
    if slices > 1:
        flags.update(_MULTI_SLICE)
    return flags


def format_args(flags: dict[str, str]) -> str:
    return " ".join(f"--{name}={value}" for name, value in flags.items())


def parse_args(text: str) -> dict[str, str]:
    """`--a=1 --b=true` -> {"a": "1", "b": "true"} (a bare `--flag` means true)."""
    out = {}
    for word in text.split():
        name, _, value = word.lstrip("-").partition("=")
        if name:
            out[name] = value or "true"
    return out


def libtpu_init_args(accelerator_type: str, num_slices: int | None = None) -> str:
    """The table's `LIBTPU_INIT_ARGS` for a slice."""
    return format_args(libtpu_flags(accelerator_type, num_slices))


def merged_init_args(user: str, accelerator_type: str, num_slices: int | None = None) -> str:
    """The table's flags with the user's `LIBTPU_INIT_ARGS` on top (the user's values win,
    the user's other flags are kept)."""
    return format_args({**libtpu_flags(accelerator_type, num_slices), **parse_args(user)})


def apply_to_environment(accelerator_type: str, num_slices: int | None = None) -> str:
    """Set `LIBTPU_INIT_ARGS` for this process (merged with what is set) before libtpu starts;
    returns the value. libtpu reads the variable once, when it is first loaded."""
    value = merged_init_args(os.environ.get("LIBTPU_INIT_ARGS", ""), accelerator_type, num_slices)
    os.environ["LIBTPU_INIT_ARGS"] = value
    return value


RECORDED_VARIABLES = (
    "LIBTPU_INIT_ARGS",
    "XLA_FLAGS",
    "JAX_PLATFORMS",
    "TPU_ACCELERATOR_TYPE",
    "MEGASCALE_NUM_SLICES",
    "JAX_COMPILATION_CACHE_DIR",
)


def runtime_record() -> dict:
    """What this process runs with: the runtime variables above (those set), the Python, jax,
    jaxlib and libtpu versions. Stored in `WORKDIR/config.json` under `runtime`."""
    from importlib import metadata

    versions = {}
    for package in ("jax", "jaxlib", "libtpu"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": ".".join(map(str, sys.version_info[:3])),
        **versions,
        "environment": {k: os.environ[k] for k in RECORDED_VARIABLES if os.environ.get(k)},
    }
