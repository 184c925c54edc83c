"""`docker` (build, push, pull, run) and `xpk` (workloads as JobSets of pods) on stand-in hosts.

An image is a directory under `ROOT/images/`: `root/` (its files), `venv/` (its Python) and
`image.json` (ENV, WORKDIR, CMD). `docker build` reads the Dockerfile and carries out the
instructions `launch/Dockerfile` uses: `FROM python:X.Y-slim` (the image's Python: the stand-in
has the rehearsing 3.12 only, as `uv` does), `ENV`, `WORKDIR`, `COPY`, `RUN pip install ...
[&& rm -rf ...]` (pip offline, as `uv pip install`) and `CMD`; anything else is refused. `push`
puts a built image in the registry, `pull` gets it onto a host, and `run` runs a command in a
fresh container directory: the image's ENV (its absolute paths mapped into the image's root), the
`-e` variables, `-v SRC:DST` volumes as links, the machine environment of the host (its network
and metadata), the image's venv first on PATH.

`xpk workload create` starts a JobSet (`run_jobset`, detached): `--num-slices` slices of pods,
the rehearsal's `hosts` workers in all, each pod a fresh host running `--command` in the image
with a job environment (`world.job_environment`). When a pod fails, the others are stopped and,
up to `--max-restarts` times, all pods start again on fresh hosts: after a disruption (the job
exits 75, `ILLADA_PREEMPTED_EXIT_CODE`: it saved and stopped, or a pod killed by a signal) and,
with `--restart-on-user-code-failure`, after any other exit code; what `launch/xpk.py` promises,
not a check of XPK's own failure policy. `xpk workload list` prints the status, `delete` stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import time

from pod_sim import machine, world

PREEMPTED = 75  # ILLADA_PREEMPTED_EXIT_CODE, as the launchers set it


# --- images ----------------------------------------------------------------------------------


def _image_dir(tag: str, where: str = "local") -> pathlib.Path:
    return world.root() / "images" / where / re.sub(r"[^A-Za-z0-9._-]", "_", tag)


def docker(argv: list[str]) -> int:
    verbs = {"build": build, "push": push, "pull": pull, "run": run}
    if not argv or argv[0] not in verbs:
        world.fail("docker", f"the stand-in knows {', '.join(verbs)} (got {argv[:1]})")
    return verbs[argv[0]](argv[1:])


def _instructions(dockerfile: pathlib.Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def build(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="docker build", add_help=False)
    parser.add_argument("-f", "--file", default="Dockerfile")
    parser.add_argument("-t", "--tag", required=True)
    parser.add_argument("context")
    args = parser.parse_args(argv)
    context = pathlib.Path(args.context)
    settings = world.settings()
    image = _image_dir(args.tag)
    shutil.rmtree(image, ignore_errors=True)
    (image / "root").mkdir(parents=True)
    config = {"env": {}, "workdir": "/", "cmd": []}
    for instruction, rest in _instructions(context / args.file):
        if instruction == "FROM":
            wanted = f"python:{settings['python_version']}-slim"
            if rest != wanted:
                world.fail("docker", f"the stand-in builds FROM {wanted} only (got {rest})")
            subprocess.run([settings["python"], "-m", "venv", "--without-pip", str(image / "venv")],
                           check=True)  # fmt: skip
            site = image / "venv" / "lib" / f"python{settings['python_version']}" / "site-packages"
            (site / "_pod_sim_image.pth").write_text(settings["image_site"] + "\n")
        elif instruction == "ENV":
            config["env"].update(dict(word.split("=", 1) for word in shlex.split(rest)))
        elif instruction == "WORKDIR":
            config["workdir"] = rest
            _in_image(image, rest, config).mkdir(parents=True, exist_ok=True)
        elif instruction == "COPY":
            *sources, destination = shlex.split(rest)
            _copy(context, sources, _in_image(image, destination, config), destination)
        elif instruction == "RUN":
            _run_pip(image, rest, config)
        elif instruction == "CMD":
            config["cmd"] = json.loads(rest)
        else:
            world.fail("docker", f"the stand-in does not carry out {instruction}")
    world.write_json(image / "image.json", config)
    print(f"Successfully tagged {args.tag}")
    return 0


def _in_image(image: pathlib.Path, path: str, config: dict) -> pathlib.Path:
    absolute = path if path.startswith("/") else f"{config['workdir'].rstrip('/')}/{path}"
    return image / "root" / absolute.lstrip("/")


def _copy(context: pathlib.Path, sources: list[str], target: pathlib.Path, text: str) -> None:
    """Docker's COPY: a directory's contents into the target, a file into it (`dest/`) or as
    it."""
    for source in sources:
        path = context / source
        if path.is_dir():
            shutil.copytree(path, target, dirs_exist_ok=True)
            continue
        destination = target / path.name if text.endswith("/") else target
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, destination)


def _run_pip(image: pathlib.Path, line: str, config: dict) -> None:
    """`pip install ARGS [&& rm -rf PATHS]`, pip offline in the image's venv."""
    steps = [shlex.split(part) for part in line.split("&&")]
    if steps[0][:2] != ["pip", "install"] or any(s[:2] != ["rm", "-rf"] for s in steps[1:]):
        world.fail(
            "docker", f"the stand-in runs `RUN pip install ... [&& rm -rf ...]` only: {line}"
        )
    python = str(image / "venv" / "bin" / "python")
    pip = [python, "-m", "pip", "--disable-pip-version-check", "install", "-q", "--no-index",
           "--no-build-isolation", *steps[0][2:]]  # fmt: skip
    cwd = _in_image(image, config["workdir"], config)
    env = {**os.environ, **config["env"], "PIP_NO_INDEX": "1"}
    if subprocess.run(pip, cwd=cwd, env=env).returncode:
        world.fail("docker", f"RUN {line}: pip failed")
    for step in steps[1:]:
        for path in step[2:]:
            shutil.rmtree(_in_image(image, path, config), ignore_errors=True)


def push(argv: list[str]) -> int:
    tag = argv[-1]
    if not (_image_dir(tag) / "image.json").exists():
        world.fail("docker", f"An image does not exist locally with the tag: {tag}")
    target = _image_dir(tag, "registry")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    target.symlink_to(_image_dir(tag), target_is_directory=True)
    print(f"{tag}: pushed")
    return 0


def pull(argv: list[str]) -> int:
    tag = argv[-1]
    if not (_image_dir(tag, "registry") / "image.json").exists():
        world.fail("docker", f"Error response from daemon: manifest for {tag} not found")
    host = world.current_host()
    if host is not None:
        (host.dir / "images").mkdir(exist_ok=True)
        (host.dir / "images" / _image_dir(tag).name).write_text(tag)
    print(f"Status: Downloaded newer image for {tag}")
    return 0


def _pulled(tag: str) -> pathlib.Path:
    host = world.current_host()
    if host is not None and not (host.dir / "images" / _image_dir(tag).name).exists():
        world.fail("docker", f"Unable to find image '{tag}' locally (the stand-in does not pull)")
    image = _image_dir(tag, "registry" if host is not None else "local")
    if not (image / "image.json").exists():
        world.fail("docker", f"no image {tag}")
    return image


def run(argv: list[str]) -> int:
    passed, volumes, index = {}, [], 0
    while index < len(argv) and argv[index].startswith("-"):
        flag = argv[index]
        if flag in ("-e", "-v"):
            value = argv[index + 1]
            index += 2
            if flag == "-v":
                volumes.append(value.split(":", 1))
            elif "=" in value:
                passed.update([value.split("=", 1)])
            elif value in os.environ:
                passed[value] = os.environ[value]
        elif flag in ("--rm", "--net=host", "--privileged"):
            index += 1
        else:
            world.fail("docker", f"the stand-in's run does not take {flag}")
    image, command = argv[index], argv[index + 1 :]
    host = world.current_host()
    env = host.base_environment() if host else dict(os.environ)
    return run_in_image(_pulled(image), command, {**env, **passed}, volumes)


def run_in_image(image: pathlib.Path, command: list[str], env: dict[str, str],
                 volumes: list[list[str]]) -> int:  # fmt: skip
    """Run `command` in a fresh container of `image` (see the module docstring)."""
    config = world.read_json(image / "image.json")
    host = world.current_host()
    container = (host.dir if host else world.root() / "client") / "containers" / str(time.time_ns())
    for source, target in volumes:
        link = container / target.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(source).mkdir(parents=True, exist_ok=True)
        link.symlink_to(source, target_is_directory=True)
    workdir = container / config["workdir"].lstrip("/")
    workdir.mkdir(parents=True, exist_ok=True)
    image_env = {k: str(image / "root") + v if v.startswith("/") else v
                 for k, v in config["env"].items()}  # fmt: skip
    path = os.pathsep.join([str(image / "venv" / "bin"), "/usr/bin", "/bin"])
    env = {**env, **image_env, "PATH": path, "HOME": str(container / "root")}
    (container / "root").mkdir(exist_ok=True)
    return subprocess.run(command or config["cmd"], env=env, cwd=workdir).returncode


# --- xpk -------------------------------------------------------------------------------------


def _workload_path(cluster: str, workload: str) -> pathlib.Path:
    return world.root() / "xpk" / cluster / f"{workload}.json"


def _xpk_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xpk workload", add_help=False)
    for flag in ("--cluster", "--workload", "--tpu-type", "--num-slices", "--docker-image",
                 "--max-restarts", "--priority", "--project", "--zone", "--command"):  # fmt: skip
        parser.add_argument(flag)
    for flag in ("--restart-on-user-code-failure", "--force"):
        parser.add_argument(flag, action="store_true")
    return parser


def xpk(argv: list[str]) -> int:
    if argv[:1] != ["workload"] or argv[1:2] not in (["create"], ["list"], ["delete"]):
        world.fail("xpk", f"the stand-in knows `xpk workload create|list|delete` (got {argv[:2]})")
    args = _xpk_parser().parse_args(argv[2:])
    if not args.cluster:
        world.fail("xpk", "--cluster is required")
    verb = argv[1]
    if verb == "list":
        print(f"{'WORKLOAD':24} {'STATUS':12} RESTARTS")
        for path in sorted((world.root() / "xpk" / args.cluster).glob("*.json")):
            state = world.read_json(path)
            if not args.workload or args.workload == path.stem:
                print(f"{path.stem:24} {state['status']:12} {state['restarts']}")
        return 0
    path = _workload_path(args.cluster, args.workload)
    if verb == "delete":
        state = world.read_json(path, default={})
        if not state:
            world.fail("xpk", f"no workload {args.workload} on {args.cluster}")
        if state.get("controller"):
            world.stop_group(state["controller"], machine.STOP_TIMEOUT)
        path.unlink()
        print(f"Deleted workload {args.workload}")
        return 0
    missing = [
        f for f in ("tpu_type", "docker_image", "command", "workload") if not getattr(args, f)
    ]
    if missing:
        world.fail("xpk", f"missing --{', --'.join(m.replace('_', '-') for m in missing)}")
    if path.exists():
        world.fail("xpk", f"workload {args.workload} exists on {args.cluster}: delete it first")
    if not (_image_dir(args.docker_image, "registry") / "image.json").exists():
        world.fail("xpk", f"image {args.docker_image} is not in the registry (docker push it)")
    state = {**vars(args), "status": "Running", "restarts": 0, "controller": None}
    world.write_json(path, state)
    cli = pathlib.Path(__file__).resolve().with_name("cli.py")
    controller = world.spawn([sys.executable, str(cli), "_jobset", args.cluster, args.workload],
                             env=dict(os.environ), cwd=world.root(),
                             log=path.with_suffix(".log"))  # fmt: skip
    state = world.read_json(path)
    world.write_json(path, {**state, "controller": controller.pid})
    print(f"Follow your workload here: xpk workload list --cluster={args.cluster} "
          f"--workload={args.workload}")  # fmt: skip
    return 0


def _update(path: pathlib.Path, **changes) -> None:
    world.write_json(path, {**world.read_json(path), **changes})


def run_jobset(argv: list[str]) -> int:
    """The JobSet: start the pods, wait, restart them all per the policy in the module docstring."""
    cluster, workload = argv
    path = _workload_path(cluster, workload)
    state = world.read_json(path)
    slices = int(state["num_slices"] or 1)
    per_slice = max(1, world.settings()["hosts"] // slices)
    total = slices * per_slice
    for attempt in range(int(state["max_restarts"] or 0) + 1):
        job_id = world.free_job_id()
        pods = []
        for index in range(total):
            host = world.create_host(
                f"xpk-{cluster}-{workload}-a{attempt}-p{index}",
                f"{workload}-slice-job-{index // per_slice}-{index % per_slice}",
                world.machine_environment(world.job_environment(job_id, index, total)),
            )
            pods.append(_start_pod(host, state))
        _update(path, status="Running", restarts=attempt, pods=[p[0].id for p in pods])
        codes = _wait_pods([p[1] for p in pods])
        failed = [c for c in codes if c != 0]
        if not failed:
            _update(path, status="Completed")
            return 0
        disruption = any(c == PREEMPTED or c < 0 for c in failed)
        if not (disruption or state["restart_on_user_code_failure"]):
            break
        print(f"JobSet {workload}: pods exited {codes}; restarting", flush=True)
    _update(path, status="Failed")
    return 1


def _start_pod(host: world.Host, state: dict) -> tuple[world.Host, subprocess.Popen]:
    cli = pathlib.Path(__file__).resolve().with_name("cli.py")
    command = ["docker", "run", "--rm", state["docker_image"], "bash", "-c", state["command"]]
    env = host.base_environment()
    (host.dir / "images").mkdir(exist_ok=True)  # a node pulls the image when the pod starts
    (host.dir / "images" / _image_dir(state["docker_image"]).name).write_text(state["docker_image"])
    process = world.spawn([sys.executable, str(cli), *command], env=env, cwd=host.home,
                          log=host.dir / "pod.log")  # fmt: skip
    return host, process


def _wait_pods(processes: list[subprocess.Popen]) -> list[int]:
    """Wait for all pods; when one fails, stop the others (the JobSet is one unit)."""
    while any(p.poll() is None for p in processes):
        if any(p.poll() not in (None, 0) for p in processes):
            for p in processes:
                if p.poll() is None:
                    world.stop_group(p.pid, machine.STOP_TIMEOUT)
        time.sleep(0.2)
    return [p.returncode for p in processes]
