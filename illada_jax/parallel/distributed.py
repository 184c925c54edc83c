"""Starting JAX for a job: join a multi-process run when launched as one, split a CPU host.

`start_jax(cpu_devices)` must run before anything touches JAX's backends (device queries,
arrays, compiles). `illada train`, `generate`, `chat`, `eval` and local sweeps call it first thing
(`illada_jax.run_training`, for notebooks, only splits a CPU host into devices).

- `ILLADA_COORDINATOR`, `ILLADA_NUM_PROCESSES`, `ILLADA_PROCESS_ID` (set by `launch/local.py` or
  any launcher): `jax.distributed.initialize` with those values (local processes on 127.0.0.1);
- `ILLADA_DISTRIBUTED=auto` (TPU pods, SLURM): `jax.distributed.initialize()` detects the job;
- a CPU host is then split into one virtual device per core (`mesh.cpu_devices`).
"""

from __future__ import annotations

import os

from illada_jax.parallel.mesh import configure_cpu_devices


def start_jax(cpu_devices: int = 0) -> None:
    """Join the job this process belongs to (if any) and configure CPU devices."""
    import jax

    if os.environ.get("ILLADA_COORDINATOR"):
        jax.distributed.initialize(
            coordinator_address=os.environ["ILLADA_COORDINATOR"],
            num_processes=int(os.environ["ILLADA_NUM_PROCESSES"]),
            process_id=int(os.environ["ILLADA_PROCESS_ID"]),
        )
    elif os.environ.get("ILLADA_DISTRIBUTED") == "auto":  # TPU pods, SLURM: auto-detected
        jax.distributed.initialize()
    configure_cpu_devices(cpu_devices)
