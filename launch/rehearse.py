"""Rehearse a pod job on this machine: the pod guide's commands, as written, on a simulated pod.

    .venv312/bin/python launch/rehearse.py --hosts 2

The guide is docs/pods.md's "From zero to a running pod job"; each phase prints its wall time.
`--only tpu-vm|xpk|slurm` rehearses one launcher's sequence (after the bucket, tokenizer, data
and held-out set, which all share); `--keep DIR` builds the world in DIR and keeps it.

Phases (each prints its wall time, the summary lists them all):
- world: a scratch directory with the stand-in CLIs first on PATH (`launch/pod_sim/`), a copy of
  this checkout as the laptop's working directory (holding the guide's inputs: a stand-in
  `iLLaDA-8B-Base/tokenizer.json` with the toy vocabulary, `corpus/train/` and `corpus/heldout/`
  from the embedded corpus), and the GCS emulator as the bucket;
- bucket, tokenizer, data, heldout: the guide's blocks;
- launch: its launch block (create, install, mount, start); then each worker must have Python
  3.12, jax 0.12 and the project from the wheel, and its job the TPU runtime flags;
- train: the job reaches step 1 (process 0 logs the steps);
- preempt: each job has the slice's LIBTPU_INIT_ARGS; SIGTERM to the last worker's `illada
  train`: every worker must save the same step and exit 75 (the product propagates it);
- resume: the supervisors start the job again; the resume block: every worker resumed from that
  step; then the watch block;
- done: every worker's done marker, the done block, the logs on the bucket (one per worker, with
  both attempts), all 24 steps in metrics.jsonl;
- stop: the stop block (`--stop`, `--delete`); no process of the pod is left;
- xpk (docker build/push, a JobSet on fresh hosts), slurm (sbatch, srun): their blocks, the run
  completed, then the watch and delete blocks. XPK's job loads the TPU VM job's compiled program
  (`Rehearsal.share_compiled_programs`), which saves a third of its time.

Worker hosts restart a job 1 s after it stops (ILLADA_RESTART_DELAY; 30 s by default).

The one change to the guide's commands is `--config=fiddler:rehearsal` appended to each `illada
train` (`illada_jax.config.experiments.rehearsal`: the recipe at toy size, XLA attention). Needs
Python 3.12 with the project's `[dev,tpu]` dependencies (CI's `.venv312`): the workers' Python and
packages are this interpreter's, installed offline. Exit code 0 when every phase passed; on a
failure the world is kept and the logs of the hosts are named.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time

LAUNCH = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(LAUNCH))

from pod_sim import documented, world  # noqa: E402

REPO = LAUNCH.parent
PYTHON_VERSION = "3.12"  # the Docker images' (launch/Dockerfile) and so the workers'
STEPS = 24  # illada_jax.config.experiments.REHEARSAL_STEPS
PREEMPT_AFTER_STEP = 1
PLATFORMS = ("tpu-vm", "xpk", "slurm")


class RehearsalError(RuntimeError):
    """A phase found the pod doing something other than what the guide says."""


class Rehearsal:
    def __init__(self, root: pathlib.Path, hosts: int, timeout: float) -> None:
        self.root, self.hosts, self.timeout = root, hosts, timeout
        self.timings: list[tuple[str, float]] = []
        self.blocks = {b.phase: b for b in documented.blocks()}
        self.exports: list[str] = []
        self.emulator: subprocess.Popen | None = None

    # --- phases ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def phase(self, name: str):
        print(f"\n=== {name}", flush=True)
        start = time.monotonic()
        yield
        seconds = time.monotonic() - start
        self.timings.append((name, seconds))
        print(f"=== {name}: {seconds:.1f} s", flush=True)

    def run_block(self, phase: str) -> str:
        """The guide's block, as written (plus the override), after the exports before it."""
        block = self.blocks[phase]
        text = documented.with_override(block.text)
        print(
            f"$ # docs/pods.md:{block.line} ({phase})\n"
            + "".join(f"$ {x}\n" for x in text.splitlines())
        )
        script = "set -euo pipefail\n" + "".join(f"{line}\n" for line in self.exports) + text
        result = subprocess.run(["bash", "-c", script], cwd=self.repo, env=self.client_env,
                                capture_output=True, text=True, timeout=self.timeout)  # fmt: skip
        print(result.stdout + result.stderr, end="", flush=True)
        if result.returncode:
            where = f"docs/pods.md:{block.line}"
            raise RehearsalError(
                f"the {phase} block ({where}) failed: exit code {result.returncode}"
            )
        self.exports += documented.exports(block.text)
        return result.stdout

    # --- the world ---------------------------------------------------------------------------

    def build(self) -> None:
        """The world directory, the stand-ins, the laptop's checkout and inputs, the bucket."""
        if sys.version_info[:2] != (3, 12):
            raise RehearsalError(
                f"run the rehearsal with Python {PYTHON_VERSION} (CI's .venv312): the workers get "
                f"this interpreter's Python and packages (this is {sys.version.split()[0]})"
            )
        os.environ[world.ROOT_VAR] = str(self.root)
        self.repo = self.root / "client" / "repo"
        copy_checkout(REPO, self.repo)
        world.install_tools(self.root, sys.executable)
        client_bin = self.root / "client" / "bin"
        client_bin.mkdir(parents=True)
        for name in ("python", "python3"):  # a wrapper: a link would lose the venv
            (client_bin / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
            (client_bin / name).chmod(0o755)
        url = self.start_emulator()
        world.write_json(self.root / "world.json", {
            "repo": str(self.repo), "python": base_python(), "python_version": PYTHON_VERSION,
            "image_site": str(image_site(self.root / "image-site")), "hosts": self.hosts,
            "emulator_url": url, "restart_delay": 1,
        })  # fmt: skip
        home = self.root / "client" / "home"
        home.mkdir(parents=True)
        path = [
            self.root / "bin" / "client",
            client_bin,
            pathlib.Path(sys.executable).parent,
            "/usr/bin",
            "/bin",
        ]
        # The laptop: this environment without job or runtime settings, the emulator as Cloud
        # Storage, pip offline (the wheel builds with this environment's setuptools).
        skip = ("ILLADA_", "SLURM_", "MEGASCALE_", "LIBTPU_", "JAX_COMPILATION_CACHE")
        self.client_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(skip)},
            **world.emulator_environment(url),
            "PATH": os.pathsep.join(map(str, path)), "HOME": str(home),
            world.ROOT_VAR: str(self.root), "ILLADA_CACHE": str(self.root / "client" / "cache"),
            "JAX_PLATFORMS": "cpu", "TPU_SKIP_MDS_QUERY": "1",
            "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0",
        }  # fmt: skip
        write_inputs(self.repo, self.client_env)

    def start_emulator(self) -> str:
        port = free_port()
        code = (f"import sys; sys.path.insert(0, {str(LAUNCH)!r}); from pod_sim import world; "
                f"world.serve_emulator({port}, {str(self.root / 'gcs')!r})")  # fmt: skip
        (self.root / "log").mkdir(parents=True, exist_ok=True)
        log = (self.root / "log" / "emulator.log").open("w")
        self.emulator = subprocess.Popen(
            [sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: port_open(port), 60, "the GCS emulator to answer")
        return url

    def stop(self) -> None:
        """Stop every process of the world (each found by its environment), then the emulator."""
        for pid in world_processes(self.root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.emulator is not None:
            self.emulator.terminate()
            self.emulator.wait(timeout=30)

    # --- the TPU VM sequence -----------------------------------------------------------------

    def prepare(self) -> None:
        """The bucket and what every launcher's job reads from it."""
        for phase in ("bucket", "tokenizer", "data", "heldout"):
            with self.phase(phase):
                if phase == "bucket":
                    self.run_block("variables")
                self.run_block(phase)

    def tpu_vm(self) -> None:
        with self.phase("launch (create, install, mount, start)"):
            self.run_block("launch")
            self.hosts_of_tpu = [
                world.Host(h) for n in self.tpu_record()["nodes"] for h in n["hosts"]
            ]
            for host in self.hosts_of_tpu:
                check_worker_install(host)
        with self.phase(f"train to step {PREEMPT_AFTER_STEP}"):
            # Process 0 logs the steps; the job is short, so the preemption follows at once.
            self.wait_log(self.hosts_of_tpu[0], rf"step {PREEMPT_AFTER_STEP}/{STEPS} ")
        with self.phase("preempt one worker"):
            for host in self.hosts_of_tpu:
                check_job_environment(host)
            os.kill(job_pid(self.hosts_of_tpu[-1]), signal.SIGTERM)
            saved = []
            for host in self.hosts_of_tpu:
                self.wait_log(host, r"=== exit code \d+ ")
                if "=== exit code 75 " not in log_of(host):
                    raise RehearsalError(f"{host.id}'s job did not exit 75 (preempted, saved)")
                saved += re.findall(r"preempted at step (\d+): checkpoint saved", log_of(host))
            if len(saved) != len(self.hosts_of_tpu) or len(set(saved)) != 1:
                raise RehearsalError(f"the workers saved steps {saved} (one, on all, expected)")
            self.preempted_step = int(saved[0])
        with self.phase("resume (supervisor restart)"):
            for host in self.hosts_of_tpu:
                self.wait_log(host, r"=== illada job attempt 2 (.|\n)*resumed from checkpoint")
            out = self.run_block("resume")
            resumed = out.count(f"resumed from checkpoint {self.preempted_step} ")
            if resumed != len(self.hosts_of_tpu):
                raise RehearsalError(f"{resumed} workers resumed from {self.preempted_step}")
        with self.phase("watch"):
            self.run_block("watch")
        with self.phase("done"):
            for host in self.hosts_of_tpu:
                self.wait(
                    lambda h=host: (h.home / "illada-job.done").exists(),
                    f"{host.id}'s done marker",
                    host,
                )
            out = self.run_block("done")
            self.check_run("runs/illada-8b", out)
        with self.phase("stop, delete"):
            self.run_block("stop")
            left = world_processes(self.root, [h.id for h in self.hosts_of_tpu])
            if left or list((self.root / "tpus").glob("*.json")):
                raise RehearsalError(
                    f"after --stop and --delete: processes {left} still run, or the TPU exists"
                )

    def tpu_record(self) -> dict:
        records = list((self.root / "tpus").glob("*.json"))
        if len(records) != 1:
            raise RehearsalError(f"expected one TPU, found {[p.stem for p in records]}")
        return json.loads(records[0].read_text())

    def check_run(self, run: str, listing: str = "") -> None:
        """The run on the bucket: all steps logged, and (TPU VM) one log per worker holding the
        preempted attempt and the completed one."""
        bucket = self.bucket_files()
        rows = [json.loads(x) for x in (bucket / run / "metrics.jsonl").read_text().splitlines()]
        steps = {r["step"] for r in rows if "loss" in r}
        if steps != set(range(1, STEPS + 1)):
            raise RehearsalError(f"gs://.../{run}/metrics.jsonl logged steps {sorted(steps)}")
        config = json.loads((bucket / run / "config.json").read_text())
        python = config.get("runtime", {}).get("python", PYTHON_VERSION)
        if not python.startswith(PYTHON_VERSION):
            raise RehearsalError(f"{run} ran on Python {python}")
        if not listing:
            return
        for host in self.hosts_of_tpu:
            name = f"{run}/logs/{host.hostname}.log"
            if f"/{name}" not in listing:
                raise RehearsalError(f"the done block did not list gs://.../{name}")
            text = (bucket / name).read_text()
            if "=== exit code 75 " not in text or "=== exit code 0 " not in text:
                raise RehearsalError(
                    f"gs://.../{name} lacks an attempt (preempted, then completed)"
                )

    def bucket_files(self) -> pathlib.Path:
        buckets = [
            p
            for p in (self.root / "gcs" / ".cloudstorage").iterdir()
            if p.is_dir() and not p.name.startswith(".")
        ]
        return next(b for b in buckets if (b / "data").exists())

    # --- XPK and SLURM -----------------------------------------------------------------------

    def share_compiled_programs(self) -> None:
        """XPK's job runs the TPU VM job's program (same recipe, slice type and TPU runtime
        flags): JAX's compilation cache of that run, through JAX_COMPILATION_CACHE_DIR (which
        `train.compilation_cache="auto"` leaves alone), spares it the compile, a third of a
        job's time here. The TPU VM job compiled, and after the preemption loaded from its own
        cache; SLURM's job (no TPU flags: another cache key) compiles."""
        bucket = self.bucket_files().name
        cache = {"JAX_COMPILATION_CACHE_DIR": f"gs://{bucket}/runs/illada-8b/compile_cache"}
        settings = json.loads((self.root / "world.json").read_text())
        world.write_json(self.root / "world.json", {**settings, "job_env": cache})

    def xpk(self) -> None:
        with self.phase("xpk: image, workload"):
            self.share_compiled_programs()
            self.run_block("xpk")
            state = next((self.root / "xpk").glob("*/*.json"))
            self.wait(lambda: json.loads(state.read_text())["status"] in ("Completed", "Failed"),
                      "the XPK workload to end", None, [state.with_suffix(".log")])  # fmt: skip
            status = json.loads(state.read_text())
            if status["status"] != "Completed":
                pods = [self.root / "hosts" / p / "pod.log" for p in status.get("pods", [])]
                raise RehearsalError(
                    f"the XPK workload ended {status['status']} (pod logs: {pods})"
                )
            self.check_run("runs/illada-8b-xpk")
        with self.phase("xpk: watch, delete"):
            if "Completed" not in self.run_block("xpk-watch"):
                raise RehearsalError("xpk workload list did not show the workload Completed")
            self.run_block("xpk-delete")

    def slurm(self) -> None:
        with self.phase("slurm: sbatch, srun"):
            out = self.run_block("slurm")
            job = re.search(r"Submitted batch job (\d+)", out).group(1)
            record = self.root / "slurm" / f"{job}.json"
            self.wait(
                lambda: json.loads(record.read_text())["state"] != "RUNNING",
                "the SLURM job to end",
                None,
                [pathlib.Path(json.loads(record.read_text())["output"])],
            )
            status = json.loads(record.read_text())
            if status["state"] != "COMPLETED":
                raise RehearsalError(
                    f"the SLURM job ended {status['state']} (output: {status['output']})"
                )
            self.check_run("runs/illada-8b-slurm")
            self.run_block("slurm-watch")

    # --- waiting -----------------------------------------------------------------------------

    def wait_log(self, host: world.Host, pattern: str) -> None:
        what = f"/{pattern}/ in {host.id}'s log"
        self.wait(lambda: re.search(pattern, log_of(host)), what, host, poll=0.05)

    def wait(self, predicate, what: str, host: world.Host | None,
             logs: list[pathlib.Path] = (), poll: float = 0.2) -> None:  # fmt: skip
        try:
            wait_for(predicate, self.timeout, what, poll)
        except RehearsalError as err:
            logs = [
                *logs,
                *(
                    [host.home / "illada-train.log", host.root / "var/log/illada-job.journal"]
                    if host
                    else []
                ),
            ]
            tails = "".join(f"\n--- {p} (last lines)\n{tail(p)}" for p in logs)
            raise RehearsalError(f"{err}{tails}") from None


# --- helpers ---------------------------------------------------------------------------------


def copy_checkout(source: pathlib.Path, target: pathlib.Path) -> None:
    """The checkout's files (tracked, and untracked ones git does not ignore) as the laptop's."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=source, capture_output=True, check=True).stdout  # fmt: skip
    for name in filter(None, listed.decode().split("\0")):
        path = source / name
        if path.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / name)


def base_python() -> str:
    """The interpreter this one's virtual environment was made from (the "image's" Python)."""
    return getattr(sys, "_base_executable", sys.executable)


def image_site(target: pathlib.Path) -> pathlib.Path:
    """This environment's packages, as links, without this checkout's editable install (and
    its `.pth` hooks): what pip would install into the image from PyPI."""
    target.mkdir(parents=True)
    site = pathlib.Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        name = entry.name.lower()
        if "illada" in name or name.startswith("__editable__") or name.endswith(".pth"):
            continue
        (target / entry.name).symlink_to(entry)
    return target


def write_inputs(repo: pathlib.Path, env: dict[str, str]) -> None:
    """What the guide expects on the laptop: jsonl text in corpus/train and corpus/heldout (from
    the embedded corpus; enough for 24 steps of 8 x 64 tokens and the held-out bound) and
    iLLaDA's tokenizer.json, a stand-in: a byte-level BPE of the toy vocabulary (1024 ids, the
    project's special ids), which the `rehearsal` fiddler gives the model."""
    code = (
        "import json, pathlib\n"
        "from illada_jax.data.sources.corpus import embedded_documents\n"
        "from illada_jax.data.tokenizers.tokenizer_train import train_tokenizer\n"
        "for split, name, count in (('train', 'train', 80), ('heldout', 'heldout', 20)):\n"
        "    out = pathlib.Path('corpus') / name\n"
        "    out.mkdir(parents=True)\n"
        "    docs = [d.text[:1500] for _, d in zip(range(count), embedded_documents(split))]\n"
        "    lines = [json.dumps({'text': t}) + '\\n' for t in docs]\n"
        "    (out / 'docs.jsonl').write_text(''.join(lines))\n"
        "train_tokenizer(['corpus/train/docs.jsonl'], 'iLLaDA-8B-Base', 1024, 'bpe')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, check=True)


def check_worker_install(host: world.Host) -> None:
    """The worker's ~/illada: Python 3.12, jax 0.12, and illada_jax with its recipes from the
    wheel, not from this checkout (looked up without importing JAX: seconds per worker)."""
    code = (
        "import sys, importlib.metadata as m, importlib.util as u; "
        "print(f'{sys.version_info[0]}.{sys.version_info[1]}', m.version('jax'), "
        "u.find_spec('illada_jax').origin, "
        "u.find_spec('illada_jax').origin.replace('__init__.py', 'recipes/illada.py'))"
    )
    python = host.home / "illada" / "bin" / "python"
    result = subprocess.run([str(python), "-c", code], env=host.base_environment(), cwd=host.home,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    words = result.stdout.split()
    if result.returncode or len(words) != 4:
        raise RehearsalError(
            f"{host.id}: ~/illada does not have the project: {result.stderr[-2000:]}"
        )
    python_version, jax_version, package, recipes = words
    if python_version != PYTHON_VERSION or not jax_version.startswith("0.12"):
        raise RehearsalError(
            f"{host.id}: Python {python_version}, jax {jax_version} (want 3.12, 0.12)"
        )
    venv = str(host.home / "illada")
    if not package.startswith(venv) or not os.path.exists(recipes):
        raise RehearsalError(f"{host.id}: illada_jax from {package}, recipes from {recipes}")
    print(f"{host.id}: Python {python_version}, jax {jax_version}, illada_jax from the wheel")


def job_pid(host: world.Host) -> int:
    """The pid of the host's `illada train` (found by its environment and command line)."""
    for pid in world_processes(world.root(), [host.id]):
        try:
            argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 2 and argv[1].endswith(b"/illada") and argv[2] == b"train":
            return pid
    raise RehearsalError(f"no `illada train` runs on {host.id}")


def check_job_environment(host: world.Host) -> None:
    """The job runs with the launcher's TPU runtime flags and the supervisor's exit code."""
    environ = dict(
        x.split(b"=", 1)
        for x in pathlib.Path(f"/proc/{job_pid(host)}/environ").read_bytes().split(b"\0")
        if b"=" in x
    )
    flags = environ.get(b"LIBTPU_INIT_ARGS", b"").decode()
    if (
        "--xla_tpu_scoped_vmem_limit_kib=" not in flags
        or environ.get(b"ILLADA_PREEMPTED_EXIT_CODE") != b"75"
    ):
        raise RehearsalError(
            f"{host.id}: the job's LIBTPU_INIT_ARGS={flags!r}, ILLADA_PREEMPTED_EXIT_CODE="
            f"{environ.get(b'ILLADA_PREEMPTED_EXIT_CODE')}"
        )


def world_processes(root: pathlib.Path, hosts: list[str] | None = None) -> list[int]:
    """Processes started in the world (optionally: on these hosts), found by their environment."""
    mark = f"{world.ROOT_VAR}={root}".encode()
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if mark not in environ:
            continue
        if hosts is None or any(f"{world.HOST_VAR}={h}".encode() in environ for h in hosts):
            found.append(int(proc.name))
    return found


def log_of(host: world.Host) -> str:
    path = host.home / "illada-train.log"
    return path.read_text(errors="replace") if path.exists() else ""


def tail(path: pathlib.Path, lines: int = 25) -> str:
    return (
        "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        if path.exists()
        else "(none)"
    )


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RehearsalError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:3]))  # fmt: skip
    parser.add_argument("--hosts", type=int, default=2, help="workers each job gets (default 2)")
    parser.add_argument(
        "--only",
        action="append",
        choices=PLATFORMS,
        help="rehearse only this launcher's sequence (repeatable; default all)",
    )
    parser.add_argument("--keep", type=pathlib.Path, default=None,
                        help="build the world in this (new) directory and keep it")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per wait")
    args = parser.parse_args(argv)
    if args.hosts < 1:
        parser.error("--hosts must be >= 1")
    root = args.keep or pathlib.Path(tempfile.mkdtemp(prefix="illada-rehearsal-"))
    root.mkdir(parents=True, exist_ok=True)
    rehearsal = Rehearsal(root.resolve(), args.hosts, args.timeout)
    only = args.only or list(PLATFORMS)
    failed = None
    try:
        with rehearsal.phase("world"):
            rehearsal.build()
        rehearsal.prepare()
        if "tpu-vm" in only:
            rehearsal.tpu_vm()
        if "xpk" in only:
            rehearsal.xpk()
        if "slurm" in only:
            rehearsal.slurm()
    except RehearsalError as err:
        failed = err
    finally:
        rehearsal.stop()
    print("\nphase wall times:")
    for name, seconds in rehearsal.timings:
        print(f"  {name:40} {seconds:7.1f} s")
    print(f"  {'total':40} {sum(s for _, s in rehearsal.timings):7.1f} s")
    (root / "timings.json").write_text(json.dumps(rehearsal.timings))
    if failed:
        print(f"\nrehearsal FAILED: {failed}\n(the world is kept in {root})", file=sys.stderr)
        return 1
    print(f"\nrehearsal passed ({', '.join(only)}; {args.hosts} hosts)")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
