"""The pod rehearsal (`launch/rehearse.py`, docs/pods.md) and what keeps it honest.

- `test_the_rehearsal_runs_the_guide` (marker `rehearsal`, Python 3.12: CI's second leg; about 3
  minutes on 2 cores) runs `launch/rehearse.py --hosts 2`: every block of docs/pods.md's "From
  zero to a running pod job", as written, on 2 simulated hosts: bucket, tokenizer, data and
  held-out set on the GCS emulator; a TPU VM launch (create, install, gcsfuse mount, systemd
  supervisor), a preemption of one worker, the supervisors' restart and the resume from the
  bucket, the done markers, the logs on the bucket, `--stop` and `--delete`; the XPK sequence
  (docker build/push, a JobSet) and the SLURM one (sbatch, srun). It fails when a documented
  command fails or the pod does something else than the guide says.
- The other tests run everywhere, fast: the guide's blocks are the ones the rehearsal runs;
  its one change to them (the toy-size fiddler) touches only `illada train` commands; README's
  pod commands are commands of the guide; the fiddler keeps a pod recipe's code path; the
  stand-ins keep the rules the plans rely on (systemd's `Restart=`, sudo's reset environment).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "launch"))

from pod_sim import documented, world  # noqa: E402

GUIDE_PHASES = [
    "variables",
    "bucket",
    "tokenizer",
    "data",
    "heldout",
    "launch",
    "watch",
    "resume",
    "done",
    "stop",
    "xpk",
    "xpk-watch",
    "xpk-delete",
    "slurm",
    "slurm-watch",
]


def _rehearse():
    spec = importlib.util.spec_from_file_location("rehearse", ROOT / "launch" / "rehearse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.rehearsal
@pytest.mark.skipif(
    sys.version_info[:2] != (3, 12),
    reason="the rehearsal's workers get this Python: it must be the images' 3.12",
)
def test_the_rehearsal_runs_the_guide(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ILLADA_", "XLA_"))}
    result = subprocess.run([sys.executable, str(ROOT / "launch" / "rehearse.py"), "--hosts", "2",
                             "--keep", str(tmp_path / "world")], env=env, capture_output=True,
                            text=True, timeout=1200)  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-8000:]
    assert "rehearsal passed (tpu-vm, xpk, slurm; 2 hosts)" in out
    ran = re.findall(r"^\$ # docs/pods\.md:\d+ \(([\w-]+)\)$", out, re.M)
    assert sorted(set(ran)) == sorted(GUIDE_PHASES), ran  # every block of the guide, as written
    timings = json.loads((tmp_path / "world" / "timings.json").read_text())
    names = [name for name, _ in timings]
    for phase in ("world", "launch (create, install, mount, start)", "preempt one worker",
                  "resume (supervisor restart)", "done", "stop, delete", "xpk: image, workload",
                  "slurm: sbatch, srun"):  # fmt: skip
        assert phase in names, names
    assert "phase wall times:" in out and "total" in out
    # The preempted attempt and the completed one, in each worker's log on the bucket.
    logs = list((tmp_path / "world" / "gcs" / ".cloudstorage").glob("*/runs/illada-8b/logs/*.log"))
    assert len(logs) == 2
    for log in logs:
        text = log.read_text()
        assert "=== exit code 75 " in text and "=== exit code 0 " in text
        assert "resumed from checkpoint" in text


def test_the_guide_has_the_blocks_the_rehearsal_runs():
    blocks = documented.blocks()
    assert [b.phase for b in blocks] == GUIDE_PHASES
    source = (ROOT / "launch" / "rehearse.py").read_text()
    for phase in GUIDE_PHASES[1:]:  # the variables block is run first, by the bucket phase
        assert f'"{phase}"' in source, f"launch/rehearse.py does not run the {phase!r} block"
    # The guide is one sequence for one job: every later block uses the names of the first.
    names = {w.split("=")[0] for w in documented.commands(blocks[0].text)[0][1:]}
    assert names == {"BUCKET", "ZONE", "TPU"}
    launch = " ".join(documented.commands(_block("launch").text)[0])
    for setting in (
        "--workdir=gs://$BUCKET/",
        "set:data.tokenizer=gs://$BUCKET/",
        "set:train.eval_dataset=gs://$BUCKET/",
        "set:data.datasets=('gs://$BUCKET/",
    ):
        assert setting in launch, setting  # every path the job reads is on the bucket


def _block(phase: str) -> documented.Block:
    return next(b for b in documented.blocks() if b.phase == phase)


def test_the_one_override_goes_to_each_train_command_and_nothing_else():
    for block in documented.blocks():
        before = documented.commands(block.text)
        after = documented.commands(documented.with_override(block.text))
        expected = [
            [*words, documented.OVERRIDE] if "train" in words and "illada" in words else words
            for words in before
        ]
        assert after == expected, block.phase
    text = "illada train --x=1   # a comment\necho 'illada train # not a comment'\n"
    assert documented.with_override(text).splitlines()[0] == (
        f"illada train --x=1 {documented.OVERRIDE}  # a comment"
    )


def _readme_pod_commands() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Running on a pod", 1)[1].split("\n## ", 1)[0]
    found = []
    for block in re.findall(r"\n( *)```bash\n(.*?)\n *```", section, re.S):
        found += documented.commands(re.sub(rf"^{block[0]}", "", block[1], flags=re.M))
    return found


def test_readme_pod_commands_are_commands_of_the_guide():
    """README's bucket, launch and stop commands are the guide's (run by the rehearsal): one
    source of truth. Its first block (dry runs) is run by tests/e2e/test_readme_commands.py."""
    guide = [words for b in documented.blocks() for words in documented.commands(b.text)]
    shown = [
        w for w in _readme_pod_commands() if "--execute" in w or w[:2] == ["illada", "prepare"]
    ]
    assert len(shown) == 3, shown
    for words in shown:
        assert words in guide, shlex.join(words)


# --- the fiddler -----------------------------------------------------------------------------

POD_RECIPES = ("illada_8b", "llada_8b", "illada_8b_sft", "llada_8b_sft", "ablation_1b",
               "ablation_100m")  # fmt: skip


@pytest.mark.parametrize("name", POD_RECIPES)
def test_the_rehearsal_fiddler_shrinks_a_pod_recipe_and_keeps_its_code_path(name):
    from illada_jax.config import experiments, flags

    recipe = flags.experiment_from_flags([f"config:{name}"])
    toy = flags.experiment_from_flags([f"config:{name}", "fiddler:rehearsal"])
    assert recipe.model.attention_impl == "splash" and toy.model.attention_impl == "xla"
    assert (toy.model.n_layers, toy.model.d_model, toy.model.n_heads) == (4, 128, 4)
    grouped = recipe.model.n_kv_heads < recipe.model.n_heads
    assert toy.model.n_kv_heads == (1 if grouped else 4)  # GQA stays GQA, MHA stays MHA
    assert toy.train.steps == experiments.REHEARSAL_STEPS and toy.mesh.cpu_devices == 1
    assert toy.train.batch_size * toy.train.seq_len == 8 * 64
    if recipe.model.vocab_size > experiments.REHEARSAL_OWN_VOCAB:  # a published tokenizer
        assert toy.model.vocab_size == 1024 and toy.model.mask_token_id == 4
    else:
        assert toy.model.vocab_size == recipe.model.vocab_size
    same = {
        "model": ("param_dtype", "compute_dtype", "remat_policy", "tie_embeddings"),
        "mesh": ("dcn_data", "data", "fsdp", "tensor", "rules"),
        "diffusion": tuple(f.name for f in dataclasses.fields(recipe.diffusion)),
        "data": tuple(f.name for f in dataclasses.fields(recipe.data)),
        "optim": (
            "schedule",
            "learning_rate",
            "final_learning_rate",
            "weight_decay",
            "decay_exclude",
        ),  # fmt: skip
        "checkpoint": ("keep", "init_from", "shared_filesystem"),
        "train": ("eval_dataset", "health_policy"),
    }
    for section, fields in same.items():
        for field in fields:
            assert getattr(getattr(toy, section), field) == getattr(getattr(recipe, section), field)
    assert bool(toy.train.eval_every) == bool(recipe.train.eval_every)


# --- stand-ins -------------------------------------------------------------------------------


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A world with one stand-in host (no emulator: these stand-ins do not use it)."""
    monkeypatch.setenv(world.ROOT_VAR, str(tmp_path))
    world.write_json(tmp_path / "world.json", {"emulator_url": "http://127.0.0.1:9",
                                               "restart_delay": 0, "hosts": 1})  # fmt: skip
    world.install_tools(tmp_path, sys.executable)
    return world.create_host("h0", "h0-w-0", world.machine_environment({}))


def _on_host(host: world.Host, command: str, **extra: str) -> subprocess.CompletedProcess:
    env = {**host.base_environment(), **extra}
    return subprocess.run(["bash", "-c", command], env=env, cwd=host.home, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize(("policy", "runs"), [("on-abnormal", 1), ("on-failure", 3)])
def test_the_systemd_stand_in_restarts_as_the_unit_says(host, policy, runs):
    """The supervisor gives up with an exit code: `Restart=on-abnormal` (what the launcher
    writes) leaves it stopped, `on-failure` would start it again (here: until it succeeds)."""
    script = host.home / "job.sh"
    script.write_text(
        f"echo run >> {host.home}/runs\n[ $(wc -l < {host.home}/runs) -ge 3 ] || exit 3\n"
    )
    unit = f"[Service]\nExecStart=/bin/bash {script}\nRestart={policy}\nRestartSec=0\n"
    (host.root / "etc/systemd/system/job.service").write_text(unit)
    assert _on_host(host, "systemctl restart job").returncode != 0  # needs sudo, as on a VM
    assert _on_host(host, "sudo systemctl restart job").returncode == 0
    state = host.dir / "run" / "job.json"
    deadline = time.monotonic() + 30
    while json.loads(state.read_text())["state"] == "active":  # the unit runs detached
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert (host.home / "runs").read_text().count("run") == runs
    assert json.loads(state.read_text())["state"] == ("failed" if runs == 1 else "inactive")


def test_sudo_runs_the_plans_commands_on_the_hosts_system_paths(host):
    result = _on_host(
        host,
        "echo x | sudo tee /etc/apt/sources.list.d/a.list && "
        "sudo mkdir -p /gcs/bkt && mountpoint -q /gcs/bkt || echo not-mounted",
    )
    assert (host.root / "etc/apt/sources.list.d/a.list").read_text() == "x\n"
    assert (host.root / "gcs/bkt").is_dir() and result.stdout.strip().endswith("not-mounted")
    refused = _on_host(host, "sudo env")
    assert refused.returncode != 0 and "the stand-in runs only" in refused.stderr
