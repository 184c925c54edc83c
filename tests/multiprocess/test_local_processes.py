"""Multi-process training with `launch/local.py` (N processes joined by `jax.distributed` on
127.0.0.1) equals one process with as many devices, and its checkpoints resume on a different
process layout.

Runs (module fixtures, in this order): one process with 4 CPU devices for 10 steps (the
reference; it also prepares the embedded corpus before several processes read it); 2 processes
x 2 devices for 6 steps; that run resumed by 1 process x 4 devices up to step 10. Online RL
(objective=grpo) from the reference run, on 1 process x 4 devices and on 2 x 2: each process
samples, decodes and scores the completions of its own prompts, and the rewards, advantages and
losses are those of the one process.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
TRAIN = [
    "train",
    "--config=set:train.seq_len=32",
    "--config=set:train.batch_size=4",  # 4 data-parallel devices in both layouts
    "--config=set:model.n_layers=2",
    "--config=set:optim.warmup_steps=1",
    # A moderate constant rate: the processes' gradient all-reduce sums in another order than one
    # process does, and at the demo's 5e-3 Adam amplifies those last-bit differences step by step.
    "--config=set:optim.learning_rate=1e-3",
    "--config=set:optim.schedule=constant",
    "--config=set:optim.final_learning_rate=0.0",
    "--config=set:train.log_every=1",
    "--config=set:checkpoint.every=2",
]
# -O0 code generation: the same programs, compiled about twice as fast.
FAST_XLA = "--xla_backend_optimization_level=0"


def _env(devices: int | None = None) -> dict[str, str]:
    flags = [FAST_XLA]
    if devices:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    env = {**os.environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu"}
    for name in ("ILLADA_COORDINATOR", "ILLADA_NUM_PROCESSES", "ILLADA_PROCESS_ID"):
        env.pop(name, None)
    return env


def _one_process(workdir: pathlib.Path, steps: int) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "illada_jax.cli",
            *TRAIN,
            f"--config=set:train.steps={steps}",
            f"--workdir={workdir}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(devices=4),
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _records(workdir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _losses(workdir: pathlib.Path) -> dict[int, float]:
    """step -> loss of the last step record (a resumed run appends)."""
    return {r["step"]: r["loss"] for r in _records(workdir) if "loss" in r and "event" not in r}


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("single") / "run"
    result = _one_process(workdir, 10)
    assert "4 local CPU device(s)" in result.stdout, result.stdout
    return workdir


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, single) -> tuple[pathlib.Path, subprocess.CompletedProcess]:
    base = tmp_path_factory.mktemp("two")
    workdir, logs = base / "run", base / "logs"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch" / "local.py"),
            "--num-processes",
            "2",
            "--devices-per-process",
            "2",
            "--log-dir",
            str(logs),
            "--",
            "illada",
            *TRAIN,
            "--config=set:train.steps=6",
            # Both processes write to this machine's disk: a shared filesystem for them.
            "--config=set:checkpoint.shared_filesystem=True",
            f"--workdir={workdir}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        cwd=REPO,
    )
    other = (logs / "local-1.log").read_text() if (logs / "local-1.log").exists() else ""
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:] + other[-3000:]
    return workdir, result


def test_two_processes_log_the_losses_of_one_process(two_processes, single):
    workdir, result = two_processes
    # Process 0 streams its output; it saw 2 processes' worth of 4 global devices.
    assert "done: loss" in result.stdout
    records = [r for r in _records(workdir) if "loss" in r]
    # Only process 0 writes metrics: one record per step.
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    two, one = _losses(workdir), _losses(single)
    np.testing.assert_allclose(
        [two[s] for s in range(1, 7)], [one[s] for s in range(1, 7)], rtol=1e-5
    )
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2, 4, 6]


def test_two_process_checkpoint_resumes_on_one_process_with_four_devices(two_processes, single):
    workdir, _ = two_processes
    result = _one_process(workdir, 10)
    match = re.search(r"resumed from checkpoint (\d+)", result.stdout)
    assert match and int(match.group(1)) == 6, result.stdout
    resumed, one = _losses(workdir), _losses(single)
    assert sorted(resumed) == list(range(1, 11))
    assert all(math.isfinite(v) for v in resumed.values())
    # Data position, RNG and state continue as in the uninterrupted one-process run.
    np.testing.assert_allclose(
        [resumed[s] for s in range(7, 11)], [one[s] for s in range(7, 11)], rtol=1e-5
    )


def _launch_two(workdir: pathlib.Path, logs: pathlib.Path, args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "launch" / "local.py"), "--num-processes", "2",
         "--devices-per-process", "2", "--log-dir", str(logs), "--", "illada", *args,
         "--config=set:checkpoint.shared_filesystem=True", f"--workdir={workdir}"],
        capture_output=True, text=True, timeout=300, env=_env(), cwd=REPO,
    )  # fmt: skip
    other = (logs / "local-1.log").read_text() if (logs / "local-1.log").exists() else ""
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:] + other[-3000:]


def test_two_processes_score_their_own_completions_as_one_process_does(single, tmp_path):
    data = tmp_path / "rl"
    prepared = subprocess.run(
        [sys.executable, "-m", "illada_jax.cli", "prepare", "--format", "rl", "--input", "demo",
         "--tokenizer", "shipped:sp1k", "--heldout-fraction", "0.1", "--output", str(data)],
        capture_output=True, text=True, timeout=300, env=_env(), cwd=REPO,
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr
    grpo = [
        "train", "--config=config:tiny_grpo", *TRAIN[1:], "--config=set:train.steps=4",
        "--config=set:train.batch_size=8", "--config=set:train.seq_len=64",
        "--config=set:grpo.group_size=4", "--config=set:grpo.gen_length=8",
        "--config=set:grpo.steps=8", "--config=set:train.eval_every=2",
        "--config=set:train.eval_batches=1", "--config=set:train.sample_length=0",
        f"--config=set:checkpoint.init_from={single}", f"--config=set:data.datasets=('{data}',)",
        f"--config=set:train.eval_dataset={data}-heldout",
    ]  # fmt: skip
    one = subprocess.run([sys.executable, "-m", "illada_jax.cli", *grpo,
                          f"--workdir={tmp_path / 'one'}"], capture_output=True, text=True,
                         timeout=300, env=_env(devices=4), cwd=REPO)  # fmt: skip
    assert one.returncode == 0, one.stderr[-4000:]
    _launch_two(tmp_path / "two", tmp_path / "logs", grpo)

    def steps(workdir):
        return [r for r in _records(workdir) if "loss" in r and "event" not in r]

    ones, twos = steps(tmp_path / "one"), steps(tmp_path / "two")
    assert [r["step"] for r in twos] == [r["step"] for r in ones] == [1, 2, 3, 4]
    for a, b in zip(ones, twos):
        assert b["reward_mean"] == a["reward_mean"]  # the same completions, scored alike
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(b["kl"], a["kl"], rtol=1e-3, atol=1e-7)
    held = [[r["eval_reward_mean"] for r in _records(w) if "eval_reward_mean" in r]
            for w in (tmp_path / "one", tmp_path / "two")]  # fmt: skip
    assert len(held[0]) == 3 and held[1] == held[0]
