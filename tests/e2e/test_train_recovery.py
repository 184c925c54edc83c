"""`illada train` survives what happens to real runs: kill -9, preemption (SIGTERM), a damaged
latest checkpoint, NaN losses (skip and rollback). Each runs the CLI as a user would.

An uninterrupted 12-step run (module fixture) is the reference: interrupted and resumed runs must
log bit-identical losses, since everything that decides a step is restored from the checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from _cli import FAST_TRAIN

from illada_jax.config import flags

STEPS = 12
# FAST_TRAIN, then: a real first update, a loss record and a checkpoint every other step, and a
# constant learning rate (runs resumed with more steps keep the same rates for the old steps).
RUN = [
    *FAST_TRAIN,
    "--config=set:optim.warmup_steps=1",
    "--config=set:optim.schedule=constant",
    "--config=set:optim.final_learning_rate=0.0",
    "--config=set:train.log_every=1",
    "--config=set:checkpoint.every=2",
    f"--config=set:train.steps={STEPS}",
]
# -O0 code generation: the same programs, compiled about twice as fast.
ENV = {
    **os.environ,
    "XLA_FLAGS": ("--xla_backend_optimization_level=0 " + os.environ.get("XLA_FLAGS", "")).strip(),
}


def _command(workdir: pathlib.Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "illada_jax.cli", "train", *RUN, *extra, f"--workdir={workdir}"]


def _train(workdir: pathlib.Path, *extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        _command(workdir, *extra), capture_output=True, text=True, timeout=300, env=ENV
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _start(workdir: pathlib.Path, *extra: str) -> tuple[subprocess.Popen, pathlib.Path]:
    """Starts `illada train` in the background; stdout+stderr go to a file (no pipe to fill)."""
    log = workdir.parent / f"{workdir.name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            _command(workdir, *extra), stdout=out, stderr=subprocess.STDOUT, env=ENV
        )
    return proc, log


def _wait_for(path: pathlib.Path, proc: subprocess.Popen, log: pathlib.Path, timeout=240.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(
                f"train exited ({proc.returncode}) before {path}:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {path} after {timeout}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)


def _records(workdir: pathlib.Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _losses(workdir: pathlib.Path) -> dict[int, float]:
    """step -> loss of the last step record (a resumed run appends to metrics.jsonl)."""
    return {r["step"]: r["loss"] for r in _records(workdir) if "loss" in r and "event" not in r}


def _resumed_from(stdout: str) -> int:
    match = re.search(r"resumed from checkpoint (\d+)", stdout)
    assert match, stdout
    return int(match.group(1))


def _checkpoint_steps(workdir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pathlib.Path:
    """An uninterrupted run: checkpoints 8, 10, 12 (keep=3), a loss for every step."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    _train(workdir)
    assert sorted(_losses(workdir)) == list(range(1, STEPS + 1))
    assert _checkpoint_steps(workdir) == [8, 10, 12]
    return workdir


def test_kill_9_then_restart_repeats_the_uninterrupted_losses(tmp_path, reference):
    workdir = tmp_path / "run"
    proc, log = _start(workdir)
    _wait_for(workdir / "checkpoints" / "6", proc, log)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    killed_at = max(_losses(workdir))
    assert killed_at < STEPS

    result = _train(workdir)
    resumed = _resumed_from(result.stdout)
    assert 6 <= resumed <= killed_at
    losses = _losses(workdir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    expected = _losses(reference)
    # Bit-identical, not approximately equal: data position, RNG and state are all restored.
    after = range(resumed + 1, STEPS + 1)
    assert [losses[s] for s in after] == [expected[s] for s in after]
    assert losses == expected
    assert STEPS in _checkpoint_steps(workdir)


def test_sigterm_saves_the_current_step_exits_0_and_resumes(tmp_path, reference):
    workdir = tmp_path / "run"
    proc, log = _start(workdir)
    _wait_for(workdir / "checkpoints" / "2", proc, log)
    assert proc.poll() is None, "the run ended before it could be preempted"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    output = log.read_text()
    match = re.search(r"preempted at step (\d+)", output)
    assert match, output[-3000:]
    preempted = int(match.group(1))
    assert 2 < preempted < STEPS
    assert preempted in _checkpoint_steps(workdir)
    assert max(_losses(workdir)) == preempted

    result = _train(workdir)
    assert _resumed_from(result.stdout) == preempted
    assert "done: loss" in result.stdout
    assert _losses(workdir) == _losses(reference)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, reference):
    """The reference run with its latest checkpoint (12) damaged, resumed for 2 more steps."""
    workdir = tmp_path_factory.mktemp("damaged") / "run"
    shutil.copytree(reference, workdir)
    state = workdir / "checkpoints" / "12" / "state"
    # The tensorstore (OCDBT) data files; the metadata stays readable, so only reading the arrays
    # fails, as after a full disk or a dying host.
    files = [p for p in state.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for path in files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = len(_records(workdir))
    result = _train(workdir, f"--config=set:train.steps={STEPS + 2}")
    return workdir, result, _records(workdir)[before:]


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(damaged, reference):
    workdir, result, appended = damaged
    assert "damaged" in result.stderr
    assert "checkpoint 12" in result.stderr
    assert _resumed_from(result.stdout) == 10
    assert [r["step"] for r in appended if "loss" in r] == [11, 12, 13, 14]
    losses, expected = _losses(workdir), _losses(reference)
    assert [losses[11], losses[12]] == [expected[11], expected[12]]
    assert all(math.isfinite(losses[s]) for s in (13, 14))
    assert STEPS + 2 in _checkpoint_steps(workdir)


def test_the_damaged_checkpoint_is_kept_not_deleted_or_overwritten(damaged, reference):
    workdir, _, _ = damaged
    state, original = (root / "checkpoints" / "12" / "state" for root in (workdir, reference))
    files = [p for p in state.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files and all(
        p.stat().st_size == (original / p.relative_to(state)).stat().st_size // 2 for p in files
    ), "checkpoint 12 was rewritten"
    assert _checkpoint_steps(workdir) == [10, 12, 14]  # keep=3 counts it; retention keeps it


def _tree(workdir: pathlib.Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(workdir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in (workdir / "checkpoints").rglob("*") if p.is_file()}  # fmt: skip


def test_an_incompatible_checkpoint_is_refused_and_left_untouched(tmp_path, reference):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    before = _tree(workdir)
    result = subprocess.run(
        _command(workdir, "--config=set:model.d_model=64", f"--config=set:train.steps={STEPS + 2}"),
        capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip
    assert result.returncode != 0
    message = result.stderr
    assert f"checkpoint 12 in {workdir}/checkpoints does not fit this run" in message
    assert "model.d_model is 128 in the checkpoint, 64 here" in message
    assert "arrays differ in shape" in message
    assert "new --workdir" in message and "checkpoint.init_from=" in message
    assert "Traceback" not in message
    assert _tree(workdir) == before  # every step is still there, unchanged


def _unhealthy(workdir: pathlib.Path) -> list[dict]:
    return [r for r in _records(workdir) if r.get("event") == "unhealthy_loss"]


def test_nan_with_skip_policy_drops_one_update_and_continues(tmp_path, reference):
    workdir = tmp_path / "run"
    _train(
        workdir,
        "--config=set:train.steps=6",
        "--config=set:train.inject_nan_step=3",
        "--config=set:train.health_policy=skip",
    )
    # The 4th update (state step 3 -> 4) is the bad one; it is logged at step 4.
    events = _unhealthy(workdir)
    assert [(e["step"], e["policy"]) for e in events] == [(4, "skip")]
    assert math.isnan(events[0]["grad_norm"])
    steps = [r for r in _records(workdir) if "applied" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in steps if r["applied"] == 0] == [4]
    losses = _losses(workdir)
    assert all(math.isfinite(losses[s]) for s in (5, 6))
    # Before the bad step the run is the reference run.
    expected = _losses(reference)
    assert [losses[s] for s in (1, 2, 3)] == [expected[s] for s in (1, 2, 3)]


def _run_rollback(workdir: pathlib.Path, *extra: str) -> tuple[int, list[dict]]:
    """Runs a rollback run; stops it (SIGTERM: it saves and exits) once it rolls back twice."""
    proc, log = _start(
        workdir,
        "--config=set:train.steps=8",
        "--config=set:train.inject_nan_step=3",
        "--config=set:train.health_policy=rollback",
        *extra,
    )
    deadline = time.monotonic() + 240
    while proc.poll() is None:
        if len(_unhealthy(workdir)) >= 3 or time.monotonic() > deadline:
            proc.send_signal(signal.SIGTERM)  # a rollback loop: it would never end
            proc.wait(timeout=120)
            break
        time.sleep(0.1)
    assert proc.returncode == 0, log.read_text()[-3000:]
    return proc.returncode, _records(workdir)


def _assert_one_rollback_then_finish(records: list[dict]) -> None:
    events = [r for r in records if r.get("event") == "unhealthy_loss"]
    assert len(events) == 1, events
    assert events[0]["policy"] == "rollback"
    assert events[0].get("restored_step") == 2, events[0]
    assert events[0]["lr_scale"] == 0.5
    assert not any(r.get("preempted") for r in records)
    last = [r for r in records if "loss" in r and "event" not in r][-1]
    assert last["step"] == 8 and math.isfinite(last["loss"])
    # After the rollback the learning rate is halved (constant schedule).
    peak = flags.experiment_from_flags(["config:tiny"]).optim.learning_rate
    assert last["lr"] == pytest.approx(0.5 * peak)


def test_nan_with_rollback_policy_restores_the_last_checkpoint(tmp_path):
    _, records = _run_rollback(tmp_path / "run")
    _assert_one_rollback_then_finish(records)


def test_nan_with_rollback_policy_and_synchronous_saves_finishes(tmp_path):
    _, records = _run_rollback(tmp_path / "run", "--config=set:checkpoint.async_save=False")
    _assert_one_rollback_then_finish(records)


def test_an_on_the_fly_run_killed_with_9_resumes_its_streams_exactly(tmp_path):
    """Raw jsonl tokenised while training (2 tokeniser workers): the position in the raw files
    is saved with every checkpoint, so the resumed run logs the uninterrupted run's losses."""
    from illada_jax.data.sources.corpus import embedded_documents

    raw = tmp_path / "raw"
    raw.mkdir()
    docs = [d.text[:4000] for d, _ in zip(embedded_documents("train"), range(30))]
    for part in range(3):
        lines = [json.dumps({"text": text}) for text in docs[part::3]]
        (raw / f"part-{part}.jsonl").write_text("\n".join(lines) + "\n")
    dataset = f"--config=set:data.datasets=('raw:jsonl:{raw}/*.jsonl',)"
    reference = tmp_path / "reference"
    _train(reference, dataset)
    assert "data_streams" in {p.name for p in (reference / "checkpoints" / "12").iterdir()}

    workdir = tmp_path / "run"
    proc, log = _start(workdir, dataset)
    _wait_for(workdir / "checkpoints" / "6", proc, log)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    result = _train(workdir, dataset)
    resumed = _resumed_from(result.stdout)
    assert 6 <= resumed < STEPS
    assert "start over" not in result.stderr  # the saved stream position was used
    assert _losses(workdir) == _losses(reference)


TIMINGS = {"tokens_per_s", "mfu"}


def _logged(workdir: pathlib.Path) -> dict[int, dict]:
    """step -> the last step record, without the timings (a resumed run appends its own)."""
    return {
        r["step"]: {k: v for k, v in r.items() if k not in TIMINGS}
        for r in _records(workdir)
        if "loss" in r and "event" not in r
    }


def test_kill_9_between_log_lines_repeats_every_logged_value(tmp_path):
    """Checkpoints every 3 steps, a log line every 4: the run resumes (from 6 or 9) in the middle
    of a log window. The window's sums travel with the checkpoint, so the next line averages
    the same steps as the uninterrupted run's: every logged key but the timings is equal."""
    windowed = ["--config=set:train.log_every=4", "--config=set:checkpoint.every=3"]
    reference = tmp_path / "reference"
    _train(reference, *windowed)
    assert sorted(_logged(reference)) == [4, 8, 12]

    workdir = tmp_path / "run"
    proc, log = _start(workdir, *windowed)
    _wait_for(workdir / "checkpoints" / "6", proc, log)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    result = _train(workdir, *windowed)
    resumed = _resumed_from(result.stdout)
    assert resumed in (6, 9)  # neither is a multiple of 4: the window was open
    expected, logged = _logged(reference), _logged(workdir)
    assert logged == expected
    assert set(logged[12]) >= {"loss", "masked_ce", "lr", "applied"}
