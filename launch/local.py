"""Start N local processes joined by `jax.distributed` on 127.0.0.1 — what a pod does, on a laptop.

    python launch/local.py --num-processes 2 --devices-per-process 4 -- illada train --workdir runs/x

Each process gets ILLADA_COORDINATOR / ILLADA_NUM_PROCESSES / ILLADA_PROCESS_ID (read by
`illada train` before JAX starts) and, on CPU, `--xla_force_host_platform_device_count`. Output
of process 0 is streamed; the others go to WORKDIR-less log files `local-<i>.log` in the current
directory (or `--log-dir`). Exit code: the first non-zero exit code of any process, else 0.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    command: list[str],
    num_processes: int,
    devices_per_process: int,
    log_dir: pathlib.Path,
    port: int | None = None,
) -> int:
    if num_processes < 1 or devices_per_process < 1:
        raise SystemExit("--num-processes and --devices-per-process must be >= 1")
    if command and command[0] == "illada" and shutil.which("illada") is None:
        command = [sys.executable, "-m", "illada_jax.cli", *command[1:]]
    port = port or free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    processes, logs = [], []
    for index in range(num_processes):
        env = dict(os.environ)
        env.update(
            ILLADA_COORDINATOR=f"127.0.0.1:{port}",
            ILLADA_NUM_PROCESSES=str(num_processes),
            ILLADA_PROCESS_ID=str(index),
            XLA_FLAGS=(
                env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
                f"{devices_per_process}"
            ).strip(),
        )
        if index == 0:
            out = None
        else:
            out = open(log_dir / f"local-{index}.log", "w")  # noqa: SIM115 -- closed below
            logs.append(out)
        processes.append(subprocess.Popen(command, env=env, stdout=out, stderr=out))
    codes = [p.wait() for p in processes]
    for f in logs:
        f.close()
    return next((c for c in codes if c != 0), 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--devices-per-process", type=int, default=1)
    parser.add_argument("--log-dir", default=".", type=pathlib.Path)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --, e.g. -- illada train --workdir runs/x")
    return launch(command, args.num_processes, args.devices_per_process, args.log_dir, args.port)


if __name__ == "__main__":
    sys.exit(main())
