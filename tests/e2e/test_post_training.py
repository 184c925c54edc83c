"""Post-training through the command line: `illada prepare --format pref|rl` and `illada train`
with objective=vrpo (docs/algorithms.md#preference-optimisation-vrpo) and objective=grpo
(docs/algorithms.md#reinforcement-learning-diffu-grpo), as a user runs them.

- The demo pairs prepared with a held-out part; a short VRPO run from a small pre-trained run
  logs the preference metrics and the held-out preference accuracy, keeps its reference equal to
  the starting run, and, killed with -9 and restarted, repeats the uninterrupted losses.
- A short GRPO run on the demo RL prompts logs the rollouts' rewards and the held-out reward,
  and, killed with -9 between two rollouts and restarted, repeats the uninterrupted losses and
  rewards (the rollout it was training on is in the checkpoint).
- Bad input: a preference file without `rejected`, a starting run of another shape, a group of
  one, a reward that does not exist or returns NaN: one line, exit 2, nothing written.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from _cli import FAST_TRAIN, illada

ENV = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0"}
STEPS = 8
VRPO = [
    "--config=config:tiny_vrpo",
    *FAST_TRAIN,
    "--config=set:train.seq_len=64",
    f"--config=set:train.steps={STEPS}",
    "--config=set:train.log_every=1",
    "--config=set:train.eval_every=4",
    "--config=set:train.eval_batches=2",
    "--config=set:checkpoint.every=2",
    "--config=set:vrpo.samples=2",
]


def _train(cwd: pathlib.Path, *args: str, background: bool = False):
    command = [sys.executable, "-m", "illada_jax.cli", "train", *args]
    if background:
        with open(cwd / "background.log", "w") as log:  # the child keeps its own descriptor
            return subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                    env=ENV)  # fmt: skip
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env=ENV)


def _records(workdir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _losses(workdir: pathlib.Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _records(workdir) if "loss" in r and "event" not in r}


def _kill_and_resume(project: pathlib.Path, workdir: pathlib.Path, recipe: list[str],
                     checkpoint: int) -> None:  # fmt: skip
    """Start the run from runs/start, kill it with -9 once checkpoint `checkpoint` exists, then
    run the same command again: it must resume and finish."""
    args = (*recipe, "--config=set:checkpoint.init_from=runs/start", f"--workdir={workdir}")
    proc = _train(project, *args, background=True)
    deadline = time.monotonic() + 300
    while not (workdir / "checkpoints" / str(checkpoint)).exists():
        assert proc.poll() is None, (project / "background.log").read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    result = _train(project, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from checkpoint" in result.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> pathlib.Path:
    """A directory with the demo pairs prepared (and held out) and a 20-step tiny run to start
    from (runs/start), as the recipe's commands make them."""
    root = tmp_path_factory.mktemp("post")
    result = illada("prepare", "--format", "pref", "--input", "demo", "--tokenizer",
                    "shipped:sp1k", "--heldout-fraction", "0.2", "--output", "data/pref",
                    cwd=root)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "preference pairs" in result.stdout
    start = _train(root, *FAST_TRAIN, "--config=set:train.steps=20", "--config=set:train.eval_every=0",
                   "--workdir=runs/start")  # fmt: skip
    assert start.returncode == 0, start.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def uninterrupted(project) -> pathlib.Path:
    result = _train(project, *VRPO, "--config=set:checkpoint.init_from=runs/start",
                    "--workdir=runs/vrpo")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "initialised parameters from runs/start (also the frozen reference)" in result.stdout
    return project / "runs/vrpo"


def test_prepared_pairs_split_by_prompt(project):
    train = json.loads((project / "data/pref/manifest.json").read_text())
    held = json.loads((project / "data/pref-heldout/manifest.json").read_text())
    assert train["format"] == held["format"] == "pref"
    assert train["pairs"] > held["pairs"] > 0 and train["bad_records"] == {}
    from illada_jax.data.preparation.post_training import load_pref

    train_prompts = {tuple(p.prompt) for p in load_pref(project / "data/pref")[0]}
    held_prompts = {tuple(p.prompt) for p in load_pref(project / "data/pref-heldout")[0]}
    assert not train_prompts & held_prompts


def test_a_vrpo_run_logs_the_preference_metrics(uninterrupted):
    records = _records(uninterrupted)
    steps = [r for r in records if "loss" in r and "event" not in r]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    # Step 1: the policy equals the reference, so every margin is 0 and the loss is log 2.
    assert steps[0]["loss"] == pytest.approx(np.log(2.0), abs=1e-5)
    assert steps[0]["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    for record in steps:
        for key in ("reward_margin", "pref_accuracy", "chosen_drift", "rejected_drift"):
            assert np.isfinite(record[key]), (key, record)
    assert any(r["chosen_drift"] != 0 for r in steps[1:])  # the policy moves
    held = [r for r in records if "eval_pref_accuracy" in r]
    assert [r["step"] for r in held] == [0, 4, 8]
    # At the start the policy is the reference: every held-out margin is a tie (counted half).
    assert held[0]["eval_pref_accuracy"] == 0.5 and held[0]["eval_reward_margin"] == 0.0
    for r in held:
        assert r["eval_pairs"] == 4
        assert 0 <= r["eval_pref_accuracy"] <= 1 and 0 <= r["eval_likelihood_accuracy"] <= 1
    assert not any("unigram_baseline_nats" in r for r in records)


def test_killed_with_9_the_run_resumes_with_the_same_reference_and_losses(project, uninterrupted):
    workdir = project / "runs/vrpo-killed"
    _kill_and_resume(project, workdir, VRPO, checkpoint=4)
    assert _losses(workdir) == _losses(uninterrupted)


def test_a_pref_file_without_rejected_is_one_line_and_writes_nothing(tmp_path):
    lines = [{"prompt": "Say hi", "chosen": "hi"}, {"prompt": "Say yo", "chosen": "yo"}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = illada("prepare", "--format", "pref", "--input", "pairs.jsonl", "--output", "out",
                    cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    message = result.stderr.strip()
    assert "\n" not in message and "Traceback" not in message
    assert "no usable preference pair" in message and "'rejected'" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("objective", ["vrpo", "grpo"])
def test_a_starting_run_of_another_shape_is_refused_before_anything_is_written(project, rl_data,
                                                                               objective):  # fmt: skip
    recipe = VRPO if objective == "vrpo" else GRPO
    result = _train(project, *recipe, "--config=set:model.n_layers=3",
                    "--config=set:checkpoint.init_from=runs/start", "--workdir=runs/bad")  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    message = result.stderr.strip()
    assert "\n" not in message and "runs/start" in message
    assert not (project / "runs/bad").exists()


def test_illada_eval_reports_the_runs_held_out_preference_accuracy(project, uninterrupted):
    result = illada("eval", "--checkpoint", "runs/vrpo", cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held-out preference accuracy" in result.stdout
    printed = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    last = [r for r in _records(uninterrupted) if "eval_pref_accuracy" in r][-1]
    for key in ("eval_pref_accuracy", "eval_reward_margin", "eval_likelihood_accuracy"):
        assert float(printed[key]) == pytest.approx(last[key], rel=1e-5, abs=1e-6), key


@pytest.fixture(scope="module")
def rl_data(project) -> pathlib.Path:
    result = illada("prepare", "--format", "rl", "--input", "demo", "--tokenizer", "shipped:sp1k",
                    "--heldout-fraction", "0.1", "--output", "data/rl", cwd=project)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "RL prompts" in result.stdout
    return project / "data/rl-heldout"


def test_illada_eval_scores_completions_of_rl_prompts_with_a_users_reward(project, rl_data):
    (project / "my_reward.py").write_text(
        "def length(prompt, completion, example):\n"
        "    assert prompt.endswith('Start your reply with the letter ' + example['answer'] + '.')\n"
        "    return float(len(completion))\n"
    )
    result = illada("eval", "--checkpoint", "runs/start", "--rl-data", "data/rl-heldout",
                    "--reward", "my_reward.py:length", "--limit", "3", "--gen-length", "4",
                    "--temperature", "0.8", "--output", "rewards.json", cwd=project)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((project / "rewards.json").read_text())["rewards"]
    assert record["prompts"] == 3 and len(record["examples"]) == 3
    lengths = [len(e["completion"]) for e in record["examples"]]
    assert [e["reward"] for e in record["examples"]] == lengths
    assert record["reward_mean"] == pytest.approx(np.mean(lengths))
    assert record["accuracy"] == pytest.approx(np.mean(np.array(lengths) >= 1))
    assert f"reward_mean={record['reward_mean']:.6g}" in result.stdout


@pytest.mark.parametrize(
    "reward, expected",
    [("no_such_reward", "registered"), ("bad.py:broken", "reward 'bad.py:broken' on example 0")],
)
def test_a_bad_reward_is_one_line(project, rl_data, reward, expected):
    (project / "bad.py").write_text(
        "def broken(prompt, completion, example):\n    return float('nan')\n"
    )
    result = illada("eval", "--checkpoint", "runs/start", "--rl-data", "data/rl-heldout",
                    "--reward", reward, "--limit", "2", "--gen-length", "2", cwd=project)  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    message = result.stderr.strip()
    assert "\n" not in message and "Traceback" not in message and expected in message, message


def test_prepared_rl_prompts_split_by_prompt_and_keep_their_records(project, rl_data):
    from illada_jax.data.chat.rl_demo import opening_letter_task
    from illada_jax.data.preparation.post_training import load_rl

    train_prompts, train_examples, manifest = load_rl(project / "data/rl")
    held_prompts, held_examples, _ = load_rl(rl_data)
    assert manifest["format"] == "rl" and manifest["bad_records"] == {}
    assert len(train_prompts) + len(held_prompts) == 2000
    assert not {tuple(p) for p in train_prompts} & {tuple(p) for p in held_prompts}
    # Every record as the demo made it, in order within each part.
    demo = opening_letter_task(2000, seed=0)
    assert sorted(map(str, train_examples + held_examples)) == sorted(map(str, demo))


GRPO = [
    "--config=config:tiny_grpo",
    *FAST_TRAIN,
    "--config=set:train.seq_len=64",
    "--config=set:train.batch_size=8",
    f"--config=set:train.steps={STEPS}",
    "--config=set:train.log_every=1",
    "--config=set:train.eval_every=4",
    "--config=set:train.eval_batches=1",
    "--config=set:checkpoint.every=3",
    "--config=set:grpo.gen_length=8",
    "--config=set:grpo.steps=8",
    "--config=set:grpo.block_length=4",
]


@pytest.fixture(scope="module")
def grpo_run(project, rl_data) -> pathlib.Path:
    result = _train(project, *GRPO, "--config=set:checkpoint.init_from=runs/start",
                    "--workdir=runs/grpo")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "initialised parameters from runs/start (also the frozen reference)" in result.stdout
    return project / "runs/grpo"


def _rl_steps(workdir: pathlib.Path) -> dict[int, tuple[float, float]]:
    return {r["step"]: (r["loss"], r["reward_mean"])
            for r in _records(workdir) if "loss" in r and "event" not in r}  # fmt: skip


def test_a_grpo_run_logs_rewards_and_the_held_out_reward(grpo_run):
    records = _records(grpo_run)
    steps = [r for r in records if "loss" in r and "event" not in r]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    # Step 1 is the first update on a fresh rollout: the policy is the one that sampled (ratio
    # 1) and the reference (KL 0), and the advantages are centred per group: the loss is 0.
    assert steps[0]["ratio"] == pytest.approx(1.0, abs=1e-5)
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert steps[0]["loss"] == pytest.approx(0.0, abs=1e-5)
    for record in steps:
        assert 0.0 <= record["reward_mean"] <= 1.0  # format_regex: 0 or 1 per completion
        assert 0.0 <= record["clip_fraction"] <= 1.0 and record["kl"] >= 0.0
        assert 1.0 <= record["completion_tokens"] <= 8.0
    # μ = 2: a rollout at steps 0, 2, 4, ... (it takes time), none between them; the second
    # inner update trains on the same completions, so it logs the same mean reward.
    assert [r["rollout_s"] > 0 for r in steps] == [True, False] * (STEPS // 2)
    assert all(steps[i]["reward_mean"] == steps[i + 1]["reward_mean"] for i in (0, 2, 4, 6))
    assert any(r["grad_norm"] > 0 for r in steps)
    held = [r for r in records if "eval_reward_mean" in r]
    assert [r["step"] for r in held] == [0, 4, 8]
    for r in held:
        assert r["eval_completions"] == 8 and 0.0 <= r["eval_reward_mean"] <= 1.0
        assert r["eval_accuracy"] == r["eval_reward_mean"]  # a 0/1 reward


def test_killed_with_9_between_rollouts_the_grpo_run_repeats_its_losses_and_rewards(
    project, grpo_run
):
    workdir = project / "runs/grpo-killed"
    _kill_and_resume(project, workdir, GRPO, checkpoint=3)  # step 3: mid-way through a rollout
    assert _rl_steps(workdir) == _rl_steps(grpo_run)


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("grpo.group_size=1", "grpo.group_size=1 is invalid: must be >= 2"),
        ("grpo.reward='no_such_reward'", "no_such_reward"),
        ("grpo.reward='nan_reward.py:nan'", "reward 'nan_reward.py:nan' on example 0"),
        ("grpo.reward='nan_reward.py:fails'", "reward 'nan_reward.py:fails' on example 0"),
    ],
)
def test_bad_rl_settings_are_one_line_and_write_nothing(project, rl_data, setting, expected):
    (project / "nan_reward.py").write_text(
        "def nan(prompt, completion, example):\n    return float('nan')\n\n\n"
        "def fails(prompt, completion, example):\n    return {}['missing']\n"
    )
    result = _train(project, *GRPO, f"--config=set:{setting}",
                    "--config=set:checkpoint.init_from=runs/start", "--workdir=runs/bad-rl")  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    message = result.stderr.strip()
    assert "\n" not in message and "Traceback" not in message and expected in message, message
    assert not (project / "runs/bad-rl").exists()


def test_illada_eval_of_a_grpo_run_scores_its_held_out_prompts_with_its_own_settings(
    project, grpo_run
):
    result = illada("eval", "--checkpoint", "runs/grpo", "--limit", "3", "--output", "r.json",
                    cwd=project)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((project / "r.json").read_text())["rewards"]
    # The run's held-out prompts, reward and group size (8 completions of each prompt).
    assert record["dataset"].endswith("data/rl-heldout") and record["reward"] == "format_regex"
    assert record["prompts"] == 3 and record["samples"] == 8
    assert 0.0 <= record["reward_mean"] <= 1.0 and record["accuracy"] == record["reward_mean"]
    for example in record["examples"]:
        letter = example["prompt"][-2]  # "... Start your reply with the letter T."
        opens = re.match(rf"\W*{letter}", example["completion"]) is not None
        assert example["reward"] == float(opens), example
