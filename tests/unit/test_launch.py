"""Pod launchers (`launch/tpu_vm.py`, `launch/xpk.py`, `launch/slurm.py`) and the Dockerfiles.

The generated commands and scripts are asserted in full. No gcloud, xpk or sbatch is needed:
dry runs must not execute anything, and `--execute` is checked against a recording
`subprocess.run`.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import shlex
import subprocess
import sys
import tomllib

import pytest

from illada_jax.parallel import tpu_runtime

REPO = pathlib.Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
WHEEL = f"illada_jax-{PROJECT['version']}-py3-none-any.whl"
TRAIN = ["--", "illada", "train", "--config=config:small", "--workdir=gs://bkt/runs/small"]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"launch_{name}", REPO / "launch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


tpu_vm = _load("tpu_vm")
# The TPU runtime flags a one-slice v5p job gets (illada_jax/parallel/tpu_runtime.py's table).
V5P_FLAGS = tpu_runtime.libtpu_init_args("v5p-16")
V5E_4_SLICES = tpu_runtime.libtpu_init_args("v5litepod-16", 4)
xpk = _load("xpk")
slurm = _load("slurm")


class Recorder:
    """Stands in for `subprocess.run`: records every call, answers `stdout` with exit code 0."""

    def __init__(self, stdout: str = "") -> None:
        self.calls: list = []
        self.stdout = stdout

    def __call__(self, argv, **kwargs):
        self.calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout=self.stdout, stderr="")


@pytest.fixture(autouse=True)
def no_user_libtpu_flags(monkeypatch):
    """The launchers merge the launching shell's LIBTPU_INIT_ARGS into the table's: none here."""
    monkeypatch.delenv("LIBTPU_INIT_ARGS", raising=False)


@pytest.fixture
def no_subprocess(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a dry run executed {args}")

    for module in (tpu_vm, xpk, slurm):
        monkeypatch.setattr(module.subprocess, "run", refuse)


def _lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


# --- launch/tpu_vm.py -------------------------------------------------------------------------


def test_tpu_vm_single_slice_dry_run_prints_every_gcloud_command(no_subprocess, capsys):
    argv = ["--name", "illada-v5p", "--zone", "us-east5-a", "--accelerator-type", "v5p-16"]
    assert tpu_vm.main([*argv, *TRAIN]) == 0
    lines = _lines(capsys)
    assert lines[:4] == [
        "gcloud compute tpus tpu-vm create illada-v5p --zone=us-east5-a "
        "--accelerator-type=v5p-16 --version=v2-alpha-tpuv5",
        "python3 -m pip wheel --no-deps --wheel-dir=dist .",
        f"gcloud compute tpus tpu-vm scp dist/{WHEEL} illada-v5p: --zone=us-east5-a --worker=all",
        "gcloud compute tpus tpu-vm ssh illada-v5p --zone=us-east5-a --worker=all "
        "'--command=(test -x ~/.local/bin/uv || curl -LsSf https://astral.sh/uv/install.sh | sh) "
        "&& ~/.local/bin/uv venv --allow-existing --python 3.12 ~/illada && ~/.local/bin/uv pip "
        "install --python ~/illada/bin/python --reinstall-package illada-jax "
        f'"$HOME/{WHEEL}[tpu]"\'',
    ]
    assert len(lines) == 5
    script, env = _started_script(lines[4], "gcloud compute tpus tpu-vm ssh illada-v5p "
                                  "--zone=us-east5-a --worker=all")  # fmt: skip
    assert env == ""
    assert script == tpu_vm.worker_script(TRAIN[1:], None, libtpu_args=V5P_FLAGS)
    assert "cd ~\n" in script and "ILLADA_DISTRIBUTED=auto illada train --config=config:small " \
        "--workdir=gs://bkt/runs/small ) >> $LOG 2>&1" in script  # fmt: skip
    assert "\nLOGS_URL=gs://bkt/runs/small/logs\n" in script
    assert f"\nexport LIBTPU_INIT_ARGS='{V5P_FLAGS}'\n" in script


def _started_script(line: str, ssh_prefix: str) -> tuple[str, str]:
    """(the supervisor script, the env file) that a plan's start line installs; checks that the
    line runs it as an enabled systemd service (detached from the ssh session)."""
    import base64
    import shlex

    assert line.startswith(ssh_prefix + " '--command=echo ")
    remote = shlex.split(line[len(ssh_prefix) :])[0].removeprefix("--command=")
    encoded = remote.split()[1]
    assert remote.startswith(f"echo {encoded} | base64 -d > ~/illada-job.sh && ")
    assert "sudo systemctl enable illada-job && sudo systemctl restart illada-job" in remote
    # systemd restarts the supervisor only when it dies of a signal: it gives up with an exit
    # code after --max-failures crashes, which Restart=on-failure would start again, forever.
    assert "Restart=on-abnormal" in remote and "WantedBy=multi-user.target" in remote
    env = remote.split("printf '", 1)[1].split("'", 1)[0]
    return base64.b64decode(encoded).decode(), env


def test_tpu_vm_multi_slice_uses_a_queued_resource_and_the_image(no_subprocess, capsys):
    image = "us-docker.pkg.dev/my-proj/illada/illada:latest"
    argv = ["--name", "illada-ms", "--zone", "us-east5-a", "--accelerator-type", "v5p-16",
            "--num-slices", "2", "--spot", "--project", "my-proj", "--image", image,
            "--", "illada", "train", "--config=set:mesh.dcn_data=2",
            "--workdir=gs://bkt/runs/ms"]  # fmt: skip
    assert tpu_vm.main(argv) == 0
    where = "--zone=us-east5-a --project=my-proj"
    lines = _lines(capsys)
    assert lines[:3] == [
        f"gcloud compute tpus queued-resources create illada-ms {where} "
        "--accelerator-type=v5p-16 --runtime-version=v2-alpha-tpuv5 --node-count=2 "
        "--node-prefix=illada-ms --spot",
        f'until [ "$(gcloud compute tpus queued-resources describe illada-ms {where} '
        "'--format=value(state.state)')\" = ACTIVE ]; do sleep 30; done",
        f"gcloud compute tpus queued-resources ssh illada-ms {where} --node=all --worker=all "
        "'--command=sudo gcloud auth configure-docker us-docker.pkg.dev --quiet && "
        f"sudo docker pull {image}'",
    ]
    describe = ("gcloud compute tpus tpu-vm describe illada-ms-0 --zone=us-east5-a --project=my-proj "
                "'--format=value(networkEndpoints[0].ipAddress)'")  # fmt: skip
    assert len(lines) == 5
    for slice_id, line in enumerate(lines[3:]):
        prefix = (f"COORDINATOR=$({describe}) && gcloud compute tpus queued-resources ssh "
                  f"illada-ms {where} --node={slice_id} --worker=all")  # fmt: skip
        # The client's shell puts the coordinator's address into each worker's env file.
        filled = line.replace("'\"$COORDINATOR\"'", "10.0.0.2")
        script, env = _started_script(filled, prefix)
        assert env == (
            "MEGASCALE_COORDINATOR_ADDRESS=10.0.0.2:8080\\nMEGASCALE_NUM_SLICES=2\\n"
            f"MEGASCALE_SLICE_ID={slice_id}\\nMEGASCALE_PORT=8080\\n"
        )
        assert (
            "sudo docker run --rm --net=host --privileged -e ILLADA_DISTRIBUTED=auto "
            f'"${{passed[@]}}" -v "$HOME/runs:/work/runs" {image} illada train '
            "--config=set:mesh.dcn_data=2 --workdir=gs://bkt/runs/ms" in script
        )
        # Two slices: the data-parallel all-reduce over DCN is optimised too.
        flags = tpu_runtime.parse_args(
            script.split("export LIBTPU_INIT_ARGS=", 1)[1].split("\n")[0].strip("'")
        )
        assert flags == tpu_runtime.libtpu_flags("v5p-16", 2)
        assert flags["xla_tpu_enable_data_parallel_all_reduce_opt"] == "true"


def _stub_worker_home(tmp_path, exit_codes: str) -> tuple[pathlib.Path, pathlib.Path]:
    """A HOME whose ~/illada venv puts a stub `illada` first on PATH; the stub records each call
    and exits with the next code of `exit_codes` (the last one repeats)."""
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    (home / "illada" / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    (home / "illada" / "bin" / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    stub = bin_dir / "illada"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "call $ILLADA_DISTRIBUTED $ILLADA_PREEMPTED_EXIT_CODE $*" >> {tmp_path}/calls\n'
        f"n=$(wc -l < {tmp_path}/calls)\n"
        f"codes=({exit_codes})\n"
        "i=$((n - 1)); [ $i -ge ${#codes[@]} ] && i=$((${#codes[@]} - 1))\n"
        "exit ${codes[$i]}\n"
    )
    stub.chmod(0o755)
    return home, tmp_path / "calls"


def _run_worker_script(script: str, home: pathlib.Path) -> subprocess.CompletedProcess:
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "ILLADA_RESTART_DELAY": "0"}
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_the_worker_script_restarts_the_job_until_it_completes(tmp_path):
    home, calls = _stub_worker_home(tmp_path, "1 75 0")  # a crash, a preemption, then done
    script = tpu_vm.worker_script(["illada", "train", "--workdir=runs/x"], None, max_failures=1)
    assert _run_worker_script(script, home).returncode == 0
    assert calls.read_text().splitlines() == ["call auto 75 train --workdir=runs/x"] * 3
    log = (home / "illada-train.log").read_text()
    for attempt, code in ((1, 1), (2, 75), (3, 0)):
        assert f"=== illada job attempt {attempt} at " in log
        assert f"=== exit code {code} at " in log
    # Completed: a later start (a reboot, systemd) does not run the job again.
    assert _run_worker_script(script, home).returncode == 0
    assert len(calls.read_text().splitlines()) == 3
    assert "job already completed" in (home / "illada-train.log").read_text()


def test_the_worker_script_gives_up_after_max_failures_but_not_on_preemptions(tmp_path):
    home, calls = _stub_worker_home(tmp_path, "75 75 3 3 3")
    script = tpu_vm.worker_script(["illada", "train"], None, max_failures=1)
    result = _run_worker_script(script, home)
    assert result.returncode == 3
    assert len(calls.read_text().splitlines()) == 4  # 2 preemptions (free) + 2 crashes (1 allowed)
    assert "=== giving up after 2 failures" in (home / "illada-train.log").read_text()
    assert not (home / "illada-job.done").exists()


def test_the_image_gets_the_supervisors_variables_through_sudo(tmp_path):
    """`sudo` resets the environment: the container must get the runtime's variables as
    NAME=VALUE arguments (the unset ones left out), not docker's bare `-e NAME`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sudo").write_text('#!/usr/bin/env bash\nexec env -i PATH="$PATH" "$@"\n')
    (bin_dir / "docker").write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {tmp_path}/argv\n')
    for tool in ("sudo", "docker"):
        (bin_dir / tool).chmod(0o755)
    line = tpu_vm.job_line(["illada", "train"], "img:1")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "LIBTPU_INIT_ARGS": "--a=1 --b=2",
        "ILLADA_PREEMPTED_EXIT_CODE": "75",
        "MEGASCALE_NUM_SLICES": "2",
    }
    subprocess.run(["bash", "-euc", line], env=env, check=True, timeout=30)
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[argv.index("img:1") :] == ["img:1", "illada", "train"]
    passed = [argv[i + 1] for i, word in enumerate(argv) if word == "-e"]
    assert passed == ["ILLADA_DISTRIBUTED=auto", "ILLADA_PREEMPTED_EXIT_CODE=75",
                      "LIBTPU_INIT_ARGS=--a=1 --b=2", "MEGASCALE_NUM_SLICES=2"]  # fmt: skip


def test_tpu_vm_stop_stops_the_service_on_every_worker(no_subprocess, capsys):
    argv = ["--name", "q1", "--zone", "z", "--accelerator-type", "v5p-16", "--queued", "--stop"]
    assert tpu_vm.main(argv) == 0
    assert _lines(capsys) == [
        "gcloud compute tpus queued-resources ssh q1 --zone=z --node=all --worker=all "
        "'--command=sudo systemctl stop illada-job && sudo systemctl disable illada-job'"
    ]


def test_tpu_vm_single_slice_queued_resource_names_its_node(no_subprocess, capsys):
    argv = ["--name", "q1", "--zone", "europe-west4-b", "--accelerator-type", "v5litepod-8",
            "--queued", "--reserved", "--skip-install", *TRAIN]  # fmt: skip
    assert tpu_vm.main(argv) == 0
    lines = _lines(capsys)
    assert lines[0] == (
        "gcloud compute tpus queued-resources create q1 --zone=europe-west4-b "
        "--accelerator-type=v5litepod-8 --runtime-version=v2-alpha-tpuv5-lite --node-id=q1 "
        "--reserved"
    )
    assert lines[2].startswith(
        "gcloud compute tpus queued-resources ssh q1 --zone=europe-west4-b --node=all --worker=all "
    )
    assert len(lines) == 3  # create, wait, run: --skip-install ships nothing


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], "gcloud compute tpus tpu-vm delete illada-v5p --zone=us-east5-a --quiet"),
        (
            ["--num-slices", "2"],
            "gcloud compute tpus queued-resources delete illada-v5p --zone=us-east5-a --force "
            "--quiet",
        ),
    ],
)
def test_tpu_vm_delete_prints_only_the_teardown(no_subprocess, capsys, extra, expected):
    argv = ["--name", "illada-v5p", "--zone", "us-east5-a", "--accelerator-type", "v5p-16"]
    assert tpu_vm.main([*argv, *extra, "--delete"]) == 0
    assert _lines(capsys) == [expected]


def test_tpu_vm_execute_runs_the_printed_commands_in_order(monkeypatch, capsys):
    argv = ["--name", "illada-v5p", "--zone", "us-east5-a", "--accelerator-type", "v5p-16",
            "--skip-create"]  # fmt: skip
    assert tpu_vm.main([*argv, *TRAIN]) == 0
    printed = _lines(capsys)
    recorder = Recorder()
    monkeypatch.setattr(tpu_vm.subprocess, "run", recorder)
    assert tpu_vm.main([*argv, "--execute", *TRAIN]) == 0
    assert [tpu_vm.shlex.join(call) for call in recorder.calls] == printed


def test_tpu_vm_execute_polls_a_queued_resource_until_active(monkeypatch, capsys):
    monkeypatch.setattr(tpu_vm, "QUEUED_POLL_SECONDS", 0)
    states = iter(["WAITING_FOR_RESOURCES\n", "PROVISIONING\n", "ACTIVE\n"])
    calls = []

    def fake_run(argv, **kwargs):
        calls.append(argv)
        stdout = next(states) if "describe" in argv else ""
        return subprocess.CompletedProcess(argv, 0, stdout=stdout, stderr="")

    monkeypatch.setattr(tpu_vm.subprocess, "run", fake_run)
    argv = ["--name", "q1", "--zone", "z", "--accelerator-type", "v5p-8", "--queued",
            "--skip-install", "--execute", *TRAIN]  # fmt: skip
    assert tpu_vm.main(argv) == 0
    assert [call[4] for call in calls] == ["create", "describe", "describe", "describe", "ssh"]
    assert "PROVISIONING; waiting" in capsys.readouterr().out


def test_tpu_vm_errors_name_the_fix(no_subprocess, capsys):
    base = ["--zone", "z", "--accelerator-type", "v5p-8"]
    with pytest.raises(SystemExit):
        tpu_vm.main(["--name", "Bad_Name", *base, *TRAIN])
    assert "lowercase letters, digits and '-'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tpu_vm.main(["--name", "ok", *base])
    assert "give the job after --" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="pass one"):
        tpu_vm.main(["--name", "ok", "--zone", "z", "--accelerator-type", "v9x-8", *TRAIN])


# --- launch/xpk.py ----------------------------------------------------------------------------


def test_xpk_single_slice_dry_run(no_subprocess, capsys):
    argv = ["--cluster", "my-cluster", "--workload", "illada-small", "--tpu-type", "v5p-16",
            "--docker-image", "us-docker.pkg.dev/p/illada/illada:latest",
            "--", "illada", "train", "--config=config:small",
            "--workdir=gs://bkt/runs/small"]  # fmt: skip
    assert xpk.main(argv) == 0
    assert _lines(capsys) == [
        "xpk workload create --cluster=my-cluster --workload=illada-small --tpu-type=v5p-16 "
        "--num-slices=1 --docker-image=us-docker.pkg.dev/p/illada/illada:latest "
        "--max-restarts=3 --priority=medium '--command=ILLADA_DISTRIBUTED=auto "
        f"ILLADA_PREEMPTED_EXIT_CODE=75 LIBTPU_INIT_ARGS={_quoted(V5P_FLAGS)} illada train "
        "--config=config:small --workdir=gs://bkt/runs/small'"
    ]


def _quoted(flags: str) -> str:
    """`flags` single-quoted inside the single-quoted --command=... word."""
    return "'\"'\"'" + flags + "'\"'\"'"


def test_xpk_multi_slice_dry_run(no_subprocess, capsys):
    argv = ["--cluster", "c", "--workload", "illada-ms", "--tpu-type", "v5litepod-16",
            "--num-slices", "4", "--docker-image", "img:1", "--max-restarts", "10",
            "--project", "p", "--zone", "us-west4-a", "--restart-on-user-code-failure",
            "--", "illada", "train", "--config=set:mesh.dcn_data=4",
            "--workdir=gs://bkt/runs/ms"]  # fmt: skip
    assert xpk.main(argv) == 0
    assert _lines(capsys) == [
        "xpk workload create --cluster=c --workload=illada-ms --tpu-type=v5litepod-16 "
        "--num-slices=4 --docker-image=img:1 --max-restarts=10 --priority=medium --project=p "
        "--zone=us-west4-a --restart-on-user-code-failure '--command=ILLADA_DISTRIBUTED=auto "
        f"ILLADA_PREEMPTED_EXIT_CODE=75 LIBTPU_INIT_ARGS={_quoted(V5E_4_SLICES)} illada train "
        "--config=set:mesh.dcn_data=4 --workdir=gs://bkt/runs/ms'"
    ]
    assert "xla_tpu_enable_data_parallel_all_reduce_opt" in V5E_4_SLICES  # across slices


def test_the_launchers_keep_the_users_libtpu_flags(no_subprocess, capsys, monkeypatch):
    """Flags set in the launching shell's LIBTPU_INIT_ARGS reach the workers and win."""
    monkeypatch.setenv("LIBTPU_INIT_ARGS", "--xla_tpu_scoped_vmem_limit_kib=65536 --my_flag=1")
    argv = ["--cluster", "c", "--workload", "w", "--tpu-type", "v5p-8", "--docker-image", "i",
            *TRAIN]  # fmt: skip
    assert xpk.main(argv) == 0
    command = tpu_vm.shlex.split(_lines(capsys)[0])[-1]
    flags = tpu_runtime.parse_args(tpu_vm.shlex.split(command)[2].split("=", 1)[1])
    assert flags["xla_tpu_scoped_vmem_limit_kib"] == "65536" and flags["my_flag"] == "1"
    assert flags["xla_tpu_enable_async_collective_fusion"] == "true"  # the table's others stay
    argv = ["--name", "n", "--zone", "z", "--accelerator-type", "v6e-8", "--skip-create",
            "--skip-install", *TRAIN]  # fmt: skip
    assert tpu_vm.main(argv) == 0
    script, _ = _started_script(_lines(capsys)[0], "gcloud compute tpus tpu-vm ssh n --zone=z "
                                "--worker=all")  # fmt: skip
    line = next(x for x in script.splitlines() if x.startswith("export LIBTPU_INIT_ARGS="))
    flags = tpu_runtime.parse_args(tpu_vm.shlex.split(line.split("=", 1)[1])[0])
    assert flags["xla_tpu_scoped_vmem_limit_kib"] == "65536" and flags["my_flag"] == "1"


def test_the_launchers_refuse_an_unknown_tpu_generation(no_subprocess, capsys):
    with pytest.raises(SystemExit):
        xpk.main(["--cluster", "c", "--workload", "w", "--tpu-type", "tpu7-8",
                  "--docker-image", "i", *TRAIN])  # fmt: skip
    assert "--tpu-type: 'tpu7-8' is not a TPU slice name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tpu_vm.main(["--name", "n", "--zone", "z", "--accelerator-type", "tpu7-8",
                     "--runtime-version", "v2-alpha-tpu7", *TRAIN])  # fmt: skip
    assert "--accelerator-type: 'tpu7-8' is not a TPU slice name" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("workdir", "url"),
    [
        ("gs://bkt/runs/x", "gs://bkt/runs/x/logs"),
        ("gs://bkt/runs/x/", "gs://bkt/runs/x/logs"),
        ("/gcs/bkt/runs/x", "gs://bkt/runs/x/logs"),  # the gcsfuse mount of gs://bkt
        ("/gcs/", ""),
        ("runs/x", ""),
        ("/shared/runs/x", ""),
    ],
)
def test_worker_logs_go_to_the_bucket_behind_the_workdir(workdir, url):
    assert tpu_vm.logs_url(workdir) == url
    script = tpu_vm.worker_script(["illada", "train", f"--workdir={workdir}"], None)
    assert f"\nLOGS_URL={tpu_vm.shlex.quote(url)}\n" in script


def test_xpk_delete_and_execute(monkeypatch, capsys):
    assert xpk.main(["--cluster", "c", "--workload", "w", "--delete"]) == 0
    assert _lines(capsys) == ["xpk workload delete --cluster=c --workload=w --force"]
    recorder = Recorder()
    monkeypatch.setattr(xpk.subprocess, "run", recorder)
    assert xpk.main(["--cluster", "c", "--workload", "w", "--delete", "--execute"]) == 0
    assert recorder.calls == [["xpk", "workload", "delete", "--cluster=c", "--workload=w",
                               "--force"]]  # fmt: skip


def test_xpk_errors_name_the_fix(no_subprocess, capsys):
    with pytest.raises(SystemExit):
        xpk.main(["--cluster", "c", "--workload", "Illada_1", "--tpu-type", "v5p-8",
                  "--docker-image", "i", *TRAIN])  # fmt: skip
    assert "XPK needs lowercase letters" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        xpk.main(["--cluster", "c", "--workload", "w", *TRAIN])
    assert "--tpu-type and --docker-image required" in capsys.readouterr().err


# --- launch/slurm.py --------------------------------------------------------------------------

PER_GPU_SCRIPT = """\
#!/bin/bash
#SBATCH --job-name=illada
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --time=04:00:00
#SBATCH --output=slurm-logs/%x-%j.out

set -euo pipefail
export ILLADA_DISTRIBUTED=auto
srun --kill-on-bad-exit=1 illada train --config=config:small --workdir=gs://bkt/runs/small
"""

PER_NODE_SCRIPT = """\
#!/bin/bash
#SBATCH --job-name=sweep-a
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --time=1-00:00:00
#SBATCH --output=LOGS/%x-%j.out
#SBATCH --cpus-per-task=32
#SBATCH --partition=gpu
#SBATCH --account=acct

set -euo pipefail
source .venv/bin/activate
export ILLADA_DISTRIBUTED=auto
export JAX_LOCAL_DEVICE_IDS=0,1,2,3
srun --kill-on-bad-exit=1 illada train '--config=set:train.sample_prompts=("a b",)' \
--workdir=/shared/runs/x
"""


def test_slurm_one_process_per_gpu_script(no_subprocess, capsys):
    argv = ["--nodes", "2", "--gpus-per-node", "8", "--time", "04:00:00", *TRAIN]
    assert slurm.main(argv) == 0
    assert capsys.readouterr().out == PER_GPU_SCRIPT


def test_slurm_one_process_per_node_script(no_subprocess, capsys):
    argv = ["--job-name", "sweep-a", "--nodes", "4", "--gpus-per-node", "4", "--process-per",
            "node", "--time", "1-00:00:00", "--cpus-per-task", "32", "--partition", "gpu",
            "--account", "acct", "--log-dir", "LOGS", "--setup", "source .venv/bin/activate",
            "--", "illada", "train", '--config=set:train.sample_prompts=("a b",)',
            "--workdir=/shared/runs/x"]  # fmt: skip
    assert slurm.main(argv) == 0
    assert capsys.readouterr().out == PER_NODE_SCRIPT


def test_slurm_execute_writes_the_script_and_submits_it(monkeypatch, tmp_path):
    recorder = Recorder()
    monkeypatch.setattr(slurm.subprocess, "run", recorder)
    log_dir = tmp_path / "logs"
    argv = ["--nodes", "2", "--gpus-per-node", "8", "--time", "04:00:00", "--log-dir",
            str(log_dir), "--execute", *TRAIN]  # fmt: skip
    assert slurm.main(argv) == 0
    script = log_dir / "illada.sbatch"
    assert recorder.calls == [["sbatch", str(script)]]
    assert script.read_text() == PER_GPU_SCRIPT.replace("slurm-logs", str(log_dir))


def test_slurm_rejects_a_bad_time(no_subprocess, capsys):
    with pytest.raises(SystemExit):
        slurm.main(["--time", "4h", *TRAIN])
    assert "use [D-]HH:MM:SS" in capsys.readouterr().err


# --- Dockerfiles ------------------------------------------------------------------------------


def _jax_pins(requirements: list[str], name: str) -> dict[str, str]:
    """{"< '3.12'": version, ">= '3.12'": version} of `name==version; python_version ...`."""
    pins = {}
    for requirement in requirements:
        found = re.fullmatch(rf"{re.escape(name)}==([\w.]+); python_version (.+)", requirement)
        if found:
            pins[found.group(2)] = found.group(1)
    return pins


def test_each_python_gets_one_pinned_jax_and_the_images_the_current_one():
    jax = _jax_pins(PROJECT["dependencies"], "jax")
    assert jax == _jax_pins(PROJECT["dependencies"], "jaxlib")
    assert jax == _jax_pins(PROJECT["optional-dependencies"]["tpu"], "jax[tpu]")
    assert set(jax) == {"< '3.12'", ">= '3.12'"}
    current = jax[">= '3.12'"]
    assert tuple(map(int, current.split("."))) > tuple(map(int, jax["< '3.12'"].split(".")))
    tpu = (REPO / "launch" / "Dockerfile").read_text()
    gpu = (REPO / "launch" / "Dockerfile.gpu").read_text()
    assert re.search(r"^FROM python:3\.12-slim$", tpu, re.M)  # so pip picks the current jax
    assert re.search(r'^RUN pip install "\.\[tpu\]"', tpu, re.M)
    assert re.search(r"^FROM python:3\.12-slim$", gpu, re.M)
    assert f'"jax[cuda12]=={current}"' in gpu


def test_images_carry_the_recipes_where_the_registry_finds_them():
    for name in ("Dockerfile", "Dockerfile.gpu"):
        text = (REPO / "launch" / name).read_text()
        assert re.search(r"^COPY configs (\S+)$", text, re.M), name
        target = re.findall(r"^COPY configs (\S+)$", text, re.M)[-1]  # after the build's copy
        assert re.search(rf"^ENV ILLADA_CONFIGS={re.escape(target)}$", text, re.M), name


def test_the_images_copy_what_the_package_build_reads_before_installing_it():
    """pyproject.toml packages `configs/` as `illada_jax.recipes`: an image that installs the
    project before copying configs/ fails to build (setuptools: "package directory 'configs'
    does not exist"); the pod rehearsal's `docker build` stand-in found it."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    needed = {"pyproject.toml", "README.md", "illada_jax", *tool["package-dir"].values()}
    for name in ("Dockerfile", "Dockerfile.gpu"):
        text = (REPO / "launch" / name).read_text()
        before = text.split("\nRUN pip install", 1)[0]
        copied = {word for line in re.findall(r"^COPY (.+)$", before, re.M)
                  for word in line.split()[:-1]}  # fmt: skip
        assert needed <= copied, f"{name} installs before copying {sorted(needed - copied)}"


# --- the --help texts ------------------------------------------------------------------------


def _help_examples(module) -> list[list[str]]:
    """The example commands of a launcher's --help epilog (continuations joined, trailing
    comments dropped)."""
    text = module.build_parser().epilog.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("name", ["tpu_vm", "xpk", "slurm"])
def test_every_help_example_runs(no_subprocess, capsys, name):
    """Each full example of a launcher's --help runs (as the dry run it is: the plan printed);
    an elided one (`...`) is the full one above it with `--execute`."""
    module = {"tpu_vm": tpu_vm, "xpk": xpk, "slurm": slurm}[name]
    examples = _help_examples(module)
    assert examples and all(e[:2] == ["python", f"launch/{name}.py"] for e in examples)
    for previous, words in zip([None, *examples], examples):
        if "..." in words:
            assert previous is not None and "--execute" in words and "..." not in previous
            continue
        assert module.main(words[2:]) == 0, shlex.join(words)
        assert capsys.readouterr().out.strip()


def test_the_rehearsals_help_example_is_the_command_ci_runs():
    rehearse = _load("rehearse")
    example = shlex.split(rehearse.__doc__.splitlines()[2])
    assert example == [".venv312/bin/python", "launch/rehearse.py", "--hosts", "2"]
    test = (REPO / "tests" / "e2e" / "test_pod_rehearsal.py").read_text()
    assert '"launch" / "rehearse.py"), "--hosts", "2"' in test
