"""Named TPU slices -> devices, including abstract ones for ahead-of-time (AOT) compilation.

A slice name follows Google Cloud's accelerator-type naming, `GENERATION-N`:

- `v4-N`, `v5p-N`: N counts **TensorCores**. A v4/v5p chip has two TensorCores that JAX drives as
  one device (megacore), so `v5p-256` is 128 chips = 128 JAX devices, topology 4x4x8.
- `v5e-N`, `v6e-N` (also `v5litepod-N`): N counts **chips** (one TensorCore each), so `v6e-256` is
  256 chips, topology 16x16.

A multi-slice job is `Kx<slice>` (`2xv5p-256`: two 128-chip slices joined over DCN) or the
`num_slices` argument. An explicit physical topology is accepted too: `v5p:4x4x8`, `v6e:16x16`.

Default topologies are the ones Google provisions for each size: v4/v5p start at 2x2x1 (one host of
four chips) and double the smallest dimension (the last of equal ones): 2x2x2, 2x2x4, 2x4x4, 4x4x4,
4x4x8, 4x8x8, 8x8x8, ...; v5e/v6e start at 1x1 and go 1x2, 2x2, 2x4, 4x4, 4x8, 8x8, 8x16, 16x16.
Slices built from whole 4x4x4 cubes have wraparound (torus) links.

`abstract_devices(name)` returns `jax.experimental.topologies` devices: they carry the real device
kind, coordinates and slice index, so XLA compiles real TPU programs for them on any host with
libtpu installed, and nothing is allocated.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import re
import sys

from illada_jax.config.schema import ConfigError

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Generation:
    """What a TPU generation's name means: its libtpu topology prefix and chip layout."""

    name: str
    topology_prefix: str  # libtpu's name in `get_topology_desc(topology_name=PREFIX:AxBxC)`
    chip_config: str  # "megacore": two TensorCores per JAX device; "default": one
    cores_per_chip: int  # how many units of the `-N` suffix one chip is
    dims: int  # physical torus dimensions (3 for v4/v5p, 2 for v5e/v6e)
    hbm_bytes: int  # HBM per chip
    device_kind: str  # `device.device_kind` of its devices


# HBM per chip from the Cloud TPU system-architecture pages: v4 32 GiB, v5e 16 GiB, v5p 95 GiB,
# v6e (Trillium) 32 GiB.
GENERATIONS: dict[str, Generation] = {
    "v4": Generation("v4", "v4", "megacore", 2, 3, 32 * GIB, "TPU v4"),
    "v5p": Generation("v5p", "v5", "megacore", 2, 3, 95 * GIB, "TPU v5"),
    "v5e": Generation("v5e", "v5e", "default", 1, 2, 16 * GIB, "TPU v5 lite"),
    "v6e": Generation("v6e", "v6e", "default", 1, 2, 32 * GIB, "TPU v6 lite"),
}
_ALIASES = {"v5litepod": "v5e", "v6": "v6e", "v5": "v5p"}

_NAMED = re.compile(r"^(?:(?P<slices>\d+)x)?(?P<gen>[a-z0-9]+)-(?P<n>\d+)$")
_EXPLICIT = re.compile(r"^(?:(?P<slices>\d+)x)?(?P<gen>[a-z0-9]+):(?P<shape>\d+(?:x\d+){1,2})$")

# On a host without TPUs, libtpu (the `[tpu]` extra) still loads to compile for topologies; these
# stop it probing for TPU metadata (and logging errors about it).
_LIBTPU_QUIET = {
    "TPU_SKIP_MDS_QUERY": "1",
    "TPU_ACCELERATOR_TYPE": "v5p-8",
    "TPU_WORKER_HOSTNAMES": "localhost",
    # No TPU to guard: let several compiling processes (tests, a search) load libtpu at once
    # instead of failing on /tmp/libtpu_lockfile.
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
}

EXAMPLES = "v4-8, v5e-16, v5p-256, v6e-256, 2xv5p-256, or an explicit shape such as v5p:4x4x8"


@dataclasses.dataclass(frozen=True)
class Slice:
    """A resolved slice: generation, physical shape of one slice, number of slices."""

    name: str  # canonical name, e.g. "v5p-256" or "2xv5p-256"
    generation: Generation
    shape: tuple[int, ...]  # chips along each torus dimension, one slice
    num_slices: int = 1

    @property
    def chips_per_slice(self) -> int:
        return math.prod(self.shape)

    @property
    def num_chips(self) -> int:
        """JAX devices of the whole job (one per chip on every generation here)."""
        return self.chips_per_slice * self.num_slices

    @property
    def hbm_per_chip(self) -> int:
        return self.generation.hbm_bytes

    @property
    def topology_name(self) -> str:
        """libtpu's topology string, e.g. `v5:4x4x8`."""
        return f"{self.generation.topology_prefix}:{'x'.join(map(str, self.shape))}"


def _generation(name: str, full: str) -> Generation:
    key = _ALIASES.get(name, name)
    if key not in GENERATIONS:
        raise ConfigError(
            f"topology {full!r}: unknown TPU generation {name!r}; known generations are "
            f"{', '.join(GENERATIONS)} (e.g. {EXAMPLES})"
        )
    return GENERATIONS[key]


def default_shape(generation: Generation, chips: int) -> tuple[int, ...]:
    """Google's default physical shape for a slice of `chips` chips (a power of two)."""
    shape = [2, 2, 1] if generation.dims == 3 else [1, 1]
    if chips < math.prod(shape):
        raise ConfigError(
            f"{generation.name} slices have at least {math.prod(shape)} chips "
            f"({math.prod(shape) * generation.cores_per_chip} in the -N suffix)"
        )
    while math.prod(shape) < chips:
        smallest = min(shape)
        last = max(i for i, size in enumerate(shape) if size == smallest)
        shape[last] *= 2
    return tuple(shape)


def _named_slice(match: re.Match, full: str) -> tuple[Generation, tuple[int, ...]]:
    generation = _generation(match["gen"], full)
    count = int(match["n"])
    unit = "TensorCores" if generation.cores_per_chip == 2 else "chips"
    chips, rest = divmod(count, generation.cores_per_chip)
    if rest or chips < 1 or chips & (chips - 1):
        raise ConfigError(
            f"topology {full!r}: the -N suffix of {generation.name} counts {unit} and must be a "
            f"power of two ({generation.name}-8, {generation.name}-16, ...); for other shapes "
            f"give the physical topology, e.g. {generation.name}:"
            f"{'x'.join(['4'] * generation.dims)}"
        )
    try:
        return generation, default_shape(generation, chips)
    except ConfigError as err:
        raise ConfigError(f"topology {full!r}: {err}") from None


def _explicit_slice(match: re.Match, full: str) -> tuple[Generation, tuple[int, ...]]:
    generation = _generation(match["gen"], full)
    shape = tuple(int(size) for size in match["shape"].split("x"))
    if len(shape) != generation.dims or min(shape) < 1:
        raise ConfigError(
            f"topology {full!r}: {generation.name} topologies have {generation.dims} positive "
            f"dimensions, e.g. {generation.name}:{'x'.join(['2'] * generation.dims)}"
        )
    return generation, shape


def parse_slice(name: str, num_slices: int | None = None) -> Slice:
    """`v5p-256`, `2xv5p-256`, `v6e:16x16` -> `Slice`; raises ConfigError naming valid forms.

    `num_slices` (when given) must agree with a `K x` prefix, or supplies it.
    """
    text = name.strip().lower()
    named, explicit = _NAMED.match(text), _EXPLICIT.match(text)
    if named:
        generation, shape = _named_slice(named, name)
        prefix = named["slices"]
    elif explicit:
        generation, shape = _explicit_slice(explicit, name)
        prefix = explicit["slices"]
    else:
        raise ConfigError(f"topology {name!r} is not a TPU slice name; use e.g. {EXAMPLES}")
    slices = int(prefix) if prefix else (num_slices or 1)
    if prefix and num_slices not in (None, slices):
        raise ConfigError(
            f"topology {name!r} names {slices} slices but --num-slices={num_slices}; "
            "give the count once"
        )
    if slices < 1:
        raise ConfigError(f"topology {name!r}: the number of slices must be >= 1")
    if named:
        base = f"{generation.name}-{int(named['n'])}"
    else:
        base = f"{generation.name}:{'x'.join(map(str, shape))}"
    canonical = base if slices == 1 else f"{slices}x{base}"
    return Slice(canonical, generation, shape, slices)


def _host_bounds(slice_: Slice) -> tuple[int, int, int]:
    """Chips per host: 2x2x1 (four chips) on multi-host slices, the whole slice on smaller ones."""
    shape = (*slice_.shape, 1)[:3]
    return tuple(min(size, bound) for size, bound in zip(shape, (2, 2, 1)))


def _wraparound(slice_: Slice) -> tuple[bool, bool, bool]:
    """Torus links exist on slices made of whole 4x4x4 cubes (v4/v5p) or full 16x16 pods."""
    shape = slice_.shape
    if slice_.generation.dims == 3:
        whole_cubes = all(size % 4 == 0 for size in shape)
        return (whole_cubes,) * 3
    full_pod = all(size == 16 for size in shape)
    return (full_pod, full_pod, False)


def abstract_devices(name: str, num_slices: int | None = None) -> list:
    """Abstract TPU devices of a named slice (works on any host with libtpu; nothing allocated)."""
    from jax.experimental.topologies import get_topology_desc

    slice_ = parse_slice(name, num_slices)
    try:
        topology = get_topology_desc(
            platform="tpu",
            topology_name=slice_.topology_name,
            chip_config_name=slice_.generation.chip_config,
            chips_per_host_bounds=_host_bounds(slice_),
            num_slices=slice_.num_slices,
            wrap=_wraparound(slice_),
        )
    except Exception as err:  # libtpu missing, or a topology it does not know
        raise ConfigError(
            f"cannot describe TPU topology {slice_.name} ({slice_.topology_name}): {err}. "
            "AOT compilation for TPUs needs libtpu: pip install -e '.[tpu]'"
        ) from err
    devices = list(topology.devices)
    if len(devices) != slice_.num_chips:
        raise ConfigError(
            f"topology {slice_.name}: libtpu returned {len(devices)} devices, expected "
            f"{slice_.num_chips} (one per chip)"
        )
    return devices


def _has_local_accelerator() -> bool:
    """TPU (/dev/accel*, /dev/vfio/N) or NVIDIA GPU device files on this host."""
    patterns = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*")
    return any(glob.glob(pattern) for pattern in patterns)


def quiet_libtpu_on_cpu_host() -> bool:
    """On a CPU-only host, stop libtpu probing for TPU metadata: set its variables
    before JAX's backends start. Never on TPU VMs. Returns whether it changed anything."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    cpu_only = platforms == "cpu" or (not platforms and not _has_local_accelerator())
    if not cpu_only:
        return False
    if not platforms:
        os.environ["JAX_PLATFORMS"] = "cpu"  # TPU programs still compile via the topology
        if "jax" in sys.modules:  # JAX read the variable when it was imported: tell its config
            sys.modules["jax"].config.update("jax_platforms", "cpu")
    for name, value in _LIBTPU_QUIET.items():
        os.environ.setdefault(name, value)
    return True
