"""The simulated pod's world: one directory holding the stand-in hosts, the bucket's files and
the stand-ins' state. `launch/rehearse.py` builds it; every stand-in finds it through
`$POD_SIM_ROOT`, and a stand-in running on a host knows which one through `$POD_SIM_HOST`.

    ROOT/world.json        settings (below)
    ROOT/bin/client/       the stand-ins the laptop has (gcloud, docker, xpk, sbatch, ...)
    ROOT/bin/host/         the stand-ins a TPU VM image has (gcloud, docker, sudo, systemctl, ...)
    ROOT/bin/installable/  what the install steps bring (gcsfuse from apt, uv from its script)
    ROOT/gcs/.cloudstorage/BUCKET/OBJECT   the emulator's objects, as files
    ROOT/hosts/ID/         a host: host.json (hostname, machine environment), root/ (its "/")
    ROOT/tpus/NAME.json    a created TPU or queued resource: state, nodes and their hosts
    ROOT/images/           docker images, built (local/) and pushed (registry/)
    ROOT/xpk/CLUSTER/      XPK workloads; ROOT/slurm/ SLURM jobs
    ROOT/image-site/       the packages the image's Python has (see `machine.uv_venv`)
    ROOT/log/calls.log     every stand-in call, with the host it ran on

A host's "/" is `hosts/ID/root`: its home is `root/home/illada`, and the system paths the
plans name (`/etc/systemd/system/...`, `/gcs/BUCKET`, `/usr/share/keyrings/...`) are mapped
there by the stand-ins that touch them (`Host.path`).

The machine environment of a host stands in for what a TPU VM gives every process: the route
to Cloud Storage (the emulator's variables), the gcsfuse mount root, no TPU
(`JAX_PLATFORMS=cpu`), and the job's description that `jax.distributed.initialize()` finds by
itself. The jobs run with `ILLADA_DISTRIBUTED=auto`, as the launchers start them, so JAX must
detect the job on its own: on a TPU VM it reads the TPU metadata server, which JAX consults only
when libtpu has found TPU chips; without chips the one job description JAX detects from the
environment alone is SLURM's. So every process of a simulated job gets SLURM's variables
(`job_environment`: all nodes at 127.0.0.1, the coordinator's port derived from the job id),
and the product's own path runs unchanged; handing it ILLADA_COORDINATOR & co. instead would
bypass that path (`illada_jax/parallel/distributed.py`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shlex
import signal
import socket
import subprocess
import sys
import time

ROOT_VAR = "POD_SIM_ROOT"
HOST_VAR = "POD_SIM_HOST"
USER = "illada"  # the account a TPU VM's ssh logs in as
SYSTEM_DIRS = ("/etc/", "/gcs/", "/usr/", "/var/", "/opt/")  # mapped into a host's root
CLIENT_TOOLS = ("gcloud", "docker", "xpk", "sbatch", "srun", "squeue")
HOST_TOOLS = ("gcloud", "docker", "sudo", "systemctl", "mountpoint", "hostname", "lsb_release",
              "curl", "apt-get")  # fmt: skip
INSTALLABLE_TOOLS = ("gcsfuse", "uv")
# JAX's SLURM detection puts the coordinator on port SLURM_JOB_ID % 4096 + 61440.
SLURM_PORT_BASE = 65535 - 2**12 + 1


def root() -> pathlib.Path:
    return pathlib.Path(os.environ[ROOT_VAR])


def settings() -> dict:
    """world.json: repo, python (the image's interpreter), python_version, image_site,
    hosts (workers per job), emulator_url, restart_delay, job_env (added to new hosts')."""
    return read_json(root() / "world.json")


def read_json(path: pathlib.Path, default=None):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if default is None:
            raise
        return default


def write_json(path: pathlib.Path, data) -> None:
    """Write atomically: stand-ins on several hosts read these files while others write them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def fail(tool: str, message: str, code: int = 1):
    """End a stand-in the way the real tool reports an error: a message and an exit code."""
    print(f"{tool}: {message}", file=sys.stderr)
    raise SystemExit(code)


def log_call(tool: str, argv: list[str]) -> None:
    where = os.environ.get(HOST_VAR, "client")
    line = f"{time.strftime('%H:%M:%S')} [{where}] {shlex.join([tool, *argv])}\n"
    path = root() / "log" / "calls.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(line)


def emulator_environment(url: str) -> dict[str, str]:
    """What points gcsfs, google-cloud-storage and tensorstore at the emulator
    (`illada_jax.storage.use_gcs_emulator` sets the same)."""
    return {
        "STORAGE_EMULATOR_HOST": url,
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
    }


def free_job_id() -> int:
    """A SLURM-style job id whose coordinator port (JAX's rule above) is free on 127.0.0.1.
    Ports are tried from one that depends on this process, so rehearsals running side by side
    rarely try the same ones."""
    offset = os.getpid() % 4096
    for index in range(4096):
        port = SLURM_PORT_BASE + (offset + index) % 4096
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return 4096 + port - SLURM_PORT_BASE
    raise RuntimeError("no free port in 61440-65535 for a JAX coordinator")


def job_environment(job_id: int, process_id: int, num_processes: int) -> dict[str, str]:
    """The variables from which `jax.distributed.initialize()`, called with no arguments (what
    `ILLADA_DISTRIBUTED=auto` does), finds the job: SLURM's.

    On a TPU VM, JAX reads the workers from the TPU metadata server, but only once libtpu has
    found TPU chips; without chips, SLURM's variables are the one cluster description JAX detects
    from the environment alone. Giving every process of a simulated job these (all nodes at
    127.0.0.1, the coordinator's port derived from the job id) runs the product's own path
    (`illada_jax/parallel/distributed.py`: `ILLADA_DISTRIBUTED=auto`) unchanged, where the
    alternative, ILLADA_COORDINATOR & co., would bypass it."""
    return {
        "SLURM_JOB_ID": str(job_id),
        "SLURM_STEP_NODELIST": ",".join(["127.0.0.1"] * num_processes),
        "SLURM_STEP_NUM_NODES": str(num_processes),
        "SLURM_NTASKS": str(num_processes),
        "SLURM_PROCID": str(process_id),
        "SLURM_LOCALID": "0",
    }


@dataclasses.dataclass(frozen=True)
class Host:
    """A stand-in machine: a directory with its own "/", HOME and machine environment."""

    id: str  # its directory under ROOT/hosts

    @property
    def dir(self) -> pathlib.Path:
        return root() / "hosts" / self.id

    @property
    def root(self) -> pathlib.Path:
        return self.dir / "root"

    @property
    def home(self) -> pathlib.Path:
        return self.root / "home" / USER

    @property
    def info(self) -> dict:
        return read_json(self.dir / "host.json")

    @property
    def hostname(self) -> str:
        return self.info["hostname"]

    def path(self, text: str) -> str:
        """A path as a program on this host means it: system directories are under its root,
        `~` is its home; other paths (the rehearsal's own, relative ones) are left alone."""
        if text == "~" or text.startswith("~/"):
            return str(self.home) + text[1:]
        if any(text.startswith(d) or text == d.rstrip("/") for d in SYSTEM_DIRS):
            return str(self.root) + text
        return text

    def base_environment(self) -> dict[str, str]:
        """What every process on the host has: the machine environment, the host's PATH (its
        installed tools, the image's stand-ins, then the system's), HOME and the user."""
        path = [self.root / "usr" / "local" / "bin", self.root / "usr" / "bin",
                root() / "bin" / "host", "/usr/bin", "/bin"]  # fmt: skip
        return {
            **self.info["machine_env"],
            "PATH": os.pathsep.join(map(str, path)),
            "HOME": str(self.home),
            "USER": USER,
            "LOGNAME": USER,
            "SHELL": "/bin/bash",
            "LANG": "C.UTF-8",
            ROOT_VAR: str(root()),
            HOST_VAR: self.id,
        }


def create_host(host_id: str, hostname: str, machine_env: dict[str, str]) -> Host:
    """A fresh host; its mount root for gcsfuse (`/gcs`) is told to the product through
    ILLADA_GCSFUSE_ROOT, which `illada_jax.storage.mounted_view` reads for a root other than
    /gcs."""
    host = Host(host_id)
    for sub in ("home/" + USER, "etc/systemd/system", "etc/apt/sources.list.d", "usr/local/bin",
                "usr/bin", "usr/share/keyrings", "gcs", "var/log"):  # fmt: skip
        (host.root / sub).mkdir(parents=True, exist_ok=True)
    machine_env = {**machine_env, "ILLADA_GCSFUSE_ROOT": str(host.root / "gcs")}
    write_json(host.dir / "host.json", {"hostname": hostname, "machine_env": machine_env})
    return host


def current_host() -> Host | None:
    host_id = os.environ.get(HOST_VAR)
    return Host(host_id) if host_id else None


def machine_environment(job_env: dict[str, str]) -> dict[str, str]:
    """A host's machine environment for a job described by `job_env` (see the module
    docstring)."""
    world = settings()
    return {
        **emulator_environment(world["emulator_url"]),
        **job_env,
        "JAX_PLATFORMS": "cpu",  # a stand-in host has no TPU
        "TPU_SKIP_MDS_QUERY": "1",  # libtpu, installed with [tpu], then skips the metadata server
        "ILLADA_RESTART_DELAY": str(world["restart_delay"]),  # the supervisor's pause
        **world.get("job_env", {}),  # the rehearsal's additions (a shared compilation cache)
    }


def spawn(argv: list[str], env: dict[str, str], cwd: pathlib.Path,
          log: pathlib.Path) -> subprocess.Popen:  # fmt: skip
    """Start `argv` detached (its own session and process group), output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pgid: int, timeout: float) -> None:
    """SIGTERM to a process group, SIGKILL after `timeout` seconds; returns when it is gone."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while group_alive(pgid):
        if time.monotonic() > deadline:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                return
        time.sleep(0.1)


def install_tools(world_root: pathlib.Path, python: str) -> None:
    """The stand-in CLIs as small shell wrappers around `cli.py`, run by `python`."""
    cli = pathlib.Path(__file__).resolve().with_name("cli.py")
    for kind, tools in (("client", CLIENT_TOOLS), ("host", HOST_TOOLS),
                        ("installable", INSTALLABLE_TOOLS)):  # fmt: skip
        directory = world_root / "bin" / kind
        directory.mkdir(parents=True, exist_ok=True)
        for tool in tools:
            wrapper = directory / tool
            wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(python)} {shlex.quote(str(cli))} '
                               f'{tool} "$@"\n')  # fmt: skip
            wrapper.chmod(0o755)


def serve_emulator(port: int, data_dir: str) -> None:
    """The GCS emulator on 127.0.0.1:`port`, keeping its objects as files under `data_dir`
    (`illada_jax.tools.gcs_emulator` keeps them in memory; the gcsfuse stand-in links to the
    files), with that module's fix of the download headers. Runs until SIGTERM."""
    import threading

    from gcp_storage_emulator.server import create_server

    from illada_jax.tools import gcs_emulator

    gcs_emulator._patch_download_headers()
    server = create_server("127.0.0.1", port, in_memory=False, data_dir=data_dir)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop()
