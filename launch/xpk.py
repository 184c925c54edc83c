"""Run a job as an XPK workload on a GKE TPU cluster (one or more slices), restarted on failure.

    python launch/xpk.py --cluster my-cluster --workload illada-small --tpu-type v5p-16 \\
        --docker-image us-docker.pkg.dev/PROJECT/illada/illada:latest \\
        -- illada train --config=config:small --workdir=gs://BUCKET/runs/small  # prints it
    python launch/xpk.py ... --execute -- illada train ...                      # submits it
    python launch/xpk.py --cluster my-cluster --workload illada-small --delete # removes it

`--dry-run` (the default) prints the `xpk workload create` command; `--execute` runs it. The image
is built from `launch/Dockerfile` (`docker build -f launch/Dockerfile -t IMAGE .`, then push).
Each pod runs the command after `--` with `ILLADA_DISTRIBUTED=auto` (`jax.distributed.initialize()`
finds the slice's hosts) and the slice's TPU runtime flags (`LIBTPU_INIT_ARGS` from
`illada_jax/parallel/tpu_runtime.py`, with the flags of the launching shell's `LIBTPU_INIT_ARGS`
on top); across slices (`--num-slices`; set `mesh.dcn_data` to match) XPK
and the TPU runtime provide the MEGASCALE_* settings. XPK restarts the whole JobSet up to
`--max-restarts` times when a slice is preempted or fails (add `--restart-on-user-code-failure` to
also restart after the job itself exits non-zero); each restart resumes from the newest checkpoint
in `--workdir`, so that directory must outlive the pods: `gs://BUCKET/runs/NAME` (read and
written directly) or a persistent mount with `checkpoint.shared_filesystem=True`. A pod that is
told to stop (SIGTERM) saves at the step all hosts agree on and exits 75
(`ILLADA_PREEMPTED_EXIT_CODE`), not 0, so the JobSet sees a disruption, not a finished job.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import re
import shlex
import subprocess
import sys

# XPK's own rule for workload names (its parser rejects anything else).
WORKLOAD_PATTERN = re.compile(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?")


PREEMPTED_EXIT_CODE = 75  # as launch/tpu_vm.py: a saved preemption is not a completed run
REPO = pathlib.Path(__file__).resolve().parent.parent


def _tpu_runtime():
    """`illada_jax/parallel/tpu_runtime.py`, loaded by its path: it imports no JAX, but the
    `illada_jax` package does, and the launching machine needs neither."""
    path = REPO / "illada_jax" / "parallel" / "tpu_runtime.py"
    spec = importlib.util.spec_from_file_location("illada_tpu_runtime", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def libtpu_init_args(tpu_type: str, num_slices: int) -> str:
    """The slice's flags from the project's table, this shell's `LIBTPU_INIT_ARGS` on top."""
    return _tpu_runtime().merged_init_args(
        os.environ.get("LIBTPU_INIT_ARGS", ""), tpu_type, num_slices
    )


def workload_command(command: list[str], libtpu_args: str = "") -> str:
    """The shell line each pod runs."""
    runtime = f"LIBTPU_INIT_ARGS={shlex.quote(libtpu_args)} " if libtpu_args else ""
    return (
        f"ILLADA_DISTRIBUTED=auto ILLADA_PREEMPTED_EXIT_CODE={PREEMPTED_EXIT_CODE} "
        f"{runtime}{shlex.join(command)}"
    )


def create_argv(args: argparse.Namespace, command: list[str]) -> list[str]:
    """`xpk workload create ...` for the parsed launcher options and the job command."""
    argv = [
        "xpk",
        "workload",
        "create",
        f"--cluster={args.cluster}",
        f"--workload={args.workload}",
        f"--tpu-type={args.tpu_type}",
        f"--num-slices={args.num_slices}",
        f"--docker-image={args.docker_image}",
        f"--max-restarts={args.max_restarts}",
        f"--priority={args.priority}",
    ]
    argv += _location(args)
    if args.restart_on_user_code_failure:
        argv.append("--restart-on-user-code-failure")
    libtpu_args = libtpu_init_args(args.tpu_type, args.num_slices)
    return [*argv, f"--command={workload_command(command, libtpu_args)}"]


def delete_argv(args: argparse.Namespace) -> list[str]:
    return [
        "xpk",
        "workload",
        "delete",
        f"--cluster={args.cluster}",
        f"--workload={args.workload}",
        *_location(args),
        "--force",
    ]


def _location(args: argparse.Namespace) -> list[str]:
    return [
        f"--{key}={value}"
        for key, value in (("project", args.project), ("zone", args.zone))
        if value
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:7]),
    )
    parser.add_argument("--cluster", required=True, help="the XPK (GKE) cluster")
    parser.add_argument(
        "--workload", required=True, help="workload name: lowercase letters, digits, '-' (max 40)"
    )
    parser.add_argument("--tpu-type", help="slice type, e.g. v5p-16, v5litepod-16")
    parser.add_argument("--num-slices", type=int, default=1, help="slices joined over DCN")
    parser.add_argument("--docker-image", help="image built from launch/Dockerfile, pushed")
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=3,
        help="JobSet restarts after a preemption or failure (default 3)",
    )
    parser.add_argument(
        "--restart-on-user-code-failure",
        action="store_true",
        help="also restart when the job exits non-zero",
    )
    parser.add_argument(
        "--priority", default="medium", choices=["very-low", "low", "medium", "high", "very-high"]
    )
    parser.add_argument("--project", default=None, help="default: gcloud's configured project")
    parser.add_argument("--zone", default=None, help="default: gcloud's configured zone")
    parser.add_argument("--delete", action="store_true", help="delete the workload instead")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run",
        dest="execute",
        action="store_false",
        default=False,
        help="print the xpk command (default)",
    )
    mode.add_argument("--execute", dest="execute", action="store_true", help="run it")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the job command")
    return parser


def check_args(args: argparse.Namespace, command: list[str], parser) -> None:
    if not WORKLOAD_PATTERN.fullmatch(args.workload):
        parser.error(
            f"--workload {args.workload!r}: XPK needs lowercase letters, digits and "
            "'-' (max 40), starting with a letter"
        )
    if args.delete:
        return
    missing = [
        flag
        for flag, value in (("--tpu-type", args.tpu_type), ("--docker-image", args.docker_image))
        if not value
    ]
    if missing:
        parser.error(f"{' and '.join(missing)} required to create a workload")
    if args.num_slices < 1 or args.max_restarts < 0:
        parser.error("--num-slices must be >= 1 and --max-restarts >= 0")
    try:
        _tpu_runtime().generation_of(args.tpu_type)
    except ValueError as err:
        parser.error(f"--tpu-type: {err}")
    if not command:
        parser.error(
            "give the job after --, e.g. -- illada train --config=config:small "
            "--workdir=gs://BUCKET/runs/small"
        )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    check_args(args, command, parser)
    xpk = delete_argv(args) if args.delete else create_argv(args, command)
    if not args.execute:
        print(shlex.join(xpk))
        return 0
    try:
        return subprocess.run(xpk).returncode
    except FileNotFoundError:
        print(
            "xpk is not installed: pip install xpk (it also needs gcloud and kubectl)",
            file=sys.stderr,
        )
        return 127


if __name__ == "__main__":
    sys.exit(main())
