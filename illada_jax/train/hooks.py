"""The training loop's hooks: everything the loop does besides stepping, each on its own cadence.

The loop (`train/loop.py`) only advances: it takes a batch, runs the train step and updates the
`LoopState`. Before a step it calls every hook's `before_step`; after it, `on_step` of each hook
that is `due` at the new step, in order; `on_start` and `on_end` frame the run and `close` always
runs last. A hook reads the loop's state and may change it (a rollback moves `loop.step` back and
restarts the data; preemption sets `loop.stop`). When a hook moves `loop.step`, the remaining
hooks of that iteration are skipped.

Hooks here: `Progress` (console bar), `MetricsLog` (`metrics.jsonl` / TensorBoard / console every
`train.log_every`), `HeldOutEval` (the held-out ELBO bound every `train.eval_every`, and the
unigram baseline at the start), `TextSamples` (generated text at each evaluation and at the end),
`Checkpointing` (every `checkpoint.every` and at the end), `Profile` (`train.profile_steps`).
Loss health / rollback and preemption live in `train/recovery.py`.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import tempfile
import time
from typing import Any

import jax
import numpy as np

from illada_jax import storage
from illada_jax.ckpt import rundir
from illada_jax.ckpt.manager import CheckpointSaveError
from illada_jax.obs import flops
from illada_jax.train.builder import Run
from illada_jax.train.evaluate import EVAL_SEED, heldout_bound, heldout_preference
from illada_jax.train.objective import heldout_name


@dataclasses.dataclass
class MetricWindow:
    """Sums of the healthy steps' metrics since the last log line, and the time it covers.

    The sums travel with a checkpoint (`saved` / `from_saved`), so the first line a resumed run
    logs averages the same steps, with the same floats, as the uninterrupted run's; the clock
    (tokens/s) counts only this process's steps.
    """

    start: float = dataclasses.field(default_factory=time.perf_counter)
    steps: int = 0  # steps since `start`, healthy or not (for tokens/s)
    healthy: int = 0
    sums: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def add(self, metrics: dict[str, float]) -> None:
        self.steps += 1
        if metrics["applied"]:
            self.sums.update(metrics)
            self.healthy += 1

    def means(self, last: dict[str, float]) -> dict[str, float]:
        """Means over the healthy steps (the 1/t-weighted loss of one batch is very noisy), or
        `last` when there were none."""
        return {k: v / self.healthy for k, v in self.sums.items()} if self.healthy else dict(last)

    def restart_clock(self) -> None:
        """Time from now (the first step of this process), keeping the sums."""
        self.start, self.steps = time.perf_counter(), 0

    def saved(self) -> dict:
        return {"healthy": self.healthy, "sums": dict(self.sums)}

    @classmethod
    def from_saved(cls, saved: dict | None) -> MetricWindow:
        if not saved:
            return cls()
        sums = collections.Counter({k: float(v) for k, v in saved["sums"].items()})
        return cls(healthy=int(saved["healthy"]), sums=sums)


@dataclasses.dataclass
class LoopState:
    """What the loop and its hooks share. `step` counts finished optimizer steps."""

    run: Run
    workdir: Any
    state: Any
    step: int
    next_data_step: int  # the data position: batches already consumed (skipped ones included)
    lr_scale: float
    recent_losses: collections.deque  # healthy steps' masked CE (the spike detector's window)
    pipeline: Any
    writer: Any  # obs.writers.MetricWriter
    progress: Any  # obs.progress.TrainProgress
    batches: Any = None
    # The saved position of on-the-fly datasets (pipeline.StreamBatches.state()), for the first
    # `restart_data` after a resume; later restarts take the live iterator's.
    data_state: str | None = None
    metrics: dict = dataclasses.field(default_factory=dict)  # the last resolved step's, floats
    # Steps whose metrics are not yet on the host: (step, device or host metrics), oldest first.
    # The loop fetches a step's metrics one step late (or at once when a hook needs them), so the
    # host never waits for the step it has just dispatched.
    unresolved: collections.deque = dataclasses.field(default_factory=collections.deque)
    window: MetricWindow = dataclasses.field(default_factory=MetricWindow)
    history: list = dataclasses.field(default_factory=list)  # what this call logged
    loss_ceiling: float = float("inf")  # masked CE above this is a spike (recovery.LossHealth)
    stop: bool = False  # a hook asks the loop to end after this step (preemption)
    rollouts: Any = None  # objective=grpo: train/rollout.Rollouts, refreshes the state's rollout

    @property
    def total_steps(self) -> int:
        return self.run.experiment.train.steps

    def restart_data(self) -> None:
        """(Re)open the batch iterator at `next_data_step` (on-the-fly streams where they are)."""
        state = self.stream_state() if self.batches is not None else self.data_state
        if hasattr(self.batches, "close"):
            self.batches.close()
        self.batches = self.pipeline.iterator(self.next_data_step, state)

    def stream_state(self) -> str | None:
        """The on-the-fly datasets' position after the batches consumed (None without any)."""
        return self.batches.state() if hasattr(self.batches, "state") else None

    def record(self, record: dict, *, line: str | None = None) -> None:
        """Write a record to `metrics.jsonl` / TensorBoard, keep it in `history` and print
        `line` (default: the standard log line)."""
        self.writer.write_metrics(record["step"], record)
        self.history.append(record)
        if line is None:
            self.progress.log(record)
        else:
            self.progress.write(line)


class Hook:
    """Runs `on_step` after every `every`-th step (0: never on a cadence), and `on_metrics` for
    every step once its metrics reach the host (one step late unless a hook `needs_metrics`)."""

    every: int = 0

    def due(self, loop: LoopState) -> bool:
        return bool(self.every) and loop.step % self.every == 0

    def needs_metrics(self, loop: LoopState) -> bool:
        """Whether `on_step` of this step needs this step's metrics (a host sync)."""
        return False

    def on_metrics(self, loop: LoopState, step: int, metrics: dict[str, float]) -> None:
        """Step `step`'s metrics as floats, in step order (step may be before `loop.step`)."""

    def on_start(self, loop: LoopState) -> None:
        pass

    def before_step(self, loop: LoopState) -> None:
        pass

    def on_step(self, loop: LoopState) -> None:
        pass

    def on_end(self, loop: LoopState) -> None:
        """After the last step (or after a hook stopped the loop); not after an error."""

    def close(self, loop: LoopState) -> None:
        """Always, last: release what `on_start` took."""


class Progress(Hook):
    """The console progress bar (process 0, on a terminal)."""

    every = 1

    def on_step(self, loop: LoopState) -> None:
        loop.progress.advance(loop.step)


class MetricsLog(Hook):
    """Every `train.log_every` steps and at the last step: the window's mean metrics, learning
    rate, tokens/s, MFU and epoch, to `metrics.jsonl`, TensorBoard and the console. For a
    preference run tokens/s counts the positions of every masked copy the policy processes."""

    def __init__(self, run: Run):
        experiment = run.experiment
        self.every = experiment.train.log_every
        self.tokens_per_step, self.flops_per_token = flops.train_step_work(experiment)
        self.peak, self.peak_source = flops.total_peak_flops(
            measured_cpu_dtype=experiment.model.compute_dtype
        )

    def due(self, loop: LoopState) -> bool:
        return super().due(loop) or loop.step == loop.total_steps

    def needs_metrics(self, loop: LoopState) -> bool:
        return self.due(loop)

    def on_start(self, loop: LoopState) -> None:
        loop.progress.write(f"MFU peak: {self.peak_source}")

    def on_step(self, loop: LoopState) -> None:
        window = loop.window
        tokens_per_s = window.steps * self.tokens_per_step / (time.perf_counter() - window.start)
        record = {
            "step": loop.step,
            **window.means(loop.metrics),
            "applied": loop.metrics["applied"],
            "lr": float(loop.run.schedule(loop.step - 1)) * loop.lr_scale,
            "tokens_per_s": tokens_per_s,
            "mfu": flops.mfu(tokens_per_s, self.flops_per_token, self.peak),
        }
        epoch = loop.pipeline.epochs(loop.next_data_step)[0]
        if epoch is not None:  # None: the first dataset is read on the fly
            record["epoch"] = epoch
        loop.record(record)
        loop.window = MetricWindow()


class HeldOutEval(Hook):
    """Every `train.eval_every` steps: the held-out negative ELBO (nats/token, fixed seeds) on
    `train.eval_dataset` (objective=vrpo: the held-out preference accuracy and reward margin on
    preference pairs; objective=grpo: the mean reward of sampled completions of held-out prompts).
    At a fresh start: the unigram baseline, the held-out dataset's tokens
    scored with the training data's token frequencies (`data/pipeline/unigram.py`), which a model
    must beat to have learned more than frequencies."""

    def __init__(self, run: Run):
        self.every = run.experiment.train.eval_every

    def on_start(self, loop: LoopState) -> None:
        if self.every:  # refuse held-out data that does not fit the model now, on every process
            run = loop.run
            run.pipeline(dataset=run.experiment.train.eval_dataset, seed=EVAL_SEED)
            if (run.preference or run.reinforcement) and not loop.step:  # the starting point
                self.on_step(loop)
        # Logged once, at a fresh start (a resumed run has it in metrics.jsonl), by process 0.
        if loop.step or not loop.writer.enabled:
            return
        baseline = _unigram_baseline(loop.run)
        if baseline is not None:
            loop.record(
                {"step": loop.step, "unigram_baseline_nats": baseline},
                line=f"unigram baseline {baseline:.4f} nats/token (held-out tokens scored with "
                "the training data's token frequencies): the bound must go below it",
            )

    def on_step(self, loop: LoopState) -> None:
        run = loop.run
        pipeline = run.pipeline(dataset=run.experiment.train.eval_dataset, seed=EVAL_SEED)
        if loop.rollouts is not None:  # grpo: the reward of sampled held-out completions
            record = loop.rollouts.evaluate(loop.state["params"], pipeline,
                                            run.experiment.train.eval_batches)  # fmt: skip
            loop.record({"step": loop.step, **record}, line=f"step {loop.step}: held-out {record}")
            return
        args = (run.eval_step, run.eval_params(loop.state), pipeline,
                run.experiment.train.eval_batches)  # fmt: skip
        if run.preference:
            record = heldout_preference(*args, put=run.eval_batch)
        else:
            name = heldout_name(run.experiment.diffusion.objective)
            record = heldout_bound(*args, put=run.eval_batch, name=name)
        loop.record({"step": loop.step, **record}, line=f"step {loop.step}: held-out {record}")


def _unigram_baseline(run: Run) -> float | None:
    """The unigram baseline when the run evaluates on prepared shards (None otherwise)."""
    from illada_jax.data.pipeline import onthefly
    from illada_jax.data.pipeline.batches import resolve_dataset
    from illada_jax.data.pipeline.unigram import unigram_baseline

    experiment = run.experiment
    if not experiment.train.eval_every or experiment.diffusion.objective in (
        "sft_llada",
        "vrpo",
        "grpo",
    ):
        return None
    data = experiment.data

    def dataset(name: str):
        return resolve_dataset(name, data.cache_dir or None, data.tokenizer)

    # Token frequencies come from the prepared training datasets (raw ones are not counted).
    weights = data.weights or (1.0,) * len(data.datasets)
    prepared = [(n, w) for n, w in zip(data.datasets, weights) if not onthefly.is_raw(n)]
    if not prepared or onthefly.is_raw(experiment.train.eval_dataset):
        return None
    train_sets = [dataset(name) for name, _ in prepared]
    return unigram_baseline(
        train_sets, [w for _, w in prepared], dataset(experiment.train.eval_dataset)
    )


class TextSamples(Hook):
    """At every evaluation step: greedy samples after `train.sample_prompts` into
    `WORKDIR/samples/`; at the end, the last ones (made at the final step) are printed."""

    def __init__(self, run: Run, workdir, tokenizer):
        from illada_jax.train.samples import TrainingSamples

        self.every = run.experiment.train.eval_every
        self.samples = TrainingSamples(run.experiment, run.graphdef, workdir, tokenizer,
                                       mesh=run.mesh)  # fmt: skip
        self.main = jax.process_index() == 0

    def on_start(self, loop: LoopState) -> None:
        if self.samples.skipped_reason:
            loop.progress.write(self.samples.skipped_reason)

    def on_step(self, loop: LoopState) -> None:
        if self.main:
            self.samples.write(loop.step, loop.state["params"])

    def on_end(self, loop: LoopState) -> None:
        if not (self.main and self.samples.enabled) or loop.stop:
            return
        if self.samples.step != loop.step:
            self.samples.write(loop.step, loop.state["params"])
        for prompt, text in self.samples.last:
            loop.progress.write(f"sample | {prompt}{text}")


class Checkpointing(Hook):
    """Every `checkpoint.every` steps (before the last) and, forced, at the end: the state, the
    data position and the runner's controls (`ckpt.manager.RunCheckpoints`)."""

    def __init__(self, run: Run, checkpoints):
        self.every = run.experiment.checkpoint.every
        self.checkpoints = checkpoints

    def due(self, loop: LoopState) -> bool:
        return super().due(loop) and loop.step < loop.total_steps

    def save(self, loop: LoopState, *, force: bool = False) -> None:
        # Metrics not yet resolved travel with the checkpoint (as floats: saving syncs anyway),
        # so a resumed run resolves them at the same step as the uninterrupted one.
        loop.unresolved = collections.deque((s, host_metrics(m)) for s, m in loop.unresolved)
        meta = rundir.checkpoint_meta(
            loop.run.experiment,
            lr_scale=loop.lr_scale,
            recent_losses=loop.recent_losses,
            unresolved_metrics=list(loop.unresolved),
            metric_window=loop.window.saved(),
        )
        try:
            self.checkpoints.settle()  # an earlier background write that failed is reported
        except CheckpointSaveError as err:
            self._report(loop, err)
        try:
            self.checkpoints.save(
                loop.step,
                loop.state,
                {"next_data_step": loop.next_data_step},
                meta,
                force=force,
                streams=loop.stream_state(),
            )
        except CheckpointSaveError as err:
            if force:  # the run's last state: nothing after it would save it
                raise
            self._report(loop, err)

    @staticmethod
    def _report(loop: LoopState, err: CheckpointSaveError) -> None:
        """Training goes on; the next scheduled save tries again."""
        loop.record({"step": loop.step, "event": "checkpoint_failed", "checkpoint": err.step,
                     "error": str(err)}, line=f"checkpoint failed: {err}; training goes on")  # fmt: skip

    def on_step(self, loop: LoopState) -> None:
        self.save(loop)

    def on_end(self, loop: LoopState) -> None:
        if not loop.stop:  # a preempted run saved already
            self.save(loop, force=True)
        self.checkpoints.wait()


class Profile(Hook):
    """`jax.profiler` trace of steps `train.profile_steps = (first, last)` into WORKDIR/profile."""

    def __init__(self, run: Run, workdir):
        self.steps = tuple(run.experiment.train.profile_steps)
        self.directory = storage.path(workdir) / rundir.PROFILE
        self.every = 1 if self.steps else 0
        self.active = False
        self._local = None  # the profiler writes local files; uploaded to a remote workdir

    def before_step(self, loop: LoopState) -> None:
        if self.steps and loop.step + 1 == self.steps[0]:
            if storage.is_local(self.directory):
                target = str(self.directory)
            else:
                self._local = tempfile.TemporaryDirectory(prefix="illada-profile-")
                target = self._local.name
            jax.profiler.start_trace(target)
            self.active = True

    def on_step(self, loop: LoopState) -> None:
        if self.active and loop.step == self.steps[1]:
            jax.block_until_ready(loop.state)
            self._stop()

    def _stop(self) -> None:
        jax.profiler.stop_trace()
        self.active = False
        if self._local is not None:
            root = pathlib.Path(self._local.name)
            for file in root.rglob("*"):
                if file.is_file():
                    target = self.directory / file.relative_to(root).as_posix()
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(file.read_bytes())
            self._local.cleanup()
            self._local = None

    def close(self, loop: LoopState) -> None:
        if self.active:
            self._stop()


def host_metrics(metrics: dict) -> dict[str, float]:
    """Device metrics -> Python floats (one transfer; waits for the step that makes them)."""
    return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}


def resolve_metrics(loop: LoopState, hooks: list[Hook], *, keep_last: bool) -> None:
    """Fetch the unresolved steps' metrics in order (all, or all but the newest) and give each
    to the hooks' `on_metrics`. A hook that moves the run (rollback) drops the rest: they belong
    to steps that no longer count."""
    while len(loop.unresolved) > (1 if keep_last else 0):
        step, metrics = loop.unresolved.popleft()
        loop.metrics = host_metrics(metrics)
        loop.window.add(loop.metrics)
        here = loop.step
        for hook in hooks:
            hook.on_metrics(loop, step, loop.metrics)
            if loop.step != here:
                loop.unresolved.clear()
                return
