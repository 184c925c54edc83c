"""Start N local processes joined by `jax.distributed` on 127.0.0.1 — what a pod does, on a laptop.

    python launch/local.py --num-processes 2 --devices-per-process 4 -- illada train \
        --workdir runs/x --config=set:checkpoint.shared_filesystem=True

(A local --workdir is one disk every process sees here; on a pod use gs://, see docs/pods.md.)

Each process gets ILLADA_COORDINATOR / ILLADA_NUM_PROCESSES / ILLADA_PROCESS_ID (read by
`illada train` before JAX starts) and, on CPU, `--xla_force_host_platform_device_count`. Output
of process 0 is streamed; the others go to log files `local-<i>.log` in the current directory (or
`--log-dir`). `--isolate` gives every process its own HOME, TMPDIR and ILLADA_CACHE under
`--log-dir/process-<i>/`, so the processes share nothing but what the command names (a bucket),
as the hosts of a pod do.

Like a pod's scheduler, the launcher treats the processes as one job:
- SIGTERM or SIGINT to the launcher is forwarded to every process (each saves at the step all
  agree on and exits 0);
- when one process exits with an error (or is killed), the others cannot go on (their collectives
  wait for it): they get SIGTERM, then SIGKILL after `--grace` seconds.
Exit code: the first non-zero exit code of any process, else 0.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time


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
    *,
    isolate: bool = False,
    grace: float = 30.0,
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
        if isolate:
            scratch = (log_dir / f"process-{index}").absolute()
            for name in ("home", "tmp", "cache"):
                (scratch / name).mkdir(parents=True, exist_ok=True)
            env.update(HOME=str(scratch / "home"), TMPDIR=str(scratch / "tmp"),
                       ILLADA_CACHE=str(scratch / "cache"))  # fmt: skip
        if index == 0:
            out = None
        else:
            out = open(log_dir / f"local-{index}.log", "w")  # noqa: SIM115 -- closed below
            logs.append(out)
        processes.append(subprocess.Popen(command, env=env, stdout=out, stderr=out))
    try:
        codes = supervise(processes, grace)
    finally:
        for f in logs:
            f.close()
    return next((c for c in codes if c != 0), 0)


def supervise(processes: list[subprocess.Popen], grace: float) -> list[int]:
    """Wait for all processes; forward SIGTERM/SIGINT; stop the rest when one fails."""

    def forward(signum, frame):
        for p in processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        failed_at = None
        while any(p.poll() is None for p in processes):
            failure = any(p.poll() not in (None, 0) for p in processes)
            if failure and failed_at is None:
                failed_at = time.monotonic()
                forward(signal.SIGTERM, None)
            if failed_at is not None and time.monotonic() - failed_at > grace:
                for p in processes:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.2)
        # A process that failed first is the cause; the ones stopped after it exit non-zero too.
        return [p.returncode for p in processes]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--devices-per-process", type=int, default=1)
    parser.add_argument("--log-dir", default=".", type=pathlib.Path)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="own HOME/TMPDIR/ILLADA_CACHE per process (share only the bucket)",
    )
    parser.add_argument("--grace", type=float, default=30.0,
                        help="seconds between SIGTERM and SIGKILL after a process fails")  # fmt: skip
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --, e.g. -- illada train --workdir runs/x")
    return launch(command, args.num_processes, args.devices_per_process, args.log_dir, args.port,
                  isolate=args.isolate, grace=args.grace)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
