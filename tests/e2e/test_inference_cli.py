"""Inference on a checkpoint trained for a few steps: training samples, `illada generate`,
`illada chat`, `illada eval` and the Python API (`illada_jax.load`), as a user would run them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _cli import FAST_TRAIN, illada

import illada_jax

PROMPTS = ("In the beginning", "The LORD is my", "Hello, how are")  # TrainConfig defaults


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("infer") / "run"
    result = illada(
        "train",
        *FAST_TRAIN,
        "--config=set:train.eval_every=6",
        "--config=set:train.eval_batches=2",
        "--config=set:train.sample_length=8",
        f"--workdir={workdir}",
    )
    assert result.returncode == 0, result.stderr
    (workdir / "train_stdout.txt").write_text(result.stdout)
    return workdir


def test_training_writes_and_prints_samples(run_dir):
    text = (run_dir / "samples" / "step_00000006.txt").read_text()
    printed = (run_dir / "train_stdout.txt").read_text()
    for prompt in PROMPTS:
        assert f"### {prompt}\n{prompt}" in text
        assert f"sample | {prompt}" in printed


def test_eval_reproduces_the_logged_heldout_bound(run_dir):
    logged = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if "eval_nll_bound" in line
    ]
    assert [r["step"] for r in logged] == [6]
    result = illada("eval", f"--checkpoint={run_dir}")
    assert result.returncode == 0, result.stderr
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert float(values["eval_nll_bound"]) == pytest.approx(logged[0]["eval_nll_bound"], rel=1e-5)
    assert float(values["eval_tokens"]) == logged[0]["eval_tokens"]


def test_eval_tasks_with_generation_flags_write_the_results_file(run_dir, tmp_path):
    """The shipped offline tasks with the sampler flags a generation task needs and a results
    file: the file holds what the lines printed."""
    pytest.importorskip("lm_eval")
    out = tmp_path / "results.json"
    result = illada(
        "eval", f"--checkpoint={run_dir}", "--tasks", "kjv_next_word,kjv_verse_end",
        "--limit", "2", "--mc-num", "2", "--gen-length", "8", "--steps", "4",
        "--block-length", "4", "--num-fewshot", "0", "--output", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    saved = json.loads(out.read_text())
    for task in ("kjv_next_word", "kjv_verse_end"):
        line = next(x for x in result.stdout.splitlines() if x.startswith(f"{task}: "))
        printed = dict(kv.split("=") for kv in line.split(": ", 1)[1].split(", "))
        for key, value in printed.items():
            assert float(value) == pytest.approx(saved["results"][task][key], rel=1e-3)
        assert saved["model_args"]["steps"] == saved["model_args"]["block_length"] == 4
        assert saved["results"][task]["sample_len"] == 2
    assert "not a git repository" not in result.stderr


def test_generate_prints_prompt_and_continuation(run_dir):
    result = illada(
        "generate", f"--checkpoint={run_dir}", "--prompt", "In the beginning",
        "--prompt", "And God said", "--gen-length", "8", "--block-length", "4",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "### In the beginning" and lines[1].startswith("In the beginning")
    assert lines[2] == "### And God said" and lines[3].startswith("And God said")


def test_generate_variable_length_and_fast_decoding_run(run_dir):
    for extra in (
        ["--variable-length", "--stop", ".", "--block-length", "4", "--gen-length", "12"],
        ["--threshold", "0.9", "--cache", "dual", "--block-length", "4", "--gen-length", "8"],
        ["--temperature", "0.8", "--cfg-scale", "0.5", "--gen-length", "8"],
    ):
        result = illada("generate", f"--checkpoint={run_dir}", "--prompt", "Amen", *extra)
        assert result.returncode == 0, (extra, result.stderr)
        assert result.stdout.startswith("Amen"), extra


def test_chat_answers_every_turn(run_dir):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "illada_jax.cli", "chat", f"--checkpoint={run_dir}",
         "--gen-length", "8", "--block-length", "4"],
        input="hello\nwho are you\n", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sum(line.startswith("model> ") for line in result.stdout.splitlines()) == 2


def test_bad_sampling_arguments_are_clear_errors(run_dir):
    result = illada(
        "generate", f"--checkpoint={run_dir}", "--prompt", "x", "--gen-length", "10",
        "--block-length", "4",
    )  # fmt: skip
    assert result.returncode == 2
    assert "gen_length=10" in result.stderr and "block_length=4" in result.stderr
    assert "Traceback" not in result.stderr
    missing = illada("generate", f"--checkpoint={run_dir / 'nope'}", "--prompt", "x")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_python_api_round_trip(run_dir):
    model = illada_jax.load(run_dir)
    assert model.step == 6 and model.config.n_layers == 2 and model.tokenizer is not None
    same = illada_jax.load(run_dir / "checkpoints" / "6")
    np.testing.assert_array_equal(
        np.asarray(same.params["embed"]), np.asarray(model.params["embed"])
    )
    ids = np.asarray([model.tokenizer.encode("In the beginning God")], np.int32)
    logits = model.logits(ids)
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert logits.dtype == np.float32 and np.isfinite(logits).all()
    # Ragged prompts are left-padded; each row keeps its prompt at the right end of [B, P].
    rows = [model.tokenizer.encode("Amen"), model.tokenizer.encode("In the beginning God")]
    out = model.generate(rows, gen_length=8, steps=8, block_length=4)
    width = max(len(r) for r in rows)
    assert out.shape == (2, width + 8)
    for r, row in enumerate(rows):
        assert out[r, width - len(row) : width].tolist() == row
    generated = out[:, width:]
    assert (generated != model.config.mask_token_id).all()
    assert ((generated >= 0) & (generated < model.config.vocab_size)).all()
    assert isinstance(model.generate_text("Amen", gen_length=8), str)
    elbo = model.log_likelihood("In the beginning", " God created", mc_num=8, batch_size=4)
    assert np.isfinite(elbo) and elbo < 0
    scores = model.score_confidence("In the beginning", [" God", " the heaven and the earth"])
    assert scores.shape == (2,) and (scores < 0).all()


def test_a_block_diffusion_run_generates_chats_and_refuses_lm_eval_tasks(tmp_path):
    # The commands read the run's objective: blocks of 8 from an exact cache, stopping at EOS.
    import subprocess
    import sys

    workdir = tmp_path / "blocks"
    result = illada("train", *FAST_TRAIN, "--config=set:diffusion.objective=block_diffusion",
                    "--config=set:diffusion.block_size=8", "--config=set:train.sample_length=8",
                    f"--workdir={workdir}")  # fmt: skip
    assert result.returncode == 0, result.stderr
    model = illada_jax.load(workdir)
    assert (model.decoding.kind, model.decoding.block_size) == ("block_diffusion", 8)
    result = illada("generate", f"--checkpoint={workdir}", "--prompt", "In the beginning",
                    "--gen-length", "16")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("In the beginning")
    chat = subprocess.run(  # chat's default --block-length (32) gives way to the model's blocks
        [sys.executable, "-m", "illada_jax.cli", "chat", f"--checkpoint={workdir}",
         "--gen-length", "32"],
        input="hello\n", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert chat.returncode == 0, chat.stderr
    assert sum(line.startswith("model> ") for line in chat.stdout.splitlines()) == 1
    result = illada("generate", f"--checkpoint={workdir}", "--prompt", "Amen",
                    "--block-length", "4")  # fmt: skip
    assert result.returncode != 0 and "trained with blocks of 8" in result.stderr
    result = illada("eval", f"--checkpoint={workdir}", "--tasks", "kjv_next_word", "--limit", "2")
    assert result.returncode != 0
    assert "objective=block_diffusion: --tasks scores answers" in result.stderr
