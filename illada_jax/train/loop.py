"""The runner: the only place that wires data, model, diffusion math, sharding and checkpoints.

`train(experiment, workdir)`:
1. builds the mesh and the sharded state (or resumes from the newest good checkpoint in
   `workdir/checkpoints`, or initialises parameters from `checkpoint.init_from`);
2. streams this process's rows of every global batch from the data pipeline, starting at the
   saved data position, and assembles global `jax.Array`s;
3. runs the jitted train step; watches loss health (NaN/Inf and spikes above the rolling
   mean + k·σ of the masked CE): `skip` drops the update in-step, `rollback` restores the last good checkpoint,
   skips the offending batches and scales the learning rate down;
4. logs every `log_every` steps (process 0: `metrics.jsonl`, TensorBoard, console), evaluates the
   held-out ELBO bound every `eval_every` steps, checkpoints every `checkpoint.every` steps and at
   the end, and on SIGTERM or a pod preemption notice saves the current step and returns
   (the CLI then exits 0); optionally traces `profile_steps` with `jax.profiler`.
Everything that decides a step's outcome (data, RNG, state, learning-rate scale, spike window) is
restored from the checkpoint, so a killed and restarted run repeats the uninterrupted losses.
"""

from __future__ import annotations

import collections
import logging
import pathlib
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from illada_jax.ckpt.manager import RunCheckpoints, restore_params
from illada_jax.config import flags
from illada_jax.config.schema import Experiment
from illada_jax.data.pipeline import LladaSftPipeline, Pipeline, PipelineSpec
from illada_jax.obs import flops
from illada_jax.obs.progress import TrainProgress
from illada_jax.obs.writers import MetricWriter
from illada_jax.parallel import mesh as mesh_lib
from illada_jax.parallel.rules import batch_spec
from illada_jax.train import state as state_lib
from illada_jax.train.optim import learning_rate_schedule, make_optimizer
from illada_jax.train.samples import TrainingSamples
from illada_jax.train.step import batch_shardings, make_eval_step, make_train_step

log = logging.getLogger(__name__)
EVAL_SEED = 12345  # fixed: held-out numbers are comparable across runs and checkpoints
MAX_ROLLBACKS = 10  # per call of train(): beyond this the run is diverging, not unlucky


def make_pipeline(experiment: Experiment, *, dataset: str | None = None, seed: int | None = None):
    """This process's data for `experiment` (or one `dataset`, e.g. for evaluation), checked
    against the model's vocabulary and special ids: a `Pipeline` over prepared shards, or for
    objective=sft_llada a `LladaSftPipeline` over dialogues."""
    data, tcfg = experiment.data, experiment.train
    if experiment.diffusion.objective == "sft_llada" and dataset is None:
        from illada_jax.data.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(data.tokenizer) if data.tokenizer else Tokenizer.default()
        pipeline = LladaSftPipeline(
            data.datasets[0],
            tcfg.seq_len,
            tcfg.batch_size,
            tcfg.seed,
            tokenizer,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    else:
        spec = PipelineSpec(
            datasets=(dataset,) if dataset else data.datasets,
            weights=() if dataset else data.weights,
            seq_len=tcfg.seq_len,
            global_batch=tcfg.batch_size,
            seed=tcfg.seed if seed is None else seed,
            document_aware=data.document_aware,
            shuffle=data.shuffle,
            read_threads=data.read_threads,
        )
        pipeline = Pipeline(
            spec,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            cache_dir=data.cache_dir or None,
        )
    pipeline.check_compatible(experiment.model)
    return pipeline


class _Preemption:
    """SIGTERM sets a flag; the loop saves and stops at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: rely on the orbax/JAX preemption notice
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class _LossHealth:
    """Rolling statistics of healthy steps' masked CE -> the ceiling above which a step is a
    spike (the 1/t-weighted loss itself is heavy-tailed by design)."""

    def __init__(self, window: int, sigma: float, history=()):
        self.sigma = sigma
        self.losses = collections.deque(history, maxlen=window)

    def ceiling(self) -> float:
        if len(self.losses) < max(8, self.losses.maxlen // 2):
            return float("inf")  # not enough history yet
        values = np.asarray(self.losses)
        return float(values.mean() + self.sigma * values.std())

    def record(self, loss: float) -> None:
        self.losses.append(loss)


def _global_batch(local: dict, shardings, global_batch: int) -> dict:
    """Per-process numpy rows -> global jax.Arrays (`shardings`: one, or one per key)."""
    return {
        key: jax.make_array_from_process_local_data(
            shardings[key] if isinstance(shardings, dict) else shardings,
            value,
            (global_batch, *value.shape[1:]),
        )
        for key, value in local.items()
    }


def train(
    experiment: Experiment, workdir: str | pathlib.Path | None = None, print_fn=print
) -> list[dict]:
    """Train (or resume) `experiment` in `workdir`; returns the logged records of this call.

    Stops early, after saving, when preempted (SIGTERM / pod notice): check `preempted` in the
    last record.
    """
    tcfg, ccfg = experiment.train, experiment.checkpoint
    is_main = jax.process_index() == 0
    out_dir = pathlib.Path(workdir or f"runs/{experiment.model.name}")
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(flags.to_json(experiment))

    mesh = mesh_lib.make_mesh(experiment.mesh)
    mesh_lib.check_batch(mesh, tcfg.batch_size, tcfg.grad_accum)
    rules = experiment.mesh.rules
    optimizer = make_optimizer(experiment.optim, total_steps=tcfg.steps)
    schedule = learning_rate_schedule(experiment.optim, total_steps=tcfg.steps)
    graphdef, _, _ = state_lib.model_graphdef_and_specs(experiment.model)
    shardings = state_lib.state_shardings(experiment.model, optimizer, mesh, rules, tcfg.seed)
    rows = NamedSharding(mesh, batch_spec(rules, mesh, tcfg.batch_size))
    checkpoints = RunCheckpoints(out_dir, ccfg)

    # Resume > init_from > fresh.
    abstract = state_lib.abstract_state(experiment.model, optimizer, mesh, rules, tcfg.seed)
    restored = checkpoints.restore_latest(abstract)
    if restored is not None:
        start_step, state, data_pos, meta = restored
        next_data_step = int(data_pos["next_data_step"])
        lr_scale = float(meta["lr_scale"])
        health = _LossHealth(tcfg.spike_window, tcfg.spike_sigma, meta.get("recent_losses", ()))
        print_fn(f"resumed from checkpoint {start_step} in {checkpoints.directory}")
    else:
        state = state_lib.create_state(experiment.model, optimizer, mesh, rules, tcfg.seed)
        if ccfg.init_from:
            params = restore_params(ccfg.init_from, abstract["params"])
            state = {**state, "params": params}
            print_fn(f"initialised parameters from {ccfg.init_from}")
        start_step, next_data_step, lr_scale = 0, 0, 1.0
        health = _LossHealth(tcfg.spike_window, tcfg.spike_sigma)

    pipeline = make_pipeline(experiment)
    batches = pipeline.iterator(next_data_step)
    shardings_of_batch = batch_shardings(mesh, rules, tcfg.batch_size, pipeline.output_keys)
    with jax.set_mesh(mesh):
        train_step = make_train_step(
            graphdef,
            experiment.diffusion,
            optimizer,
            grad_accum=tcfg.grad_accum,
            inject_nan_step=tcfg.inject_nan_step,
            state_shardings=shardings,
            mesh=mesh,
            rules=rules,
            global_batch=tcfg.batch_size,
            batch_keys=pipeline.output_keys,
        )
        eval_step = make_eval_step(
            graphdef,
            param_shardings=shardings["params"],
            mesh=mesh,
            rules=rules,
            global_batch=tcfg.batch_size,
        )
    base_key = jax.random.key(tcfg.seed)
    tokens_per_step = tcfg.batch_size * tcfg.seq_len
    flops_per_token = flops.train_flops_per_token(experiment.model, tcfg.seq_len)
    peak, peak_source = flops.total_peak_flops(measured_cpu_dtype=experiment.model.compute_dtype)
    writer = MetricWriter(out_dir, enabled=is_main)
    if restored is None:
        writer.write_text("config", flags.to_json(experiment), step=0)
    progress = TrainProgress(tcfg.steps, initial_step=start_step, enabled=is_main)
    progress.write(f"MFU peak: {peak_source}")
    samples = TrainingSamples(experiment, graphdef, out_dir, _sample_tokenizer(experiment))
    if samples.skipped_reason:
        progress.write(samples.skipped_reason)

    def save(step: int, *, force: bool = False) -> None:
        checkpoints.save(
            step,
            state,
            {"next_data_step": next_data_step},
            {
                "lr_scale": lr_scale,
                "recent_losses": list(health.losses),
                "config": flags.to_dict(experiment),
            },
            force=force,
        )

    history: list[dict] = []
    rollbacks = 0
    window_start, window_steps = time.perf_counter(), 0
    window_sums: collections.Counter = collections.Counter()  # healthy steps' metrics
    window_healthy = 0
    step = start_step
    try:
        with _Preemption() as preemption, jax.set_mesh(mesh):
            while step < tcfg.steps:
                if tcfg.profile_steps and step + 1 == tcfg.profile_steps[0]:
                    jax.profiler.start_trace(str(out_dir / "profile"))
                local = next(batches)
                controls = {
                    "lr_scale": jnp.float32(lr_scale),
                    "loss_ceiling": jnp.float32(
                        health.ceiling() if tcfg.health_policy != "none" else np.inf
                    ),
                    "data_step": jnp.int32(next_data_step),
                }
                batch = _global_batch(local, shardings_of_batch, tcfg.batch_size)
                key = jax.random.fold_in(base_key, step)
                state, metrics = train_step(state, batch, key, controls)
                metrics = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
                if tcfg.profile_steps and step + 1 == tcfg.profile_steps[1]:
                    jax.block_until_ready(state)
                    jax.profiler.stop_trace()
                step += 1
                next_data_step += 1
                window_steps += 1
                if metrics["applied"]:
                    window_sums.update(metrics)
                    window_healthy += 1
                if metrics["applied"]:
                    health.record(metrics["masked_ce"])
                elif tcfg.health_policy != "none":
                    event = {
                        "step": step,
                        "event": "unhealthy_loss",
                        "loss": metrics["loss"],
                        "grad_norm": metrics["grad_norm"],
                        "policy": tcfg.health_policy,
                    }
                    if tcfg.health_policy == "rollback":
                        rollbacks += 1
                        if rollbacks > MAX_ROLLBACKS:
                            raise FloatingPointError(
                                f"training diverged {rollbacks} times (last at step {step}); "
                                "stopping instead of rolling back again: lower "
                                "optim.learning_rate or inspect the data around this step"
                            )
                        checkpoints.wait()  # a save still in flight may be the last good one
                        back = checkpoints.restore_latest(abstract, before=step)
                        if back is not None:
                            good_step, state, _, _ = back
                            lr_scale *= tcfg.rollback_lr_factor
                            event.update(
                                restored_step=good_step,
                                lr_scale=lr_scale,
                                skipped_batches=step - good_step,
                            )
                            # Batches from the restored step to the bad one are skipped: the
                            # data position keeps moving forward.
                            step = good_step
                            batches = pipeline.iterator(next_data_step)
                    progress.write(f"loss health: {event}")
                    writer.write_metrics(event["step"], event)  # the step where it happened
                    history.append(event)
                progress.advance(step)
                if step % tcfg.log_every == 0 or step == tcfg.steps:
                    elapsed = time.perf_counter() - window_start
                    tokens_per_s = window_steps * tokens_per_step / elapsed
                    record = {
                        "step": step,
                        # Means over the healthy steps since the last log line (the 1/t-weighted
                        # loss of a single batch is very noisy), else this step's values.
                        **(
                            metrics
                            if not window_healthy
                            else {k: v / window_healthy for k, v in window_sums.items()}
                        ),
                        "applied": metrics["applied"],
                        "lr": float(schedule(step - 1)) * lr_scale,
                        "tokens_per_s": tokens_per_s,
                        "mfu": flops.mfu(tokens_per_s, flops_per_token, peak),
                        "epoch": pipeline.epochs(next_data_step)[0],
                    }
                    writer.write_metrics(step, record)
                    progress.log(record)
                    history.append(record)
                    window_start, window_steps = time.perf_counter(), 0
                    window_sums.clear()
                    window_healthy = 0
                if tcfg.eval_every and step % tcfg.eval_every == 0:
                    record = evaluate(experiment, eval_step, state["params"], rows)
                    writer.write_metrics(step, record)
                    progress.write(f"step {step}: held-out {record}")
                    history.append({"step": step, **record})
                    if is_main:
                        samples.write(step, state["params"])
                if step % ccfg.every == 0 and step < tcfg.steps:
                    save(step)
                if preemption.requested or checkpoints.reached_preemption(step):
                    save(step, force=True)
                    checkpoints.wait()
                    progress.write(f"preempted: saved checkpoint {step}; exiting")
                    history.append({"step": step, "preempted": True})
                    return history
            save(step, force=True)
            checkpoints.wait()
            if is_main and samples.enabled:
                if samples.step != step:
                    samples.write(step, state["params"])
                for prompt, text in samples.last:
                    progress.write(f"sample | {prompt}{text}")
    finally:
        progress.close()
        writer.close()
        checkpoints.close()
    return history


def _sample_tokenizer(experiment: Experiment):
    """The run's tokenizer for text samples, or None when it does not fit the model."""
    from illada_jax.data.tokenizer import Tokenizer

    tokenizer, why = Tokenizer.for_model(experiment.data.tokenizer, experiment.model)
    if tokenizer is None:
        log.warning("no text samples: %s", why)
    return tokenizer


def evaluate(experiment: Experiment, eval_step, params, rows) -> dict:
    """Held-out negative ELBO in nats per token (an upper bound on the NLL), fixed seeds."""
    tcfg = experiment.train
    pipeline = make_pipeline(experiment, dataset=tcfg.eval_dataset, seed=EVAL_SEED)
    total, tokens = 0.0, 0.0
    for index in range(tcfg.eval_batches):
        batch = _global_batch(pipeline.process_batch(index), rows, tcfg.batch_size)
        bound, n = eval_step(params, batch, jax.random.fold_in(jax.random.key(EVAL_SEED), index))
        total += float(bound)
        tokens += float(n)
    return {"eval_nll_bound": total / max(tokens, 1.0), "eval_tokens": tokens}
