"""A restarted `illada train` loads its compiled steps from the run's persistent compilation
cache (`train.compilation_cache="auto"`: WORKDIR/compile_cache), on a local disk and on gs://
(the GCS emulator), and compiles them again with `train.compilation_cache=off`.

The restart is the same command run again (a supervisor restarting a finished or preempted job):
it resumes from the last checkpoint and compiles before its first step. JAX logs its cache hits
(`JAX_DEBUG_LOG_MODULES=jax._src.compiler`); the restarted run's program fingerprint is the one
the first run compiled. Restart times with and without the cache: `bench/compile.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

TRAIN = [
    "--config=config:tiny",
    "--config=set:model.n_layers=2",
    "--config=set:train.steps=2",
    "--config=set:optim.warmup_steps=1",
    "--config=set:train.sample_length=0",
    "--config=set:train.eval_every=0",
]
HIT = "Persistent compilation cache hit for 'jit_train_step'"


def _train(workdir: str, env: dict, *extra: str) -> str:
    env = {**env, "JAX_DEBUG_LOG_MODULES": "jax._src.compiler", "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    done = subprocess.run(
        [sys.executable, "-m", "illada_jax.cli", "train", *TRAIN, *extra, f"--workdir={workdir}"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stderr


def _compiled_records(read_text) -> list[dict]:
    records = [json.loads(line) for line in read_text().splitlines()]
    return [r for r in records if r.get("event") == "compiled"]


def test_a_restart_loads_the_compiled_step_from_the_run_directory(tmp_path):
    workdir = tmp_path / "run"
    first = _train(str(workdir), dict(os.environ))
    assert HIT not in first
    assert any(p.name.startswith("jit_train_step-") for p in (workdir / "compile_cache").iterdir())
    second = _train(str(workdir), dict(os.environ))
    assert HIT in second
    cold, warm = _compiled_records((workdir / "metrics.jsonl").read_text)
    assert cold["train_step_program"] == warm["train_step_program"]
    assert (cold["step"], warm["step"]) == (0, 2)  # the restart resumed, then compiled


def test_compilation_cache_off_compiles_again(tmp_path):
    workdir = tmp_path / "run"
    off = "--config=set:train.compilation_cache=off"
    _train(str(workdir), dict(os.environ), off)
    assert HIT not in _train(str(workdir), dict(os.environ), off)
    assert not (workdir / "compile_cache").exists()


def test_the_cache_lives_in_a_gs_run_directory(gcs_emulator):
    from etils import epath

    env = {**os.environ, **gcs_emulator}
    workdir = f"gs://{gcs_emulator['BUCKET']}/runs/cached"
    _train(workdir, env)
    assert HIT in _train(workdir, env)
    os.environ.update(gcs_emulator)  # for epath in this process (read-only use below)
    try:
        listing = [p.name for p in epath.Path(f"{workdir}/compile_cache").iterdir()]
        metrics = epath.Path(f"{workdir}/metrics.jsonl").read_text
        assert any(name.startswith("jit_train_step-") for name in listing), listing
        cold, warm = _compiled_records(metrics)
    finally:
        for key in gcs_emulator:
            os.environ.pop(key, None)
    assert cold["train_step_program"] == warm["train_step_program"]


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_cache_setting_is_refused_by_name(value):
    from illada_jax.config import flags
    from illada_jax.config.schema import ConfigError

    with pytest.raises(ConfigError, match="train.compilation_cache"):
        flags.experiment_from_flags(["config:tiny", f"set:train.compilation_cache={value!r}"])
