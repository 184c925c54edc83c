"""`illada sweep`: expanding an experiment's `sweep()`, printing pod commands, and a local sweep of
two short `tiny` runs end to end (summary files, per-run metrics, loss-curve PNG)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from illada_jax import cli
from illada_jax.config.schema import ConfigError
from illada_jax.train import sweep

# Two-layer tiny model, 4 steps of 2 x 32 tokens, one held-out batch at the end.
FAST = [
    "--config=set:train.steps=4",
    "--config=set:optim.warmup_steps=1",
    "--config=set:train.log_every=2",
    "--config=set:train.seq_len=32",
    "--config=set:train.batch_size=2",
    "--config=set:model.n_layers=2",
    "--config=set:train.eval_every=4",
    "--config=set:train.eval_batches=1",
    "--config=set:train.sample_length=0",
]
BASE = "--config=config:tiny_lr"  # a recipe of configs/sweeps.py with tiny_lr_sweep() beside it


def test_local_sweep_trains_each_run_and_writes_the_summary(tmp_path):
    workdir = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "illada_jax.cli", "sweep", "--config=config:tiny_lr", *FAST,
         f"--workdir={workdir}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["sweep"] == "tiny_lr"
    rows = summary["runs"]
    assert [row["run"] for row in rows] == ["lr-1e-3", "lr-3e-3"]
    for row, lr in zip(rows, (1e-3, 3e-3)):
        assert row["status"] == "ok" and row["final_step"] == 4
        assert row["overrides"] == [f"set:optim.learning_rate={lr!r}"]
        assert math.isfinite(row["final_loss"]) and math.isfinite(row["final_eval_nll_bound"])
        run_dir = workdir / row["run"]
        records = [
            json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        ]
        assert [r["step"] for r in records if "loss" in r] == [2, 4]
        assert [r["eval_nll_bound"] for r in records if "eval_nll_bound" in r] == [
            row["final_eval_nll_bound"]
        ]
        assert row["final_loss"] == [r["loss"] for r in records if "loss" in r][-1]
        config = json.loads((run_dir / "config.json").read_text())
        assert config["optim"]["learning_rate"] == lr and config["model"]["n_layers"] == 2
    # Same data and seed, different learning rates: the runs really differ.
    assert rows[0]["final_loss"] != rows[1]["final_loss"]
    table = (workdir / "summary.md").read_text()
    assert "| lr-1e-3 | `set:optim.learning_rate=0.001` | ok | 4 |" in table
    assert "![loss curves](loss_curves.png)" in table
    assert (workdir / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_print_gives_one_train_command_per_run(capsys):
    assert cli.main(["sweep", "--config=config:tiny_lr", "--config=set:train.steps=8", "--print",
                     "--workdir=runs/lr"]) == 0  # fmt: skip
    assert capsys.readouterr().out.splitlines() == [
        f"illada train {BASE} --config=set:train.steps=8 "
        "--config=set:optim.learning_rate=0.001 --workdir=runs/lr/lr-1e-3",
        f"illada train {BASE} --config=set:train.steps=8 "
        "--config=set:optim.learning_rate=0.003 --workdir=runs/lr/lr-3e-3",
    ]


def test_print_with_a_launcher_names_each_pod_job(capsys):
    launcher = "python launch/xpk.py --cluster c --workload lr-{run} --tpu-type v5p-8"
    assert cli.main(["sweep", "--config=config:tiny_lr", "--print", f"--launcher={launcher}"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == (
        "python launch/xpk.py --cluster c --workload lr-lr-3e-3 --tpu-type v5p-8 -- "
        f"illada train {BASE} --config=set:optim.learning_rate=0.003 "
        "--workdir=runs/sweeps/tiny_lr/lr-3e-3"
    )


def test_a_file_experiment_exposes_its_sweep_as_fn_sweep(tmp_path):
    path = tmp_path / "my_exps.py"
    path.write_text(
        "from illada_jax.config import experiments\n"
        "def small_lr():\n    return experiments.tiny()\n"
        "def small_lr_sweep():\n"
        "    return [{'optim.learning_rate': 1e-3, 'model.attention_impl': 'xla'},\n"
        "            ['fiddler:antithetic_time', 'set:train.steps=3']]\n"
        "def sweep():\n    raise AssertionError('fn_sweep() wins over sweep()')\n"
    )
    spec = f"config:{path}:small_lr"
    assert sweep.expand(spec, ["set:train.seq_len=32"]) == [
        (
            "00-learning-rate-0-001-attention-impl-xla",
            [spec, "set:train.seq_len=32", "set:optim.learning_rate=0.001",
             "set:model.attention_impl='xla'"],
        ),
        (
            "01-antithetic-time-steps-3",
            [spec, "set:train.seq_len=32", "fiddler:antithetic_time", "set:train.steps=3"],
        ),
    ]  # fmt: skip
    # Every expanded run builds (the overrides are real fields).
    from illada_jax.config import flags

    for _, directives in sweep.expand(spec):
        flags.experiment_from_flags(directives)


def test_errors_name_what_to_define(tmp_path):
    with pytest.raises(ConfigError, match=r"config:tiny defines no sweep; named sweeps are: "):
        sweep.expand("config:tiny")
    with pytest.raises(ConfigError, match=r"define tiny_sweep\(\) or sweep\(\)"):
        sweep.expand("config:illada_jax.config.experiments:tiny")
    path = tmp_path / "bad.py"
    path.write_text("def exp():\n    pass\ndef sweep():\n    return [{'a': 1}, 'set:x=1']\n")
    with pytest.raises(ConfigError, match="an override set is a dict"):
        sweep.expand(f"config:{path}:exp")
    assert cli.main(["sweep", "--config=set:train.steps=2"]) == 2
