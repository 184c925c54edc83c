"""`train.builder.build_run`: the inputs the runner feeds its train step (a real sharded state, a
real global batch from the pipeline, its key and controls) lower to exactly the program that the
abstract inputs `illada compile` uses lower to, on an 8-device CPU mesh.

If the abstract twins drifted from the real inputs (another dtype, a weak type, another
sharding, a missing batch key), `illada compile` would report on a different program than the one
`illada train` runs; this compares the StableHLO text of both. JAX fixes its device count when it
starts, so the work runs in a subprocess with `--xla_force_host_platform_device_count=8`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    import jax
    import numpy as np

    from illada_jax.config import flags
    from illada_jax.train.builder import build_run

    assert jax.device_count() == 8, jax.devices()
    out = {}
    for name, directives in json.loads(sys.argv[1]).items():
        run = build_run(flags.experiment_from_flags(directives))
        # As the runner does (train/loop.py: start and advance).
        state = run.init_state()
        pipeline = run.pipeline()
        batch = run.global_batch(next(pipeline.iterator(0)))
        controls = run.controls(lr_scale=1.0, loss_ceiling=float(np.inf), data_step=0)
        real = run.lower_train_step(state, batch, run.step_key(0), controls).as_text()
        abstract = run.lower_train_step().as_text()
        out[name] = {
            "same": real == abstract,
            "batch_keys": sorted(batch),
            "mesh": dict(run.mesh.shape),
            "rules": run.rules,
            "length": len(real),
        }
        # The comparison is sensitive: another lr_scale dtype changes the lowered program.
        bad = {**controls, "lr_scale": np.float64(1.0).astype(np.float16)}
        out[name]["sensitive"] = run.lower_train_step(
            state, batch, run.step_key(0), bad
        ).as_text() != abstract
    print(json.dumps(out))
    """
)

SMALL = ["set:model.n_layers=2", "set:train.batch_size=8", "set:train.seq_len=32"]
CASES = {
    "tiny_dp": ["config:tiny", *SMALL],
    "tiny_fsdp_accum": [
        "config:tiny",
        *SMALL,
        "set:mesh.rules=fsdp",
        "set:train.grad_accum=2",
        "set:train.batch_size=16",  # 2 micro-batches over 8 data-parallel devices
        "set:mesh.data=2",
        "set:mesh.fsdp=4",
    ],
    "tiny_fsdp_tp": [
        "config:tiny",
        *SMALL,
        "set:mesh.rules=fsdp_tp",
        "set:mesh.fsdp=4",
        "set:mesh.tensor=2",
    ],
    "sft_llada": ["config:tiny_sft_llada", *SMALL, "set:train.seq_len=64"],
}


@pytest.fixture(scope="module")
def results():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(CASES)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_runner_inputs_lower_to_the_program_compile_reports(results, name):
    result = results[name]
    assert result["length"] > 10_000  # a real program was lowered
    assert result["same"], name
    assert result["sensitive"], name


def test_the_runs_cover_the_rule_tables_and_batch_kinds(results):
    assert results["tiny_dp"]["rules"] == "dp" and results["tiny_dp"]["mesh"]["fsdp"] == 8
    assert results["tiny_fsdp_accum"]["mesh"] == {"dcn_data": 1, "data": 2, "fsdp": 4, "tensor": 1}
    assert results["tiny_fsdp_tp"]["rules"] == "fsdp_tp"
    assert results["sft_llada"]["batch_keys"] == ["prompt_lengths", "tokens"]
    assert results["tiny_dp"]["batch_keys"] == ["positions", "segment_ids", "tokens"]
