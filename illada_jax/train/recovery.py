"""Hooks that keep a run alive: loss health (NaN/Inf and spikes; skip or roll back) and preemption.

`LossHealth` (every step): the train step itself refuses an unhealthy update (loss or gradient
norm not finite, or the masked cross-entropy above `loop.loss_ceiling`) and reports `applied=0`
(`train/step.py`). The hook keeps the rolling window of healthy steps' masked CE and sets the next
step's ceiling to its mean + `train.spike_sigma`·std (the unweighted masked CE: the 1/t-weighted
loss is heavy-tailed by design). It sees each step's metrics when the loop fetches them — one step
late, so the host never waits for the step it just dispatched (`train/loop.py`) — so a step's
ceiling comes from the steps up to two before it (one before, after a logging step). On an
unhealthy step it logs an `unhealthy_loss` event and, with `train.health_policy=rollback`,
restores the newest checkpoint before the step, skips the batches from there to the bad one (the
data position keeps moving forward) and multiplies the learning rate by `train.rollback_lr_factor`. More than `MAX_ROLLBACKS` rollbacks in one call stop the run.

`Preemption` (every step): SIGTERM (or a pod's preemption notice) makes the run save the current
step and stop; the CLI then exits 0 and the same command resumes. In a multi-process run every
process must stop at the same step (the save is collective), so the hook leaves SIGTERM to JAX's
preemption notifier, which `jax.distributed` installs in every process: a SIGTERM to any one
process (or the TPU maintenance notice) starts JAX's agreement protocol, and
`reached_preemption_sync_point` (through orbax's `reached_preemption`, called every step) turns
True on all processes at the same step. A single process has no notifier: the hook's own SIGTERM
handler sets a flag checked at the next step.
"""

from __future__ import annotations

import signal

import numpy as np

from illada_jax.train.hooks import Checkpointing, Hook, LoopState

MAX_ROLLBACKS = 10  # per call of train(): beyond this the run is diverging, not unlucky


class LossHealth(Hook):
    """Acts on every step's metrics as they reach the host (`on_metrics`, usually one step
    late: the ceiling a step runs under then comes from the steps two and more before it)."""

    def __init__(self, run, checkpoints):
        tcfg = run.experiment.train
        self.policy = tcfg.health_policy
        self.sigma = tcfg.spike_sigma
        self.lr_factor = tcfg.rollback_lr_factor
        self.checkpoints = checkpoints
        self.rollbacks = 0

    def ceiling(self, losses) -> float:
        """Mean + sigma·std of the window, +inf until it is half full (or the policy is none)."""
        if self.policy == "none" or len(losses) < max(8, losses.maxlen // 2):
            return float("inf")
        values = np.asarray(losses)
        return float(values.mean() + self.sigma * values.std())

    def on_start(self, loop: LoopState) -> None:
        loop.loss_ceiling = self.ceiling(loop.recent_losses)

    def on_metrics(self, loop: LoopState, step: int, metrics: dict[str, float]) -> None:
        if metrics["applied"]:
            loop.recent_losses.append(metrics["masked_ce"])
        elif self.policy != "none":
            event = {
                "step": step,
                "event": "unhealthy_loss",
                "loss": metrics["loss"],
                "grad_norm": metrics["grad_norm"],
                "policy": self.policy,
            }
            if self.policy == "rollback":
                event.update(self._roll_back(loop, step))
            loop.record(event, line=f"loss health: {event}")
        loop.loss_ceiling = self.ceiling(loop.recent_losses)

    def _roll_back(self, loop: LoopState, bad_step: int) -> dict:
        self.rollbacks += 1
        if self.rollbacks > MAX_ROLLBACKS:
            raise FloatingPointError(
                f"training diverged {self.rollbacks} times (last at step {bad_step}); "
                "stopping instead of rolling back again: lower optim.learning_rate or inspect "
                "the data around this step"
            )
        self.checkpoints.wait()  # a save still in flight may be the last good one
        back = self.checkpoints.restore_latest(loop.run.abstract_state, before=bad_step)
        if back is None:
            return {}
        good_step, loop.state, _, _ = back
        loop.lr_scale *= self.lr_factor
        skipped = loop.step - good_step
        loop.step = good_step
        loop.restart_data()  # at the current data position: the bad batches are skipped
        return {"restored_step": good_step, "lr_scale": loop.lr_scale, "skipped_batches": skipped}


def jax_preemption_service_active() -> bool:
    """True when `jax.distributed` runs with its preemption service (multi-process jobs)."""
    import jax

    return jax.process_count() > 1 and bool(jax.config.jax_enable_preemption_service)


class Preemption(Hook):
    """SIGTERM sets a flag (the handler does nothing else); at the next step boundary the run
    saves and stops. Pods: orbax's `reached_preemption` (JAX's preemption sync point)."""

    every = 1

    def __init__(self, checkpointing: Checkpointing):
        self.checkpointing = checkpointing
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def on_start(self, loop: LoopState) -> None:
        if jax_preemption_service_active():
            return  # never replace JAX's notifier: it makes all processes agree on the step
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: rely on the pod's preemption notice
            self._previous = None

    def on_step(self, loop: LoopState) -> None:
        checkpoints = self.checkpointing.checkpoints
        if self.requested or checkpoints.reached_preemption(loop.step):
            self.checkpointing.save(loop, force=True)
            checkpoints.wait()
            loop.progress.write(f"preempted: saved checkpoint {loop.step}; exiting")
            loop.history.append({"step": loop.step, "preempted": True})
            loop.stop = True

    def close(self, loop: LoopState) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
