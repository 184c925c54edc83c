"""The runner's hooks, each on its own: cadence, what it records, and how it changes the loop.

The hooks run against a `LoopState` whose run, writer, progress and checkpoints are small fakes
defined here, so each behaviour is checked without training anything.
"""

from __future__ import annotations

import collections
import os
import signal
import types

import numpy as np
import pytest

from illada_jax.config.schema import CheckpointConfig, Experiment, TrainConfig
from illada_jax.train import hooks, recovery
from illada_jax.train.hooks import LoopState, MetricWindow
from illada_jax.train.loop import advance

pytestmark = pytest.mark.core


class FakeWriter:
    enabled = True

    def __init__(self):
        self.records = []

    def write_metrics(self, step, record):
        self.records.append(dict(record))


class FakeProgress:
    def __init__(self):
        self.lines, self.logged, self.position = [], [], 0

    def write(self, line):
        self.lines.append(line)

    def log(self, record):
        self.logged.append(record)

    def advance(self, step):
        self.position = step


class FakeCheckpoints:
    """Remembers saves; `restore_latest` returns the newest saved step before `before`."""

    def __init__(self, preempt_at=None):
        self.saved: dict[int, tuple] = {}
        self.forced: list[int] = []
        self.preempt_at = preempt_at
        self.waits = 0

    def save(self, step, state, data, meta, *, force=False, streams=None):
        assert streams is None  # prepared data only: no on-the-fly position
        self.saved[step] = (state, data, meta)
        if force:
            self.forced.append(step)

    def restore_latest(self, abstract, *, before=None):
        steps = [s for s in self.saved if before is None or s < before]
        if not steps:
            return None
        step = max(steps)
        state, data, meta = self.saved[step]
        return step, state, data, meta

    def reached_preemption(self, step):
        return step == self.preempt_at

    def settle(self):  # RunCheckpoints: raises for a failed background write (none here)
        pass

    def wait(self):
        self.waits += 1


class FakePipeline:
    def __init__(self):
        self.started_at = []

    def iterator(self, start, state=None):
        assert state is None
        self.started_at.append(start)
        return iter(())

    def epochs(self, step):
        return [step / 1000]


def make_loop(**train) -> LoopState:
    experiment = Experiment(train=TrainConfig(**train))
    run = types.SimpleNamespace(
        experiment=experiment, schedule=lambda step: 1e-3, abstract_state=None
    )
    return LoopState(
        run=run,
        workdir=None,
        state={"params": "p0"},
        step=0,
        next_data_step=0,
        lr_scale=1.0,
        recent_losses=collections.deque(maxlen=experiment.train.spike_window),
        pipeline=FakePipeline(),
        writer=FakeWriter(),
        progress=FakeProgress(),
    )


def healthy(ce: float, applied: int = 1) -> dict:
    return {"loss": ce * 1.1, "masked_ce": ce, "grad_norm": 1.0, "applied": applied}


# ------------------------------------------------------------------------------ cadence


def test_hooks_run_on_their_cadence():
    loop = make_loop(steps=10, log_every=4)
    hook = hooks.Hook()
    hook.every = 3
    due = []
    for step in range(1, 11):
        loop.step = step
        due.append(hook.due(loop))
    assert due == [s % 3 == 0 for s in range(1, 11)]
    hook.every = 0
    assert not hook.due(loop)


def test_checkpoints_every_n_steps_but_not_the_last_then_forced_at_the_end():
    loop = make_loop(steps=8)
    checkpoints = FakeCheckpoints()
    experiment = Experiment(train=TrainConfig(steps=8), checkpoint=CheckpointConfig(every=4))
    run = types.SimpleNamespace(experiment=experiment)
    hook = hooks.Checkpointing(run, checkpoints)
    loop.recent_losses.extend([2.0, 3.0])
    for step in range(1, 9):
        loop.step, loop.next_data_step = step, step + 5
        if hook.due(loop):
            hook.on_step(loop)
    hook.on_end(loop)
    assert sorted(checkpoints.saved) == [4, 8] and checkpoints.forced == [8]
    _, data, meta = checkpoints.saved[8]
    assert data == {"next_data_step": 13}
    assert meta["recent_losses"] == [2.0, 3.0] and meta["lr_scale"] == 1.0
    assert meta["unresolved_metrics"] == []
    assert meta["config"]["train"]["steps"] == 8


def test_a_checkpoint_carries_the_metrics_not_yet_read():
    """Saved at step 6 with step 6's metrics still on the device: they go into the checkpoint
    as floats (and stay queued), so a resumed run reads them at step 7 like this one."""
    loop = make_loop(steps=8)
    hook = hooks.Checkpointing(types.SimpleNamespace(experiment=loop.run.experiment),
                               checkpoints := FakeCheckpoints())  # fmt: skip
    loop.step = 6
    loop.unresolved.append((6, {"masked_ce": np.float32(2.5), "applied": np.int32(1)}))
    hook.save(loop)
    _, _, meta = checkpoints.saved[6]
    assert meta["unresolved_metrics"] == [[6, {"masked_ce": 2.5, "applied": 1.0}]]
    assert list(loop.unresolved) == [(6, {"masked_ce": 2.5, "applied": 1.0})]


def test_metrics_log_averages_healthy_steps_and_logs_the_last_step():
    loop = make_loop(steps=7, log_every=3, health_policy="skip")
    log = hooks.MetricsLog.__new__(hooks.MetricsLog)  # skip measuring the CPU's peak FLOP/s
    log.every, log.tokens_per_step, log.flops_per_token, log.peak = 3, 100, 1.0, None
    loop.window = MetricWindow()
    for step, metrics in enumerate([healthy(4.0), healthy(99.0, applied=0), healthy(2.0)], 1):
        loop.step, loop.metrics = step, metrics
        loop.window.add(metrics)
    assert log.due(loop)
    log.on_step(loop)
    record = loop.writer.records[-1]
    assert record["step"] == 3
    assert record["masked_ce"] == pytest.approx(3.0)  # (4 + 2) / 2: the unhealthy step is out
    assert record["applied"] == 1 and record["lr"] == pytest.approx(1e-3)
    assert loop.window.steps == 0  # a fresh window
    loop.step = 7
    assert log.due(loop) and not hooks.Hook.due(log, loop)  # 7 is not a multiple of 3


# ------------------------------------------------------------------------------ loss health


def test_loss_ceiling_is_mean_plus_sigma_std_once_the_window_is_half_full():
    loop = make_loop(spike_window=16, spike_sigma=3.0)
    health = recovery.LossHealth(loop.run, FakeCheckpoints())
    losses = [2.0, 2.5, 3.0, 2.2, 2.8, 2.4, 2.6, 2.1]
    for i, ce in enumerate(losses):
        health.on_metrics(loop, i + 1, healthy(ce))
        if i < 7:
            assert loop.loss_ceiling == float("inf")  # fewer than max(8, 16 / 2) steps
    values = np.asarray(losses, np.float64)
    assert loop.loss_ceiling == pytest.approx(values.mean() + 3.0 * values.std())


def test_skip_policy_records_the_event_and_keeps_going():
    loop = make_loop(health_policy="skip")
    health = recovery.LossHealth(loop.run, FakeCheckpoints())
    loop.step = 6  # metrics reach the hook one step late
    health.on_metrics(loop, 5, healthy(float("nan"), applied=0))
    event = loop.writer.records[-1]
    assert event["event"] == "unhealthy_loss" and event["policy"] == "skip" and event["step"] == 5
    assert loop.step == 6 and loop.lr_scale == 1.0
    assert list(loop.recent_losses) == []  # unhealthy losses never enter the window


def test_rollback_restores_the_last_checkpoint_skips_batches_and_lowers_the_rate():
    loop = make_loop(health_policy="rollback", rollback_lr_factor=0.5)
    checkpoints = FakeCheckpoints()
    checkpoints.save(4, {"params": "good"}, {"next_data_step": 4}, {})
    checkpoints.save(8, {"params": "later"}, {"next_data_step": 8}, {})
    health = recovery.LossHealth(loop.run, checkpoints)
    loop.step, loop.next_data_step = 8, 8  # step 7's metrics arrive after step 8 ran
    health.on_metrics(loop, 7, healthy(1e9, applied=0))
    assert loop.step == 4 and loop.state == {"params": "good"}  # the newest before step 7
    assert loop.lr_scale == 0.5
    assert loop.pipeline.started_at == [8]  # data moves on: batches 4..7 are skipped
    event = loop.writer.records[-1]
    assert event["step"] == 7
    assert (event["restored_step"], event["skipped_batches"], event["lr_scale"]) == (4, 4, 0.5)
    assert checkpoints.waits == 1  # an in-flight save is waited for first


def test_too_many_rollbacks_stop_the_run():
    loop = make_loop(health_policy="rollback")
    checkpoints = FakeCheckpoints()
    checkpoints.save(1, {"params": "good"}, {}, {})
    health = recovery.LossHealth(loop.run, checkpoints)
    with pytest.raises(FloatingPointError, match="diverged 11 times"):
        for _ in range(recovery.MAX_ROLLBACKS + 1):
            loop.step = 3
            health.on_metrics(loop, 3, healthy(float("inf"), applied=0))


def _stepping_run(loop, losses: list[float], fetched: list[int]):
    """A run whose train step returns step k's metrics as a lazy object that records when the
    loop fetches it (stands in for device arrays: fetching is the host sync)."""

    class Lazy:
        def __init__(self, step, value):
            self.step, self.value = step, value

        def __array__(self, dtype=None, copy=None):
            fetched.append(self.step)
            return np.asarray(self.value, dtype)

    def train_step(state, batch, key, controls):
        ce = losses[key]
        applied = int(np.isfinite(ce))
        return state, {k: Lazy(key + 1, v) for k, v in healthy(ce, applied).items()}

    return types.SimpleNamespace(
        experiment=loop.run.experiment,
        controls=lambda **kw: kw,
        global_batch=lambda local: local,
        step_key=lambda step: step,
        train_step=train_step,
        train_step_at=lambda step: train_step,  # no block-size schedule: one program
        block_size_at=lambda step: None,
        abstract_state=None,
        schedule=lambda s: 1e-3,
    )


def test_metrics_are_fetched_one_step_late_unless_a_hook_needs_them_now():
    loop = make_loop(steps=10)
    fetched, seen = [], []
    loop.run = _stepping_run(loop, [2.0] * 10, fetched)
    loop.batches = iter([{"tokens": np.zeros((1, 1))}] * 10)

    class Watch(hooks.Hook):
        def needs_metrics(self, loop):
            return loop.step == 4  # e.g. a logging step

        def on_metrics(self, loop, step, metrics):
            seen.append((loop.step, step))

    for _ in range(5):
        advance(loop, [Watch()])
    # Step 1 is fetched while step 2 is in flight, ...; at step 4 both 3 and 4 are fetched.
    assert seen == [(2, 1), (3, 2), (4, 3), (4, 4)]
    assert set(fetched) == {1, 2, 3, 4} and [s for s, _ in loop.unresolved] == [5]


def test_a_rollback_skips_the_rest_of_the_hooks_of_that_step():
    """Step 4 is unhealthy; its metrics arrive after step 5 ran: the run rolls back to the
    checkpoint before step 4, step 5's hooks do not run and its metrics are dropped."""
    loop = make_loop(steps=10, health_policy="rollback")
    checkpoints = FakeCheckpoints()
    checkpoints.save(2, {"params": "good"}, {}, {})
    loop.batches = iter([{"tokens": np.zeros((1, 1))}] * 2)
    loop.next_data_step = 3
    loop.step = 3
    calls = []

    class Spy(hooks.Hook):
        every = 1

        def on_step(self, loop):
            calls.append(loop.step)

    loop.run = _stepping_run(loop, {3: float("nan"), 4: 2.0}, [])
    health = recovery.LossHealth(loop.run, checkpoints)
    advance(loop, [health, Spy()])
    assert loop.step == 4 and calls == [4]  # step 4's metrics are not read yet
    advance(loop, [health, Spy()])
    assert loop.step == 2 and calls == [4]  # rolled back to 2; the spy did not run for step 5
    assert loop.next_data_step == 5 and loop.pipeline.started_at == [5]
    assert not loop.unresolved  # step 5's metrics belong to a discarded step
    assert loop.writer.records[-1]["step"] == 4


# ------------------------------------------------------------------------------ preemption


def test_sigterm_saves_the_current_step_and_stops_the_loop():
    loop = make_loop(steps=100)
    checkpoints = FakeCheckpoints()
    run = types.SimpleNamespace(experiment=loop.run.experiment)
    preemption = recovery.Preemption(hooks.Checkpointing(run, checkpoints))
    previous = signal.getsignal(signal.SIGTERM)
    preemption.on_start(loop)
    try:
        loop.step = 3
        preemption.on_step(loop)
        assert not loop.stop  # nothing asked yet
        os.kill(os.getpid(), signal.SIGTERM)
        loop.step = 4
        preemption.on_step(loop)
    finally:
        preemption.close(loop)
    assert loop.stop and checkpoints.forced == [4]
    assert loop.history[-1] == {"step": 4, "preempted": True}
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is given back


def test_the_pod_preemption_notice_also_stops_the_loop():
    loop = make_loop(steps=100)
    checkpoints = FakeCheckpoints(preempt_at=6)
    run = types.SimpleNamespace(experiment=loop.run.experiment)
    preemption = recovery.Preemption(hooks.Checkpointing(run, checkpoints))
    loop.step = 6
    preemption.on_step(loop)
    assert loop.stop and checkpoints.forced == [6]


def test_the_unigram_baseline_is_logged_at_a_fresh_start_only(monkeypatch):
    loop = make_loop(steps=10)
    evaluation = hooks.HeldOutEval.__new__(hooks.HeldOutEval)
    evaluation.every = 0  # no held-out data to check in this fake run
    monkeypatch.setattr(hooks, "_unigram_baseline", lambda run: 5.5)
    loop.step = 4  # resumed
    evaluation.on_start(loop)
    assert loop.writer.records == []
    loop.step = 0
    evaluation.on_start(loop)
    assert loop.writer.records == [{"step": 0, "unigram_baseline_nats": 5.5}]
    assert "unigram baseline 5.5000 nats/token" in loop.progress.lines[-1]
