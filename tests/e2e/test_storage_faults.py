"""Object-storage faults, injected by a proxy in front of the GCS emulator
(`illada_jax/tools/fault_proxy.py`): `illada train` on a gs:// run directory keeps going through
429/503 answers, and a bucket the host may not use is one line at start-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from _cli import FAST_TRAIN

from illada_jax.tools import fault_proxy


@pytest.fixture(scope="module")
def proxied(gcs_emulator):
    """(the environment pointing every client at the proxy, the proxy's URL)."""
    proxy, url = fault_proxy.start(gcs_emulator["STORAGE_EMULATOR_HOST"], seed=0)
    env = {**gcs_emulator, "STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url}
    try:
        yield env, url
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)


def _train(env, workdir, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "illada_jax.cli", "train", *FAST_TRAIN,
         "--config=set:checkpoint.every=2", "--config=set:train.log_every=1", *extra,
         f"--workdir={workdir}"],
        capture_output=True, text=True, timeout=600, env={**os.environ, **env},
    )  # fmt: skip


def _losses(env, workdir) -> dict[int, float]:
    from etils import epath

    os.environ.update(env)  # epath's gcsfs in this process reads the proxy too
    text = epath.Path(f"{workdir}/metrics.jsonl").read_text()
    records = [json.loads(line) for line in text.splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r and "event" not in r}


def test_a_bucket_this_host_may_not_use_is_one_line(proxied):
    env, url = proxied
    bucket = env["BUCKET"]
    fault_proxy.configure(url, deny_bucket=bucket)
    try:
        result = _train(env, f"gs://{bucket}/runs/denied")
    finally:
        fault_proxy.configure(url, deny_bucket="")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"illada train: error: gs://{bucket}: permission denied (HTTP 403)")
    assert f"gcloud storage ls gs://{bucket}" in line


def test_training_keeps_going_through_429_and_503_answers(proxied):
    """A run whose checkpoints and metrics go through the proxy while 5% of its requests are
    answered 429 or 503 logs the same losses as a run without faults."""
    env, url = proxied
    bucket = env["BUCKET"]
    clean = _train(env, f"gs://{bucket}/runs/clean")
    assert clean.returncode == 0, clean.stderr[-3000:]
    before = fault_proxy.counters(url)
    fault_proxy.configure(url, error_rate=0.05, statuses=[429, 503])
    try:
        faulty = _train(env, f"gs://{bucket}/runs/faulty")
    finally:
        fault_proxy.configure(url, error_rate=0.0)
    after = fault_proxy.counters(url)
    assert faulty.returncode == 0, faulty.stderr[-3000:]
    assert after["errors"] - before["errors"] > 0  # faults were injected and survived
    clean_losses = _losses(env, f"gs://{bucket}/runs/clean")
    assert sorted(clean_losses) == list(range(1, 7))
    assert _losses(env, f"gs://{bucket}/runs/faulty") == clean_losses


def _train_records(env, workdir) -> list[dict]:
    from etils import epath

    os.environ.update(env)
    text = epath.Path(f"{workdir}/metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_a_failed_save_keeps_the_restore_point_and_a_restart_resumes_bit_exact(proxied):
    """Every write of checkpoints 4 and 6 fails: the run reports checkpoint 4 and goes on, the
    final save (6) is an error naming the restore point (2); nothing half-written is listed, and
    the same command, once storage answers, resumes from 2 and logs the clean run's losses."""
    env, url = proxied
    bucket = env["BUCKET"]
    clean = _train(env, f"gs://{bucket}/runs/clean-restart")
    assert clean.returncode == 0, clean.stderr[-3000:]
    workdir = f"gs://{bucket}/runs/failed-saves"
    bounds = ["--config=set:checkpoint.save_attempts=1",
              "--config=set:checkpoint.request_retries=1"]  # fmt: skip
    fault_proxy.configure(url, fail_pattern=r"runs/failed-saves/checkpoints/[46]\b")
    try:
        failed = _train(env, workdir, *bounds)
    finally:
        fault_proxy.configure(url, fail_pattern="")
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert "checkpoint failed: checkpoint 4 in" in failed.stdout
    assert "the restore point is still checkpoint 2" in failed.stdout
    (line,) = [x for x in failed.stderr.splitlines() if x.startswith("illada train: error:")]
    assert "checkpoint 6 in" in line and "the restore point is still checkpoint 2" in line
    events = [r for r in _train_records(env, workdir) if r.get("event") == "checkpoint_failed"]
    assert [(e["step"], e["checkpoint"]) for e in events] == [(4, 4)]

    from illada_jax.ckpt.manager import RunCheckpoints
    from illada_jax.config.schema import CheckpointConfig

    assert RunCheckpoints(workdir, CheckpointConfig(), create=False).steps() == [2]

    resumed = _train(env, workdir, *bounds)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint 2 in" in resumed.stdout, resumed.stdout[-2000:]
    losses = {}
    for record in _train_records(env, workdir):  # the resumed run's records come last
        if "loss" in record and "event" not in record:
            losses[record["step"]] = record["loss"]
    assert losses == _losses(env, f"gs://{bucket}/runs/clean-restart")


def test_a_storage_outage_during_training_is_ridden_out(proxied):
    """Data, held-out data, metrics and checkpoints on gs://; once the run has logged its first
    step every request fails for 6 s (all of them: 503). The run retries through it and logs
    exactly the losses and held-out bounds of a run without the outage."""
    env, url = proxied
    bucket = env["BUCKET"]
    data = f"gs://{bucket}/data/heldout-sp1k"
    prepared = subprocess.run(
        [sys.executable, "-m", "illada_jax.cli", "prepare", "--format", "embedded", "--input",
         "heldout", "--tokenizer", "shipped:sp1k", "--output", data, "--quiet"],
        capture_output=True, text=True, timeout=600, env={**os.environ, **env},
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    on_bucket = [f"--config=set:data.datasets=('{data}',)", f"--config=set:train.eval_dataset={data}",
                 "--config=set:train.eval_every=3", "--config=set:train.eval_batches=2"]  # fmt: skip
    clean = _train(env, f"gs://{bucket}/runs/outage-clean", *on_bucket)
    assert clean.returncode == 0, clean.stderr[-3000:]

    command = [sys.executable, "-m", "illada_jax.cli", "train", *FAST_TRAIN,
               "--config=set:checkpoint.every=2", "--config=set:train.log_every=1", *on_bucket,
               f"--workdir=gs://{bucket}/runs/outage"]  # fmt: skip
    before = fault_proxy.counters(url)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, **env}) as run:  # fmt: skip
        for line in run.stdout:
            if line.startswith("step 1/"):
                fault_proxy.configure(url, outage_seconds=6)
                break
        rest, errors = run.communicate(timeout=600)
    assert run.returncode == 0, errors[-3000:]
    assert fault_proxy.counters(url)["outage"] > before["outage"]  # requests met the outage

    def logged(workdir):
        return [{k: r[k] for k in ("step", "loss", "eval_nll_bound") if k in r}
                for r in _train_records(env, workdir) if "event" not in r and "step" in r]  # fmt: skip

    assert logged(f"gs://{bucket}/runs/outage") == logged(f"gs://{bucket}/runs/outage-clean")
