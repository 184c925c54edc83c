"""Running the `illada` command line as a user would: one subprocess per command."""

from __future__ import annotations

import subprocess
import sys

# Overrides that make `illada train` take seconds: a 2-layer tiny model on short batches.
FAST_TRAIN = [
    "--config=set:train.steps=6",
    "--config=set:optim.warmup_steps=1",  # tiny warms up over 50 steps; these runs are 6 long
    "--config=set:train.log_every=2",
    "--config=set:train.seq_len=32",
    "--config=set:train.batch_size=2",
    "--config=set:model.n_layers=2",
    "--config=set:train.sample_length=0",  # samples are tested in test_inference_cli.py
]


def illada(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "illada_jax.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )
