"""What runs on a stand-in TPU VM: `sudo`, `systemctl` (and the units it runs), `gcsfuse` and
`mountpoint`, `apt-get`, `curl`, `uv`, `hostname`, `lsb_release`.

- `sudo` runs the few commands the plans give it, with the environment reset (as sudo's
  `env_reset` does: only the machine environment is left) and the system paths mapped into the
  host's root (`world.Host.path`); `chown` is a no-op (one user here).
- `systemctl` installs nothing itself: it reads the unit file the plan wrote under the host's
  `/etc/systemd/system/`, and `start`/`restart` run it detached through `run_unit`, which keeps
  systemd's rules that matter here: `ExecStart` with the unit's user's HOME, restarted after
  `RestartSec` as `Restart=` says, the unit's remaining processes killed when its main process
  ends; `stop` sends SIGTERM to all of them (`KillMode=control-group`) and SIGKILL after 90 s.
  Changing a unit needs sudo, as on the VM.
- `gcsfuse BUCKET MOUNTPOINT` "mounts" the bucket by replacing the (empty) mount-point directory
  with a link to the emulator's files of that bucket: the same bytes the bucket serves, shared by
  all hosts. Reads only: a write through it would not reach the emulator's index.
- `apt-get install gcsfuse` (after the plan added Google's apt source) and the uv install script
  from `curl` put the `gcsfuse` and `uv` stand-ins on the host.
- `uv venv --python 3.12` makes a virtual environment from the image's Python (the rehearsing
  interpreter's base Python, which must be 3.12): no download, the packages the image would
  install from PyPI are made visible through a `.pth` line naming `image-site/` (the rehearsing
  environment's site-packages without this checkout's editable install). `uv pip install`
  installs with pip offline (`--no-index`): the project's wheel goes into the venv, and pip
  checks its pinned requirements against those packages — a pin the image lacks fails here as
  it would there.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

from pod_sim import world

SUDO_MARK = "POD_SIM_SUDO"  # set by `sudo` for the command it runs
STOP_TIMEOUT = 90.0  # systemd's default TimeoutStopSec
UV_INSTALLER = "https://astral.sh/uv/install.sh"
APT_KEY = "https://packages.cloud.google.com/apt/doc/apt-key.gpg"


def _host(tool: str) -> world.Host:
    host = world.current_host()
    if host is None:
        world.fail(tool, "runs on a stand-in host only (through gcloud ... ssh)")
    return host


# --- sudo ------------------------------------------------------------------------------------

SUDO_COMMANDS = ("systemctl", "apt-get", "docker", "gcloud", "tee", "mkdir", "chown")


def sudo(argv: list[str]) -> int:
    host = _host("sudo")
    if not argv or argv[0] not in SUDO_COMMANDS:
        world.fail("sudo", f"the stand-in runs only {', '.join(SUDO_COMMANDS)} (got {argv[:1]})")
    command, args = argv[0], argv[1:]
    if command in ("tee", "mkdir", "chown"):
        args = [arg if arg.startswith("-") else host.path(arg) for arg in args]
    if command == "chown":
        missing = [a for a in args[1:] if not a.startswith("-") and not os.path.exists(a)]
        return 1 if missing else 0
    env = {**host.base_environment(), SUDO_MARK: "1"}
    return subprocess.run([command, *args], env=env).returncode


def _need_root(tool: str, what: str) -> None:
    if not os.environ.get(SUDO_MARK):
        world.fail(tool, f"Failed to {what}: Access denied (run it with sudo)")


# --- systemctl and the units it runs ---------------------------------------------------------


def _unit_name(name: str) -> str:
    return name.removesuffix(".service")


def _unit_file(host: world.Host, unit: str) -> pathlib.Path:
    return pathlib.Path(host.path(f"/etc/systemd/system/{unit}.service"))


def _state_path(host: world.Host, unit: str) -> pathlib.Path:
    return host.dir / "run" / f"{unit}.json"


def _stop_flag(host: world.Host, unit: str) -> pathlib.Path:
    """Present while `systemctl stop` stops the unit: its runner must not restart it. (A file of
    its own: the runner rewrites the state file meanwhile.)"""
    return host.dir / "run" / f"{unit}.stopping"


def read_unit(path: pathlib.Path) -> dict[str, str]:
    """The `[Service]` and `[Install]` keys of a unit file (one value each)."""
    keys = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            keys[key.strip()] = value.strip()
    return keys


def systemctl(argv: list[str]) -> int:
    host = _host("systemctl")
    verb, units = argv[0], [_unit_name(u) for u in argv[1:]]
    if verb == "daemon-reload":
        _need_root("systemctl", "reload daemon")
        return 0
    if verb not in ("enable", "disable", "start", "restart", "stop", "is-active"):
        world.fail("systemctl", f"the stand-in does not know `systemctl {verb}`")
    code = 0
    for unit in units:
        if verb == "is-active":
            state = world.read_json(_state_path(host, unit), default={"state": "inactive"})
            print(state["state"])
            code = code or (0 if state["state"] == "active" else 3)
            continue
        _need_root("systemctl", f"{verb} {unit}.service")
        if not _unit_file(host, unit).exists():
            world.fail(
                "systemctl", f"Failed to {verb} {unit}.service: Unit {unit}.service not found.", 5
            )
        if verb in ("enable", "disable"):
            _update_state(host, unit, enabled=verb == "enable")
        if verb in ("stop", "restart"):
            stop_unit(host, unit)
        if verb in ("start", "restart"):
            start_unit(host, unit)
    return code


def _update_state(host: world.Host, unit: str, **changes) -> dict:
    path = _state_path(host, unit)
    state = {**world.read_json(path, default={"state": "inactive"}), **changes}
    world.write_json(path, state)
    return state


def start_unit(host: world.Host, unit: str) -> None:
    state = world.read_json(_state_path(host, unit), default={"state": "inactive"})
    if state["state"] == "active" and state.get("runner") and world.group_alive(state["runner"]):
        return
    cli = pathlib.Path(__file__).resolve().with_name("cli.py")
    _stop_flag(host, unit).unlink(missing_ok=True)
    runner = world.spawn([sys.executable, str(cli), "_unit", host.id, unit],
                         env={**host.base_environment()}, cwd=host.root,
                         log=host.root / "var" / "log" / f"{unit}.journal")  # fmt: skip
    _update_state(host, unit, state="active", runner=runner.pid, main=None)


def stop_unit(host: world.Host, unit: str) -> None:
    state = world.read_json(_state_path(host, unit), default={"state": "inactive"})
    runner = state.get("runner")
    if not runner or not world.group_alive(runner):
        return
    _stop_flag(host, unit).touch()
    deadline = time.monotonic() + 10
    while state.get("main") is None and time.monotonic() < deadline and world.group_alive(runner):
        time.sleep(0.05)  # the runner has not started the main process yet
        state = world.read_json(_state_path(host, unit))
    if state.get("main"):
        world.stop_group(state["main"], STOP_TIMEOUT)
    world.stop_group(runner, STOP_TIMEOUT)
    _update_state(host, unit, state="inactive", runner=None, main=None)


def stop_all_units(host: world.Host) -> None:
    for path in sorted((host.dir / "run").glob("*.json")):
        stop_unit(host, path.stem)


def run_unit(argv: list[str]) -> int:
    """The unit's life, as systemd runs a `Type=simple` service: ExecStart in its own process
    group; when it ends, the group's other processes are killed; restarted per `Restart=`."""
    host, unit = world.Host(argv[0]), argv[1]
    keys = read_unit(_unit_file(host, unit))
    command = shlex.split(keys["ExecStart"])
    policy, delay = keys.get("Restart", "no"), float(keys.get("RestartSec", "0.1"))
    while True:
        main = subprocess.Popen(command, env=host.base_environment(), cwd=host.root,
                                start_new_session=True)  # fmt: skip
        _update_state(host, unit, main=main.pid)
        code = main.wait()
        world.stop_group(main.pid, STOP_TIMEOUT)
        stopping = _stop_flag(host, unit).exists()
        restart = not stopping and (
            policy == "always"
            or (policy == "on-failure" and code != 0)
            or (policy == "on-abnormal" and code < 0)
        )
        print(
            f"{unit}.service: main process exited, code={code}; "
            f"{'restarting' if restart else 'not restarting'} (Restart={policy})",
            flush=True,
        )
        if not restart:
            final = "inactive" if code == 0 or stopping else "failed"
            _update_state(host, unit, state=final, main=None, exit_code=code)
            return 0
        time.sleep(delay)


# --- gcsfuse and mountpoint ------------------------------------------------------------------


def _bucket_files(bucket: str) -> pathlib.Path:
    return world.root() / "gcs" / ".cloudstorage" / bucket


def mountpoint(argv: list[str]) -> int:
    host = _host("mountpoint")
    target = pathlib.Path(host.path([a for a in argv if not a.startswith("-")][0]))
    mounted = target.is_symlink() and target.resolve().parent == _bucket_files("x").parent
    if "-q" not in argv:
        print(f"{target} is {'' if mounted else 'not '}a mountpoint")
    return 0 if mounted else 32


def gcsfuse(argv: list[str]) -> int:
    host = _host("gcsfuse")
    positional = [a for a in argv if not a.startswith("-")]
    unknown = [a for a in argv if a.startswith("-") and a != "--implicit-dirs"]
    if unknown or len(positional) != 2:
        world.fail(
            "gcsfuse", f"the stand-in takes [--implicit-dirs] BUCKET MOUNTPOINT (got {argv})"
        )
    bucket, point = positional[0], pathlib.Path(host.path(positional[1]))
    url = f"{os.environ['STORAGE_EMULATOR_HOST']}/storage/v1/b/{bucket}"
    try:
        urllib.request.urlopen(url, timeout=30).read()
    except urllib.error.HTTPError:
        world.fail("gcsfuse", f"mountWithArgs: bucket {bucket!r} does not exist")
    if not point.is_dir() or point.is_symlink() or any(point.iterdir()):
        world.fail("gcsfuse", f"mount point {positional[1]} must be an empty directory")
    point.rmdir()
    point.symlink_to(_bucket_files(bucket), target_is_directory=True)
    print(f'File system has been successfully mounted: "{bucket}" at {positional[1]}')
    return 0


# --- apt-get, curl ---------------------------------------------------------------------------


def apt_get(argv: list[str]) -> int:
    host = _host("apt-get")
    words = [a for a in argv if not a.startswith("-")]
    if words[:1] == ["update"]:
        _need_root("apt-get", "lock the package lists")
        print("Reading package lists... Done")
        return 0
    if words[:1] != ["install"] or words[1:] != ["gcsfuse"]:
        world.fail("apt-get", f"the stand-in installs gcsfuse only (got {argv})", 100)
    _need_root("apt-get", "lock the administration directory")
    source = pathlib.Path(host.path("/etc/apt/sources.list.d/gcsfuse.list"))
    if not source.exists() or "packages.cloud.google.com/apt gcsfuse-" not in source.read_text():
        world.fail("apt-get", "E: Unable to locate package gcsfuse", 100)
    shutil.copy(world.root() / "bin" / "installable" / "gcsfuse", host.path("/usr/bin/gcsfuse"))
    print("Setting up gcsfuse ...")
    return 0


def curl(argv: list[str]) -> int:
    urls = [a for a in argv if not a.startswith("-")]
    if urls == [UV_INSTALLER]:
        uv = shlex.quote(str(world.root() / "bin" / "installable" / "uv"))
        print(f'mkdir -p "$HOME/.local/bin" && cp {uv} "$HOME/.local/bin/uv" && '
              'echo "installing to $HOME/.local/bin"')  # fmt: skip
        return 0
    if urls == [APT_KEY]:
        print(
            "-----BEGIN PGP PUBLIC KEY BLOCK-----\n(stand-in)\n-----END PGP PUBLIC KEY BLOCK-----"
        )
        return 0
    world.fail(
        "curl", f"(22) the stand-in serves {UV_INSTALLER} and {APT_KEY} only (got {urls})", 22
    )


# --- uv --------------------------------------------------------------------------------------


def uv(argv: list[str]) -> int:
    if argv[:1] == ["venv"]:
        return uv_venv(argv[1:])
    if argv[:2] == ["pip", "install"]:
        return uv_pip_install(argv[2:])
    world.fail("uv", f"the stand-in knows `uv venv` and `uv pip install` (got {argv[:2]})", 2)


def _option(argv: list[str], name: str) -> tuple[list[str], list[str]]:
    """(the values of `name` VALUE / `name`=VALUE, the other arguments)."""
    values, rest, index = [], [], 0
    while index < len(argv):
        arg = argv[index]
        if arg == name:
            values.append(argv[index + 1])
            index += 2
            continue
        if arg.startswith(name + "="):
            values.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        index += 1
    return values, rest


def uv_venv(argv: list[str]) -> int:
    settings = world.settings()
    versions, rest = _option(argv, "--python")
    allow = "--allow-existing" in rest
    paths = [a for a in rest if not a.startswith("-")]
    if versions != [settings["python_version"]]:
        world.fail("uv", f"error: No interpreter found for Python {versions}: the stand-in has "
                   f"the image's Python {settings['python_version']} only (offline)")  # fmt: skip
    venv = pathlib.Path(paths[0])
    if venv.exists() and not allow:
        world.fail("uv", f"error: {venv} exists (use --allow-existing)")
    subprocess.run([settings["python"], "-m", "venv", "--without-pip", str(venv)], check=True)
    site = venv / "lib" / f"python{settings['python_version']}" / "site-packages"
    (site / "_pod_sim_image.pth").write_text(settings["image_site"] + "\n")
    print(f"Using CPython {settings['python_version']}\nCreating virtual environment at: {venv}")
    return 0


def uv_pip_install(argv: list[str]) -> int:
    pythons, rest = _option(argv, "--python")
    reinstall, rest = _option(rest, "--reinstall-package")
    if len(pythons) != 1 or any(a.startswith("-") for a in rest):
        world.fail("uv", f"the stand-in takes pip install --python PY [--reinstall-package N] "
                   f"SPEC... (got {argv})", 2)  # fmt: skip
    python = pythons[0]
    pip = [python, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    for name in reinstall:
        subprocess.run([*pip, "uninstall", "-y", "-q", name], check=False)
    return subprocess.run([*pip, "install", "-q", "--no-index", *rest]).returncode


# --- small tools -----------------------------------------------------------------------------


def hostname(argv: list[str]) -> int:
    if argv:
        world.fail("hostname", "the stand-in only prints the host's name")
    print(_host("hostname").hostname)
    return 0


def lsb_release(argv: list[str]) -> int:
    print("jammy")  # the TPU VM images are Ubuntu 22.04
    return 0
