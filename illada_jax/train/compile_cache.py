"""JAX's persistent compilation cache for a run: a restarted job loads its compiled steps.

A preempted pod job restarts (the supervisor in `launch/tpu_vm.py`, XPK's JobSet) and, without a
cache, compiles its train and eval steps again: minutes for an 8B model on a large slice, every
restart. With `train.compilation_cache="auto"` (the default) the runner points JAX's persistent
cache at `WORKDIR/compile_cache` before compiling, so a restart with the same program (same
config, devices, JAX and libtpu) finds it there; it lives beside the checkpoints, on gs:// for
pod runs (JAX writes it through `etils.epath`; in a multi-process job one process writes it).
`bench/compile.py` measures a restart's compile time with a cold and a warm cache.

The cache is process-wide in JAX (initialised at the first compile): a process that trains two
runs (a notebook, a local sweep) re-points it per run. A cache the user configured
(`JAX_COMPILATION_CACHE_DIR` or `jax.config`) is left alone under "auto".
"""

from __future__ import annotations

import jax

from illada_jax import storage

DIRECTORY = "compile_cache"
MIN_COMPILE_SECONDS = 0.5

_owned: str | None = None  # the directory this module pointed JAX at (None: not us)


def cache_directory(setting: str, workdir) -> str | None:
    """Where the cache goes for `train.compilation_cache=setting` (None: no cache)."""
    if setting == "off":
        return None
    if setting == "auto":
        return str(storage.path(workdir) / DIRECTORY)
    return str(storage.path(setting))


def configure(setting: str, workdir) -> str | None:
    """Point JAX's persistent compilation cache at the run's directory (see the module doc);
    returns the directory in use (None: off)."""
    global _owned
    from jax.experimental.compilation_cache import compilation_cache

    current = jax.config.jax_compilation_cache_dir
    if setting == "auto" and current and current != _owned:
        return current  # the user's own cache
    directory = cache_directory(setting, workdir)
    if directory == current:
        return directory
    jax.config.update("jax_compilation_cache_dir", directory)
    # The steps, not the many tiny eager ops (each a file, a network write on gs://); JAX's
    # default (1 s) would skip a small model's eval step.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    compilation_cache.reset_cache()  # JAX reads the directory again at the next compile
    _owned = directory
    return directory
