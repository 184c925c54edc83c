"""The entry point of every stand-in: `python launch/pod_sim/cli.py TOOL ARGS...`.

The wrappers in `$POD_SIM_ROOT/bin/*/` (`world.install_tools`) call it with their own name. Each
call is logged to `$POD_SIM_ROOT/log/calls.log` (with the host it ran on) before it runs. A
stand-in does what the plans and the documented commands ask of the real tool, and refuses
anything else with an error naming what it does not stand in for, so a plan that changes is
noticed, not silently half-run. Names starting with `_` are the stand-ins' own background
processes (a systemd unit, a SLURM job, a JobSet).
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from pod_sim import cloud, containers, machine, slurm, world  # noqa: E402

TOOLS = {
    "gcloud": cloud.gcloud,
    "docker": containers.docker,
    "xpk": containers.xpk,
    "sbatch": slurm.sbatch,
    "srun": slurm.srun,
    "squeue": slurm.squeue,
    "sudo": machine.sudo,
    "systemctl": machine.systemctl,
    "mountpoint": machine.mountpoint,
    "gcsfuse": machine.gcsfuse,
    "apt-get": machine.apt_get,
    "curl": machine.curl,
    "uv": machine.uv,
    "hostname": machine.hostname,
    "lsb_release": machine.lsb_release,
    "_unit": machine.run_unit,
    "_slurm_job": slurm.run_job,
    "_jobset": containers.run_jobset,
}


def main(argv: list[str]) -> int:
    tool, args = argv[0], argv[1:]
    if not tool.startswith("_"):
        world.log_call(tool, args)
    return TOOLS[tool](args) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
