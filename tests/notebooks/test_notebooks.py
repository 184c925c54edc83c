"""The Colab notebooks run top to bottom, headless, in their quick setting (`ILLADA_QUICK=1`).

They run in order in one working directory, as a user would: 02 fine-tunes the model 01 trained.
Each test checks that the notebook's figures were written as PNG files and shown inline, and the
numbers it printed or logged (training must lower the loss; every sweep run must finish).
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs the [notebooks] extra (nbclient)")
nbclient = pytest.importorskip("nbclient", reason="needs the [notebooks] extra (nbclient)")

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("notebooks")


def _execute(name: str, workdir: pathlib.Path) -> nbformat.NotebookNode:
    """Run notebooks/NAME in `workdir` with ILLADA_QUICK=1; a failing cell fails the test."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    env = {"ILLADA_QUICK": "1", "ILLADA_NOTEBOOK_DIR": str(workdir / "illada_notebooks")}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client = nbclient.NotebookClient(
            notebook, timeout=600, kernel_name="python3",
            resources={"metadata": {"path": str(workdir)}},
        )  # fmt: skip
        client.execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        nbformat.write(notebook, workdir / name)  # the executed copy, for debugging
    return notebook


def _stdout(notebook) -> str:
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.output_type == "stream" and output.name == "stdout"
    )


def _inline_images(notebook) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )


def _assert_figures(workdir: pathlib.Path, names: list[str]) -> None:
    for name in names:
        path = workdir / "illada_notebooks" / "figures" / name
        assert path.is_file(), f"{name} was not written"
        assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 5000, name


def _metrics(run: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_01_quickstart(workdir):
    notebook = _execute("01_quickstart.ipynb", workdir)
    _assert_figures(workdir, ["01_training_curves.png", "01_reverse_process.png"])
    assert _inline_images(notebook) >= 2
    records = _metrics(workdir / "illada_notebooks" / "quickstart")
    losses = [r["loss"] for r in records if "loss" in r]
    held_out = [r["eval_nll_bound"] for r in records if "eval_nll_bound" in r]
    # 150 quick steps: from ln(1024) ≈ 6.9 most of the way down to the unigram level (~5.9).
    assert len(held_out) >= 2 and losses[-1] < losses[0] - 0.5, (losses, held_out)
    assert held_out[-1] < held_out[0], held_out
    out = _stdout(notebook)
    # The canvas as text: all masks at step 0, none left after the last step.
    assert re.search(r"step  0: '░{32}'", out), out[-2000:]
    last = re.search(r"step 32: '(.*)'", out)
    assert last and "░" not in last.group(1), out[-2000:]
    # The side-by-side table has one row per sampling setting.
    tables = [
        output["data"]["text/markdown"]
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if "text/markdown" in output.get("data", {})
    ]
    assert len(tables) == 1 and tables[0].count("\n| ") == 5, tables  # one row per setting


def test_02_finetune_and_evaluate(workdir):
    notebook = _execute("02_finetune_and_evaluate.ipynb", workdir)
    _assert_figures(workdir, ["02_sft_loss.png", "02_multiple_choice.png", "02_vrpo.png",
                              "02_grpo.png"])  # fmt: skip
    assert _inline_images(notebook) >= 4
    for style in ("illada_sft", "llada_sft"):
        run = workdir / "illada_notebooks" / style
        assert (run / "checkpoints" / "30").is_dir(), style
        assert any("loss" in r for r in _metrics(run))
    out = _stdout(notebook)
    assert out.count("--- illada_sft") == 2 and out.count("--- llada_sft") == 2
    assert out.count("\nmodel: ") == 8  # two turns, two temperatures, two models
    for method in ("ELBO", "confidence"):
        match = re.search(rf"{method}: accuracy (\d+)/6 = ", out)
        assert match and 0 <= int(match.group(1)) <= 6, out[-2000:]
    match = re.search(
        r"kjv_next_word \(8 questions, confidence scoring\): \{'acc,none': ([0-9.]+)", out
    )
    assert match and 0.0 <= float(match.group(1)) <= 1.0, out[-2000:]
    # VRPO from the LLaDA-style run: held-out accuracy at steps 0, 10, 20, starting at 0.5 (the
    # policy is the reference) and moving off it.
    held = [r for r in _metrics(workdir / "illada_notebooks" / "vrpo") if "eval_pref_accuracy" in r]
    assert [r["step"] for r in held] == [0, 10, 20] and held[0]["eval_pref_accuracy"] == 0.5
    assert held[-1]["eval_pref_accuracy"] != 0.5, held
    assert out.count("held-out preference accuracy") == 3
    # GRPO from the same run: the held-out reward of 64 sampled completions (8 prompts x 8) at
    # steps 0, 4, 8, each a mean of 0/1 rewards.
    rewards = [
        r for r in _metrics(workdir / "illada_notebooks" / "grpo") if "eval_reward_mean" in r
    ]
    assert [r["step"] for r in rewards] == [0, 4, 8], rewards
    for r in rewards:
        assert r["eval_completions"] == 64 and 0.0 <= r["eval_reward_mean"] <= 1.0
        assert r["eval_reward_mean"] * 64 == round(r["eval_reward_mean"] * 64)
    assert out.count("held-out reward") == 3


def test_03_ablations(workdir):
    notebook = _execute("03_ablations.ipynb", workdir)
    _assert_figures(workdir, ["03_ablation_elbo.png"])
    assert _inline_images(notebook) >= 1
    sweep_dir = workdir / "illada_notebooks" / "time_sampling"
    runs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert len(runs) == 8, runs  # 4 arms x 2 seeds
    for run in runs:
        evals = [r for r in _metrics(sweep_dir / run) if "eval_nll_bound" in r]
        assert [r["step"] for r in evals] == [10, 20, 30, 40], run
    assert re.search(r"\| antithetic-split \| 2 \| \d+\.\d+ ± \d+\.\d+ \|", str(notebook.cells))
