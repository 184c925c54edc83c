"""Run a job on every worker of a Cloud TPU VM or queued resource (single or multi-slice).

    python launch/tpu_vm.py --name illada-v5p --zone us-east5-a --accelerator-type v5p-16 \\
        -- illada train --config=config:small --workdir=gs://BUCKET/runs/small   # prints the plan
    python launch/tpu_vm.py ... --execute -- illada train ...                  # runs it
    python launch/tpu_vm.py --name illada-v5p --zone us-east5-a --accelerator-type v5p-16 \\
        --delete                                                               # tears it down

The plan, printed one command per line (`--dry-run`, the default; run them from the repository
root) or run in order (`--execute`, stopping at the first failure):

1. create the TPU: `gcloud compute tpus tpu-vm create` for one slice, or a queued resource
   (`gcloud compute tpus queued-resources create`, `--queued`, required for `--num-slices` > 1:
   `--node-count/--node-prefix`) and wait until it is ACTIVE (`--skip-create` reuses one);
2. ship the code (`--skip-install` skips it): build a wheel of this project and copy it to every
   worker, then install it with its `[tpu]` extra into `~/illada`, a Python 3.12 venv made with
   uv (the TPU VM images ship an older Python; 3.12 is what the Docker images use, so pip picks
   the current JAX and its libtpu: README, "Which Python, which JAX") — or, with `--image`, pull
   that Docker image there;
3. (`--gcsfuse BUCKET`) install gcsfuse and mount `gs://BUCKET` at `/gcs/BUCKET` on every
   worker: prepared ArrayRecord shards on that bucket are then read through the mount (the data
   reader uses it for `gs://BUCKET/...` paths by itself);
4. start the job on every worker, detached: a supervisor script (`worker_script`) is written to
   `~/illada-job.sh` and run as the systemd service `illada-job` (it survives the client's
   disconnect and a reboot of the worker). The script runs the command after `--` with
   `ILLADA_DISTRIBUTED=auto` (`jax.distributed.initialize()` finds the workers from the TPU
   metadata) and the TPU runtime flags of the slice (`LIBTPU_INIT_ARGS` from
   `illada_jax/parallel/tpu_runtime.py`; flags already in the launching shell's
   `LIBTPU_INIT_ARGS` are kept and win), appends its output to `~/illada-train.log` (copied to
   `WORKDIR/logs/HOST.log` when the workdir is `gs://BUCKET/...` or its mount `/gcs/BUCKET/...`),
   and restarts it after a preemption (the job exits 75: it saved and stopped) or a crash (at
   most `--max-failures` times), until it exits 0 (its last step saved).
   Across slices (`--num-slices`) the launcher starts the processes, so it sets the MEGASCALE_*
   variables the TPU runtime needs: the coordinator (worker 0 of slice 0), slice count and id.

The command runs in the home directory. A multi-host run needs a `--workdir` all workers share:
`gs://BUCKET/runs/NAME` (or a mounted filesystem with `checkpoint.shared_filesystem=True`), and
every other path it reads (datasets, `train.eval_dataset`, `data.tokenizer`) must be on the bucket
too: a relative path names a file in each worker's home directory.
Watch it with `gcloud ... ssh --worker=0 --command='tail -f ~/illada-train.log'` or TensorBoard on
the gs:// run directory; stop it with `--stop` (runs `systemctl stop illada-job` on every worker).

Teardown is separate: `--delete` prints (or with `--execute` runs) only the delete command.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import importlib.util
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time
import tomllib

REPO = pathlib.Path(__file__).resolve().parent.parent
VENV = "~/illada"  # on each worker
LOG = "~/illada-train.log"
SCRIPT = "~/illada-job.sh"
SERVICE = "illada-job"
PREEMPTED_EXIT_CODE = 75  # `illada train` exits with it after a preemption save (EX_TEMPFAIL)
MEGASCALE_PORT = 8080
UV = "~/.local/bin/uv"
# The workers' Python: the Docker images' (launch/Dockerfile), so both get the same JAX and libtpu.
PYTHON = "3.12"
GCSFUSE_ROOT = "/gcs"  # where `--gcsfuse BUCKET` mounts buckets (and the data reader looks)
# The TPU software version matching each generation (TPU docs, "TPU software versions").
RUNTIME_VERSIONS = {
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
NAME_PATTERN = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
QUEUED_POLL_SECONDS = 30


@dataclasses.dataclass(frozen=True)
class Step:
    """One command of the plan: an argv run directly, or a shell line (`shell=True`)."""

    argv: tuple[str, ...] = ()
    shell: str = ""
    waits_for_active: bool = False  # executed by polling in Python, printed as a shell loop

    def text(self) -> str:
        return self.shell or shlex.join(self.argv)


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the job runs: a TPU VM, or a queued resource of `num_slices` slices."""

    name: str
    zone: str
    accelerator_type: str
    runtime_version: str
    project: str | None = None
    num_slices: int = 1
    queued: bool = False
    capacity: str = "on-demand"  # on-demand | spot | reserved

    @property
    def group(self) -> tuple[str, ...]:
        if self.queued:
            return ("gcloud", "compute", "tpus", "queued-resources")
        return ("gcloud", "compute", "tpus", "tpu-vm")

    @property
    def location(self) -> tuple[str, ...]:
        project = (f"--project={self.project}",) if self.project else ()
        return (f"--zone={self.zone}", *project)

    @property
    def all_workers(self) -> tuple[str, ...]:
        return ("--node=all", "--worker=all") if self.queued else ("--worker=all",)


def default_runtime_version(accelerator_type: str) -> str:
    generation = accelerator_type.split("-")[0]
    if generation not in RUNTIME_VERSIONS:
        raise SystemExit(
            f"no default --runtime-version for {accelerator_type!r}; pass one "
            f"(known generations: {', '.join(RUNTIME_VERSIONS)})"
        )
    return RUNTIME_VERSIONS[generation]


def wheel_name() -> str:
    """The file name `pip wheel` gives this project (PEP 427 normalised name)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    name = re.sub(r"[-_.]+", "_", project["name"]).lower()
    return f"{name}-{project['version']}-py3-none-any.whl"


def create_steps(target: Target) -> list[Step]:
    capacity = () if target.capacity == "on-demand" else (f"--{target.capacity}",)
    common = (*target.group, "create", target.name, *target.location,
              f"--accelerator-type={target.accelerator_type}")  # fmt: skip
    if not target.queued:
        return [Step((*common, f"--version={target.runtime_version}", *capacity))]
    if target.num_slices > 1:
        nodes = (f"--node-count={target.num_slices}", f"--node-prefix={target.name}")
    else:
        nodes = (f"--node-id={target.name}",)
    create = Step((*common, f"--runtime-version={target.runtime_version}", *nodes, *capacity))
    return [create, wait_step(target)]


def describe_argv(target: Target) -> tuple[str, ...]:
    return (*target.group, "describe", target.name, *target.location, "--format=value(state.state)")


def wait_step(target: Target) -> Step:
    state = f"$({shlex.join(describe_argv(target))})"
    loop = f'until [ "{state}" = ACTIVE ]; do sleep {QUEUED_POLL_SECONDS}; done'
    return Step(shell=loop, waits_for_active=True)


def ssh_step(target: Target, command: str) -> Step:
    return Step(
        (
            *target.group,
            "ssh",
            target.name,
            *target.location,
            *target.all_workers,
            f"--command={command}",
        )
    )


def install_steps(target: Target, image: str | None) -> list[Step]:
    if image:
        host = image.split("/")[0]
        auth = (
            f"sudo gcloud auth configure-docker {host} --quiet && " if _gcp_registry(host) else ""
        )
        return [ssh_step(target, f"{auth}sudo docker pull {image}")]
    wheel = wheel_name()
    build = Step(("python3", "-m", "pip", "wheel", "--no-deps", "--wheel-dir=dist", "."))
    copy = Step(
        (
            *target.group,
            "scp",
            f"dist/{wheel}",
            f"{target.name}:",
            *target.location,
            *target.all_workers,
        )
    )
    install = (
        f"(test -x {UV} || curl -LsSf https://astral.sh/uv/install.sh | sh) && "
        f"{UV} venv --allow-existing --python {PYTHON} {VENV} && "
        f"{UV} pip install --python {VENV}/bin/python --reinstall-package illada-jax "
        f'"$HOME/{wheel}[tpu]"'
    )
    return [build, copy, ssh_step(target, install)]


def _gcp_registry(host: str) -> bool:
    return host.endswith(("gcr.io", "docker.pkg.dev"))


def job_line(command: list[str], image: str | None) -> str:
    """The job as a shell line, with ILLADA_DISTRIBUTED=auto (inside the image with --image).

    With an image, the supervisor's variables of `PASSED_VARS` that are set go into the container
    as `-e NAME=VALUE`, expanded before `sudo`: sudo resets the environment, so a bare `-e NAME`
    (docker's pass-through) would find nothing there."""
    job = shlex.join(command)
    if image:
        names = " ".join(PASSED_VARS)
        return (
            f'passed=(); for name in {names}; do [ -n "${{!name:-}}" ] && '
            'passed+=(-e "$name=${!name}"); done; '
            "sudo docker run --rm --net=host --privileged -e ILLADA_DISTRIBUTED=auto "
            f'"${{passed[@]}}" -v "$HOME/runs:/work/runs" {image} {job}'
        )
    return f". {VENV}/bin/activate && ILLADA_DISTRIBUTED=auto {job}"


MEGASCALE_VARS = (
    "MEGASCALE_COORDINATOR_ADDRESS",
    "MEGASCALE_NUM_SLICES",
    "MEGASCALE_SLICE_ID",
    "MEGASCALE_PORT",
)
# What the supervisor's environment hands into the container (`docker run -e NAME`).
PASSED_VARS = ("ILLADA_PREEMPTED_EXIT_CODE", "LIBTPU_INIT_ARGS", *MEGASCALE_VARS)


def _tpu_runtime():
    """`illada_jax/parallel/tpu_runtime.py`, loaded by its path: it imports no JAX, but the
    `illada_jax` package does, and the launching machine needs neither."""
    path = REPO / "illada_jax" / "parallel" / "tpu_runtime.py"
    spec = importlib.util.spec_from_file_location("illada_tpu_runtime", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def libtpu_init_args(target: Target) -> str:
    """`LIBTPU_INIT_ARGS` for the workers: the slice's flags from the project's table, with the
    flags of this shell's `LIBTPU_INIT_ARGS` on top (the user's values win)."""
    runtime = _tpu_runtime()
    return runtime.merged_init_args(
        os.environ.get("LIBTPU_INIT_ARGS", ""), target.accelerator_type, target.num_slices
    )


def logs_url(workdir: str) -> str:
    """Where the supervisor copies each worker's log: `WORKDIR/logs` as a gs:// URL, for a gs://
    workdir or one on the gcsfuse mount (`/gcs/BUCKET/...`); "" for any other path."""
    workdir = workdir.rstrip("/")
    if workdir.startswith("gs://"):
        return f"{workdir}/logs"
    mount = f"{GCSFUSE_ROOT}/"
    if workdir.startswith(mount) and workdir[len(mount) :]:
        return f"gs://{workdir[len(mount) :]}/logs"
    return ""


def workdir_of(command: list[str]) -> str | None:
    """The `--workdir` of an `illada train` command, if given."""
    for index, arg in enumerate(command):
        if arg.startswith("--workdir="):
            return arg.split("=", 1)[1]
        if arg == "--workdir" and index + 1 < len(command):
            return command[index + 1]
    return None


def worker_script(command: list[str], image: str | None, *, max_failures: int = 10,
                  gcsfuse_bucket: str | None = None, libtpu_args: str = "") -> str:  # fmt: skip
    """The supervisor each worker runs (bash): the job, restarted until it completes.

    Exit 0 of the job: done (a marker file stops later starts, e.g. after a reboot). Exit 75: the
    job was preempted and saved; restart without counting a failure. Anything else: a crash;
    restart after `ILLADA_RESTART_DELAY` seconds (default 30), giving up after `max_failures`.
    `~/illada-job.env` (written by the launcher for multi-slice jobs) is read first. The job gets
    `libtpu_args` as `LIBTPU_INIT_ARGS` (the TPU runtime reads it when it starts).
    """
    logs = logs_url(workdir_of(command) or "")
    runtime = f"export LIBTPU_INIT_ARGS={shlex.quote(libtpu_args)}\n" if libtpu_args else ""
    mount = ""
    if gcsfuse_bucket:
        point = f"{GCSFUSE_ROOT}/{gcsfuse_bucket}"
        mount = f"mountpoint -q {point} || gcsfuse --implicit-dirs {gcsfuse_bucket} {point}\n"
    return f"""#!/usr/bin/env bash
# Generated by launch/tpu_vm.py: run the illada job until it completes (see its docstring).
set -u
cd ~
LOG={LOG}
DONE=~/illada-job.done
LOGS_URL={shlex.quote(logs)}
[ -f ~/illada-job.env ] && set -a && . ~/illada-job.env && set +a
[ -f "$DONE" ] && {{ echo "job already completed ($DONE)" >> $LOG; exit 0; }}
{mount}{runtime}export ILLADA_PREEMPTED_EXIT_CODE={PREEMPTED_EXIT_CODE}
export PYTHONUNBUFFERED=1  # the log is read while the job runs (tail, the resume check)
upload_log() {{
  [ -n "$LOGS_URL" ] && gcloud storage cp -q $LOG "$LOGS_URL/$(hostname).log" > /dev/null 2>&1
  return 0
}}
failures=0
attempt=0
while true; do
  attempt=$((attempt + 1))
  echo "=== illada job attempt $attempt at $(date -u +%FT%TZ)" >> $LOG
  ( {job_line(command, image)} ) >> $LOG 2>&1
  code=$?
  echo "=== exit code $code at $(date -u +%FT%TZ)" >> $LOG
  upload_log
  if [ $code -eq 0 ]; then
    touch "$DONE"
    exit 0
  elif [ $code -ne {PREEMPTED_EXIT_CODE} ]; then
    failures=$((failures + 1))
    if [ $failures -gt {max_failures} ]; then
      echo "=== giving up after $failures failures" >> $LOG
      exit $code
    fi
  fi
  sleep "${{ILLADA_RESTART_DELAY:-30}}"
done
"""


def start_command(script: str, env: dict[str, str] | None = None) -> str:
    """Install `script` as the systemd service SERVICE and (re)start it, detached.

    The supervisor script does the restarting; systemd only detaches it, starts it at boot and
    restarts it when it dies of a signal (`Restart=on-abnormal`). Not `on-failure`: the script
    exits non-zero when it gives up after `--max-failures` crashes, and a restart would start
    the count again, forever."""
    encoded = base64.b64encode(script.encode()).decode()
    env_file = "".join(f"{k}={v}\\n" for k, v in (env or {}).items())
    unit = (
        "[Unit]\\nDescription=illada job\\nAfter=network-online.target\\n"
        "[Service]\\nUser=%s\\nExecStart=/bin/bash %s/illada-job.sh\\nRestart=on-abnormal\\n"
        "RestartSec=30\\n[Install]\\nWantedBy=multi-user.target\\n"
    )
    return (
        f"echo {encoded} | base64 -d > {SCRIPT} && rm -f ~/illada-job.done && "
        f"printf '{env_file}' > ~/illada-job.env && "
        f'printf \'{unit}\' "$USER" "$HOME" | sudo tee /etc/systemd/system/{SERVICE}.service '
        f"> /dev/null && sudo systemctl daemon-reload && sudo systemctl enable {SERVICE} && "
        f"sudo systemctl restart {SERVICE}"
    )


def gcsfuse_command(bucket: str) -> str:
    """Install gcsfuse (Google's apt repository) and mount `bucket` at /gcs/BUCKET."""
    point = f"{GCSFUSE_ROOT}/{bucket}"
    install = (
        '(command -v gcsfuse > /dev/null || (echo "deb [signed-by=/usr/share/keyrings/'
        "cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) "
        'main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list && curl -fsS '
        "https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee "
        "/usr/share/keyrings/cloud.google.asc > /dev/null && sudo apt-get update -q && "
        "sudo apt-get install -y -q gcsfuse))"
    )
    return (
        f'{install} && sudo mkdir -p {point} && sudo chown "$USER" {point} && '
        f"(mountpoint -q {point} || gcsfuse --implicit-dirs {bucket} {point})"
    )


def run_steps(target: Target, command: list[str], image: str | None, *, max_failures: int = 10,
              gcsfuse_bucket: str | None = None) -> list[Step]:  # fmt: skip
    """Start the supervised job on every worker; per slice with MEGASCALE_* across slices."""
    script = worker_script(command, image, max_failures=max_failures,
                           gcsfuse_bucket=gcsfuse_bucket,
                           libtpu_args=libtpu_init_args(target))  # fmt: skip
    if target.num_slices == 1:
        return [ssh_step(target, start_command(script))]
    # Worker 0 of slice 0 coordinates the slices (the launcher, not XPK, starts the processes):
    # its address is looked up here, on the client, and written into each worker's env file.
    describe = (
        "gcloud", "compute", "tpus", "tpu-vm", "describe", f"{target.name}-0", *target.location,
        "--format=value(networkEndpoints[0].ipAddress)",
    )  # fmt: skip
    steps = []
    for slice_id in range(target.num_slices):
        env = {
            "MEGASCALE_COORDINATOR_ADDRESS": f"@COORDINATOR@:{MEGASCALE_PORT}",
            "MEGASCALE_NUM_SLICES": str(target.num_slices),
            "MEGASCALE_SLICE_ID": str(slice_id),
            "MEGASCALE_PORT": str(MEGASCALE_PORT),
        }
        before, after = start_command(script, env).split("@COORDINATOR@")
        ssh = (*target.group, "ssh", target.name, *target.location, f"--node={slice_id}",
               "--worker=all")  # fmt: skip
        # The client's shell fills in $COORDINATOR between the single-quoted halves.
        line = (
            f"COORDINATOR=$({shlex.join(describe)}) && {shlex.join(ssh)} "
            f"'--command={_in_single_quotes(before)}'\"$COORDINATOR\"'{_in_single_quotes(after)}'"
        )
        steps.append(Step(shell=line))
    return steps


def _in_single_quotes(text: str) -> str:
    return text.replace("'", "'\"'\"'")


def stop_steps(target: Target) -> list[Step]:
    return [ssh_step(target, f"sudo systemctl stop {SERVICE} && sudo systemctl disable {SERVICE}")]


def delete_steps(target: Target) -> list[Step]:
    force = ("--force",) if target.queued else ()
    return [Step((*target.group, "delete", target.name, *target.location, *force, "--quiet"))]


def plan(
    target: Target,
    command: list[str],
    *,
    image: str | None = None,
    skip_create: bool = False,
    skip_install: bool = False,
    gcsfuse_bucket: str | None = None,
    max_failures: int = 10,
) -> list[Step]:
    """Every command of a launch, in order."""
    steps = [] if skip_create else create_steps(target)
    if not skip_install:
        steps += install_steps(target, image)
    if gcsfuse_bucket:
        steps.append(ssh_step(target, gcsfuse_command(gcsfuse_bucket)))
    return [*steps, *run_steps(target, command, image, max_failures=max_failures,
                               gcsfuse_bucket=gcsfuse_bucket)]  # fmt: skip


def wait_until_active(target: Target) -> int:
    """Poll a queued resource until ACTIVE; a FAILED/SUSPENDED one is an error (exit code 1)."""
    while True:
        result = subprocess.run(describe_argv(target), capture_output=True, text=True)
        state = result.stdout.strip()
        if result.returncode:
            print(result.stderr, file=sys.stderr)
            return result.returncode
        if state == "ACTIVE":
            return 0
        if state in ("FAILED", "SUSPENDING", "SUSPENDED"):
            describe = shlex.join(describe_argv(target)[:-1])
            print(
                f"queued resource {target.name} is {state} (see `{describe}`): delete it with "
                "--delete and try another zone or capacity",
                file=sys.stderr,
            )
            return 1
        print(f"queued resource {target.name}: {state or 'unknown'}; waiting", flush=True)
        time.sleep(QUEUED_POLL_SECONDS)


def execute(steps: list[Step], target: Target) -> int:
    """Run the steps in order (the repository root as working directory); first failure wins."""
    for step in steps:
        print(f"+ {step.text()}", flush=True)
        try:
            code = _run_step(step, target)
        except FileNotFoundError as err:
            print(
                f"{err.filename} not found: install the Google Cloud CLI (gcloud) and run "
                "`gcloud auth login`",
                file=sys.stderr,
            )
            return 127
        if code:
            print(f"failed (exit code {code}): {step.text()}", file=sys.stderr)
            return code
    return 0


def _run_step(step: Step, target: Target) -> int:
    if step.waits_for_active:
        return wait_until_active(target)
    if step.shell:
        return subprocess.run(step.shell, shell=True, cwd=REPO).returncode
    return subprocess.run(step.argv, cwd=REPO).returncode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:7]),
    )
    parser.add_argument("--name", required=True, help="TPU (or queued resource) name")
    parser.add_argument("--zone", required=True, help="e.g. us-east5-a")
    parser.add_argument("--accelerator-type", required=True, help="e.g. v5p-16, v5litepod-16")
    parser.add_argument(
        "--runtime-version",
        default=None,
        help=f"TPU software version (default by generation: {RUNTIME_VERSIONS})",
    )
    parser.add_argument("--project", default=None, help="default: gcloud's configured project")
    parser.add_argument(
        "--num-slices", type=int, default=1, help="slices joined over DCN (> 1 implies --queued)"
    )
    parser.add_argument("--queued", action="store_true", help="create a queued resource")
    capacity = parser.add_mutually_exclusive_group()
    capacity.add_argument("--spot", action="store_true", help="Spot capacity (preemptible)")
    capacity.add_argument("--reserved", action="store_true", help="use the project's reservation")
    parser.add_argument("--image", default=None,
                        help="run inside this Docker image (launch/Dockerfile), not a wheel")  # fmt: skip
    parser.add_argument("--skip-create", action="store_true", help="the TPU exists already")
    parser.add_argument("--skip-install", action="store_true", help="the code is there already")
    parser.add_argument("--delete", action="store_true", help="only tear the TPU down")
    parser.add_argument("--stop", action="store_true", help="only stop the job on every worker")
    parser.add_argument("--gcsfuse", metavar="BUCKET", default=None,
                        help="mount gs://BUCKET at /gcs/BUCKET on every worker (data reads)")  # fmt: skip
    parser.add_argument("--max-failures", type=int, default=10,
                        help="crashes (not preemptions) after which a worker stops restarting")  # fmt: skip
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", dest="execute", action="store_false", default=False,
                      help="print the gcloud commands, one per line (default)")  # fmt: skip
    mode.add_argument("--execute", dest="execute", action="store_true", help="run them")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the job command")
    return parser


def target_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Target:
    if not NAME_PATTERN.fullmatch(args.name):
        parser.error(
            f"--name {args.name!r}: use lowercase letters, digits and '-' (max 63), "
            "starting with a letter"
        )
    if args.num_slices < 1:
        parser.error("--num-slices must be >= 1")
    target = Target(
        name=args.name,
        zone=args.zone,
        accelerator_type=args.accelerator_type,
        runtime_version=args.runtime_version or default_runtime_version(args.accelerator_type),
        project=args.project,
        num_slices=args.num_slices,
        queued=args.queued or args.num_slices > 1,
        capacity="spot" if args.spot else "reserved" if args.reserved else "on-demand",
    )
    try:  # the TPU runtime flags are per generation
        _tpu_runtime().generation_of(args.accelerator_type)
    except ValueError as err:
        parser.error(f"--accelerator-type: {err}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    target = target_from_args(args, parser)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.delete:
        steps = delete_steps(target)
    elif args.stop:
        steps = stop_steps(target)
    elif not command:
        parser.error(
            "give the job after --, e.g. -- illada train --config=config:small "
            "--workdir=gs://BUCKET/runs/small (or --delete to tear down)"
        )
    else:
        steps = plan(
            target,
            command,
            image=args.image,
            skip_create=args.skip_create,
            skip_install=args.skip_install,
            gcsfuse_bucket=args.gcsfuse,
            max_failures=args.max_failures,
        )
    if not args.execute:
        for step in steps:
            print(step.text())
        return 0
    return execute(steps, target)


if __name__ == "__main__":
    sys.exit(main())
