"""`illada train` extras: profiling, TensorBoard events, both SFT objectives, init_from."""

from __future__ import annotations

import json

from _cli import FAST_TRAIN, illada

QUICK = [*FAST_TRAIN, "--config=set:optim.warmup_steps=1"]


def records(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_profile_tensorboard_and_metrics(tmp_path):
    run = tmp_path / "run"
    result = illada("train", *QUICK, "--config=set:train.profile_steps=(2, 3)", f"--workdir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert any((run / "profile").rglob("*.xplane.pb")), list((run / "profile").rglob("*"))
    assert list(run.glob("events.out.tfevents.*"))
    logged = [r for r in records(run) if "loss" in r]
    for key in ("step", "loss", "masked_ce", "lr", "grad_norm", "tokens_per_s", "mfu"):
        assert all(key in r for r in logged), key
    assert (run / "checkpoints" / "6").is_dir()


def test_sft_objectives_and_init_from(tmp_path):
    base = tmp_path / "base"
    assert illada("train", *QUICK, f"--workdir={base}").returncode == 0
    sft_data = tmp_path / "sft"
    prepared = illada("prepare", "--format", "sft", "--input", "demo", "--tokenizer", "shipped:sp1k",
                      "--output", str(sft_data))  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    illada_sft = illada(
        "train",
        *QUICK,
        "--config=set:diffusion.objective=sft_illada",
        f"--config=set:data.datasets=('{sft_data}',)",
        f"--config=set:checkpoint.init_from={base}",
        f"--workdir={tmp_path / 'illada_sft'}",
    )
    assert illada_sft.returncode == 0, illada_sft.stderr[-3000:]
    assert f"initialised parameters from {base}" in illada_sft.stdout
    llada_sft = illada(
        "train",
        *QUICK,
        "--config=set:diffusion.objective=sft_llada",
        "--config=set:diffusion.random_length_mode=none",
        "--config=set:data.datasets=('demo',)",
        f"--workdir={tmp_path / 'llada_sft'}",
    )
    assert llada_sft.returncode == 0, llada_sft.stderr[-3000:]
    losses = [r["loss"] for r in records(tmp_path / "llada_sft") if "loss" in r]
    assert losses and all(loss == loss for loss in losses)  # finite, not NaN
    bad = illada(
        "train",
        *QUICK,
        f"--config=set:checkpoint.init_from={tmp_path / 'nowhere'}",
        f"--workdir={tmp_path / 'bad'}",
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
