"""The `illada` command line, run as a user would (a subprocess per command)."""

from __future__ import annotations

import json

import pytest
from _cli import FAST_TRAIN, illada


@pytest.mark.parametrize(
    ("recipe", "total", "non_embedding"),
    [
        ("illada_8b", "7.62e+09", "6.98e+09"),
        ("llada_8b", "8.02e+09", "6.98e+09"),
        ("ablation_1b", "1.49e+09", "9.69e+08"),  # the LLaDA-1B shape
    ],
)
def test_params_prints_published_counts(recipe, total, non_embedding):
    result = illada("params", f"--config=config:{recipe}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split("=")[0] for line in lines] == ["total_params", "non_embedding_params"]
    counts = [int(line.split("=")[1]) for line in lines]
    assert [f"{c:.2e}" for c in counts] == [total, non_embedding]


def test_train_writes_run_directory_and_reproduces_from_file(tmp_path):
    first = illada("train", *FAST_TRAIN, f"--workdir={tmp_path / 'a'}")
    assert first.returncode == 0, first.stderr
    records = [
        json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
    for key in ("loss", "masked_ce", "lr", "grad_norm", "tokens_per_s", "num_masked"):
        assert all(key in r for r in records if "loss" in r), key
    config = tmp_path / "a" / "config.json"
    assert json.loads(config.read_text())["model"]["n_layers"] == 2
    again = illada("train", f"--config=file:{config}", f"--workdir={tmp_path / 'b'}")
    assert again.returncode == 0, again.stderr
    records_b = [
        json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    # Same config and seed: the same losses (deterministic on CPU).
    losses = [r["loss"] for r in records if "loss" in r]
    assert [r["loss"] for r in records_b if "loss" in r] == pytest.approx(losses, rel=1e-5)


def test_bad_config_is_a_clear_error_not_a_traceback():
    result = illada("train", "--config=set:model.n_kv_heads=3")
    assert result.returncode == 2
    assert "model.n_kv_heads=3" in result.stderr and "must divide" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_subcommands_with_examples():
    result = illada("--help")
    assert result.returncode == 0
    for command in ("train", "prepare", "tokenizer", "params", "convert", "compile", "sweep", "generate",
                    "chat", "eval"):  # fmt: skip
        assert command in result.stdout, command
        assert "Example" in illada(command, "--help").stdout, command
