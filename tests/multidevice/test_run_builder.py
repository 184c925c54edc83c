"""One step object: `illada train` runs the executable `illada compile` reports, on 8 CPU devices.

- `illada train` (the command, in a subprocess with 8 virtual CPU devices) logs the fingerprint of
  the train step it compiled and called (`metrics.jsonl`, event `compiled`); `illada compile
  --topology=cpu` of the same config reports the fingerprint of the program it compiled: they
  are equal, and differ for another config (the comparison can fail).
- The runner's compile (`train.loop.compile_steps`, what `illada train` calls) lowers under the
  mesh: its lowering holds the model's activation sharding constraints, and the compiled step is
  not the program a lazy `jax.jit` traced at the call site would build (no constraints, another
  executable; the failure the runner had).
- The compiled step takes the runner's real inputs (a real sharded state, a pipeline batch, its
  key and controls) and refuses inputs of another type instead of retracing.
- The text samples' sampler, compiled on the run's mesh with the sharded parameters, decodes the
  canvas the single-device sampler decodes.

JAX fixes its device count when it starts, so everything runs in subprocesses with
`--xla_force_host_platform_device_count=8`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.core

SMALL = ["set:model.n_layers=2", "set:train.batch_size=8", "set:train.seq_len=32"]
FSDP = ["config:tiny", *SMALL, "set:mesh.rules=fsdp", "set:mesh.data=2", "set:mesh.fsdp=4"]
TRAIN = ["set:train.steps=2", "set:optim.warmup_steps=1", "set:train.sample_length=0"]


def _env() -> dict:
    return {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }


def _illada(*args: str, cwd=None) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "illada_jax.cli", *args],
        capture_output=True, text=True, env=_env(), timeout=600, cwd=cwd,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def _compile_program(directives: list[str]) -> str:
    out = _illada("compile", *(f"--config={d}" for d in directives), "--topology=cpu",
                  "--no-probes").stdout  # fmt: skip
    result = out.strip().splitlines()[-1]
    assert result.startswith("RESULT fits=true"), out[-2000:]
    return re.search(r"program=([0-9a-f]{16})", result).group(1)


def _train_program(directives: list[str], workdir) -> str:
    _illada("train", *(f"--config={d}" for d in directives), f"--workdir={workdir}")
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    (compiled,) = [r for r in records if r.get("event") == "compiled"]
    assert any("loss" in r for r in records)  # it trained with that step
    return compiled["train_step_program"]


def test_illada_train_runs_the_program_illada_compile_reports(tmp_path):
    directives = [*FSDP, *TRAIN]
    trained = _train_program(directives, tmp_path / "run")
    assert _compile_program(directives) == trained
    # Sensitive: another rule table (same shapes) is another program.
    assert _compile_program([*directives, "set:mesh.rules=dp"]) != trained


SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    import jax
    import numpy as np

    from illada_jax.config import flags
    from illada_jax.sampling.generate import SamplingOptions, SpecialIds, generate
    from illada_jax.train.builder import build_run, program_fingerprint
    from illada_jax.train.loop import compile_steps

    assert jax.device_count() == 8, jax.devices()


    def constraints(text):
        # Sharding constraints as lowered by jax 0.10 (custom_call @Sharding) or Shardy.
        return text.count("@Sharding") + text.count("sdy.sharding_constraint")


    out = {}
    for name, directives in json.loads(sys.argv[1]).items():
        run = build_run(flags.experiment_from_flags(directives))
        record = compile_steps(run)  # what `illada train` does before its first step
        lowered, compiled = run.lower_train_step(), run.train_step
        # What the loop used to run: the jitted step traced at its call, outside the mesh.
        lazy = run.jitted_train_step.lower(*run.abstract_step_inputs())
        # As the runner feeds it (train/loop.py: start and advance).
        state = run.init_state()
        batch = run.global_batch(next(run.pipeline().iterator(0)))
        controls = run.controls(lr_scale=1.0, loss_ceiling=float(np.inf), data_step=0)
        state, metrics = run.train_step(state, batch, run.step_key(0), controls)
        bad = {**controls, "lr_scale": np.float16(1.0)}
        try:
            run.train_step(state, batch, run.step_key(1), bad)
            refused = ""
        except (TypeError, ValueError) as err:
            refused = str(err)
        # The runner's text samples (train/samples.py): the sampler compiled on the run's mesh
        # with the sharded parameters, 3 prompts on 8 devices; the same canvas as on one device.
        ids = SpecialIds.from_config(run.experiment.model)
        opts = SamplingOptions(gen_length=8, steps=8, block_length=8)
        prompts = np.array([[9, 10, 11, 12], [13, 14, 15, 16], [17, 18, 19, 20]], np.int32)
        on_mesh = generate(run.graphdef, state["params"], ids, prompts, opts, mesh=run.mesh)
        alone = generate(run.graphdef, jax.device_get(state["params"]), ids, prompts, opts)
        out[name] = {
            "sample_same": bool((on_mesh == alone).all()),
            "sample_generated": int((on_mesh[:, 4:] != ids.mask).sum()),
            "program": record["train_step_program"],
            "same_object": compiled is run.train_step,
            "recompiled_same": program_fingerprint(lowered.compile()) == record["train_step_program"],
            "constraints": constraints(run.compiled_lowering().as_text()),
            "lazy_constraints": constraints(lazy.as_text()),
            "lazy_program": program_fingerprint(lazy.compile()),
            "loss": float(metrics["loss"]),
            "refused": refused,
            "mesh": dict(run.mesh.shape),
            "rules": run.rules,
            "batch_keys": sorted(batch),
        }
    print("RESULT " + json.dumps(out))
    """
)

CASES = {
    "tiny_fsdp": FSDP,
    "tiny_fsdp_tp_accum": [
        "config:tiny",
        *SMALL,
        "set:mesh.rules=fsdp_tp",
        "set:mesh.fsdp=4",
        "set:mesh.tensor=2",
        "set:train.grad_accum=2",
        "set:train.batch_size=8",
    ],  # fmt: skip
    "sft_llada": ["config:tiny_sft_llada", *SMALL, "set:train.seq_len=64", "set:mesh.rules=fsdp"],
}


@pytest.fixture(scope="module")
def results():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(CASES)],
        capture_output=True, text=True, env=_env(), timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_runner_compiles_under_the_mesh_and_calls_that_executable(results, name):
    result = results[name]
    assert result["same_object"] and result["recompiled_same"], result
    # Every layer's matmuls pin their activations (2 layers: q, k, v, attention out, gate, up,
    # mlp out, plus embeddings and logits) ...
    assert result["constraints"] >= 16, result
    # ... which a trace outside the mesh loses: another program (the runner's old failure).
    assert result["lazy_constraints"] == 0
    assert result["lazy_program"] != result["program"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_compiled_step_takes_the_runner_inputs_and_refuses_others(results, name):
    result = results[name]
    assert result["loss"] == result["loss"] and result["loss"] > 0  # finite, a real step
    assert "lr_scale" in result["refused"] or "float16" in result["refused"], result["refused"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_sampler_on_the_mesh_gives_the_single_device_canvas(results, name):
    assert results[name]["sample_generated"] == 3 * 8  # every position decoded
    assert results[name]["sample_same"]


def test_the_runs_cover_the_rule_tables_and_batch_kinds(results):
    assert results["tiny_fsdp"]["mesh"] == {"dcn_data": 1, "data": 2, "fsdp": 4, "tensor": 1}
    assert results["tiny_fsdp_tp_accum"]["rules"] == "fsdp_tp"
    assert results["sft_llada"]["batch_keys"] == ["prompt_lengths", "tokens"]
    assert results["tiny_fsdp"]["batch_keys"] == ["positions", "segment_ids", "tokens"]
