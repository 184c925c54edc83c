"""Run a job on a GPU cluster under SLURM: write an sbatch script and (with `--execute`) submit it.

    python launch/slurm.py --nodes 2 --gpus-per-node 8 --time 04:00:00 \\
        -- illada train --config=config:small --workdir=gs://BUCKET/runs/small  # prints the script
    python launch/slurm.py ... --execute -- illada train ...                     # submits it

`srun` starts the processes with `ILLADA_DISTRIBUTED=auto`: `illada train` calls
`jax.distributed.initialize()`, which reads SLURM's variables (job id, task count, rank, node
list) and picks the coordinator itself. `--process-per gpu` (default) starts one process per GPU
(`--ntasks-per-node=GPUS`); JAX gives each the GPU of its SLURM_LOCALID. `--process-per node`
starts one process per node that drives all its GPUs (`JAX_LOCAL_DEVICE_IDS=0,...,GPUS-1`, since
JAX would otherwise pick only the GPU of local id 0). The job's output goes to
`LOG_DIR/%x-%j.out`. `--workdir` must be on storage every node sees (checkpoints are written by
all processes): `gs://BUCKET/runs/NAME`, or a directory of the cluster's shared file system with
`--config=set:checkpoint.shared_filesystem=True`. `--execute` writes the script to `LOG_DIR/NAME.sbatch` and submits it; `--dry-run`
(the default) prints it and submits nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import shlex
import subprocess
import sys

TIME_PATTERN = re.compile(r"(\d+-)?\d{1,2}(:\d{2}){0,2}")


@dataclasses.dataclass(frozen=True)
class SlurmJob:
    """What the sbatch script asks for."""

    name: str
    nodes: int
    gpus_per_node: int
    time: str
    process_per: str = "gpu"  # gpu | node
    cpus_per_task: int | None = None
    partition: str | None = None
    account: str | None = None
    log_dir: str = "slurm-logs"
    setup: tuple[str, ...] = ()  # shell lines before srun, e.g. `source venv/bin/activate`

    @property
    def tasks_per_node(self) -> int:
        return self.gpus_per_node if self.process_per == "gpu" else 1


def sbatch_script(job: SlurmJob, command: list[str]) -> str:
    """The sbatch script that runs `command` on every process of `job`."""
    directives = [
        f"--job-name={job.name}",
        f"--nodes={job.nodes}",
        f"--ntasks-per-node={job.tasks_per_node}",
        f"--gpus-per-node={job.gpus_per_node}",
        f"--time={job.time}",
        f"--output={job.log_dir}/%x-%j.out",
    ]
    optional = (
        ("cpus-per-task", job.cpus_per_task),
        ("partition", job.partition),
        ("account", job.account),
    )
    directives += [f"--{key}={value}" for key, value in optional if value]
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), "", "set -euo pipefail"]
    lines += [*job.setup, "export ILLADA_DISTRIBUTED=auto"]
    if job.process_per == "node":
        ids = ",".join(str(i) for i in range(job.gpus_per_node))
        lines.append(f"export JAX_LOCAL_DEVICE_IDS={ids}")
    lines.append(f"srun --kill-on-bad-exit=1 {shlex.join(command)}")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:5]),
    )
    parser.add_argument("--job-name", default="illada")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument(
        "--process-per",
        choices=["gpu", "node"],
        default="gpu",
        help="one process per GPU (default) or per node",
    )
    parser.add_argument("--time", default="01:00:00", help="wall-clock limit, [D-]HH:MM:SS")
    parser.add_argument("--cpus-per-task", type=int, default=None)
    parser.add_argument("--partition", default=None)
    parser.add_argument("--account", default=None)
    parser.add_argument("--log-dir", default="slurm-logs", help="sbatch output and script")
    parser.add_argument(
        "--setup",
        action="append",
        default=[],
        metavar="LINE",
        help="shell line run before srun (repeatable), e.g. 'source .venv/bin/activate'",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run",
        dest="execute",
        action="store_false",
        default=False,
        help="print the sbatch script (default)",
    )
    mode.add_argument(
        "--execute",
        dest="execute",
        action="store_true",
        help="write it to LOG_DIR/JOB_NAME.sbatch and submit it with sbatch",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the job command")
    return parser


def job_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> SlurmJob:
    if args.nodes < 1 or args.gpus_per_node < 1:
        parser.error("--nodes and --gpus-per-node must be >= 1")
    if not TIME_PATTERN.fullmatch(args.time):
        parser.error(f"--time {args.time!r}: use [D-]HH:MM:SS, e.g. 04:00:00 or 1-00:00:00")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", args.job_name):
        parser.error(f"--job-name {args.job_name!r}: letters, digits, '.', '_' and '-' only")
    return SlurmJob(
        name=args.job_name,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        time=args.time,
        process_per=args.process_per,
        cpus_per_task=args.cpus_per_task,
        partition=args.partition,
        account=args.account,
        log_dir=args.log_dir,
        setup=tuple(args.setup),
    )


def submit(job: SlurmJob, script: str) -> int:
    path = pathlib.Path(job.log_dir) / f"{job.name}.sbatch"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    print(f"wrote {path}", flush=True)
    try:
        return subprocess.run(["sbatch", str(path)]).returncode
    except FileNotFoundError:
        print(
            f"sbatch not found: run this on a SLURM login node, or submit {path} there",
            file=sys.stderr,
        )
        return 127


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error(
            "give the job after --, e.g. -- illada train --config=config:small "
            "--workdir=gs://BUCKET/runs/small"
        )
    job = job_from_args(args, parser)
    script = sbatch_script(job, command)
    if not args.execute:
        print(script, end="")
        return 0
    return submit(job, script)


if __name__ == "__main__":
    sys.exit(main())
