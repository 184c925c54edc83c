"""The runner: builds the model and optimiser, loops over batches, logs.

Reads global batches from the data pipeline (by default the embedded corpus, prepared on first
use), trains on the local devices and writes `config.json` and `metrics.jsonl` into the work
directory. Sharding, checkpoints and recovery arrive with the trainer issue.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import numpy as np
from flax import nnx

from illada_jax.config import flags
from illada_jax.config.schema import Experiment
from illada_jax.data.pipeline import Pipeline, PipelineSpec
from illada_jax.model.transformer import Transformer
from illada_jax.train.optim import learning_rate_schedule, make_optimizer
from illada_jax.train.step import make_train_step


def make_pipeline(experiment: Experiment) -> Pipeline:
    """The pipeline of `experiment.data`, checked against the model's vocabulary and ids."""
    data, tcfg = experiment.data, experiment.train
    spec = PipelineSpec(
        datasets=data.datasets,
        weights=data.weights,
        seq_len=tcfg.seq_len,
        global_batch=tcfg.batch_size,
        seed=tcfg.seed,
        document_aware=data.document_aware,
        shuffle=data.shuffle,
        read_threads=data.read_threads,
    )
    pipeline = Pipeline(spec, cache_dir=data.cache_dir or None)
    pipeline.check_compatible(experiment.model)
    return pipeline


def train(
    experiment: Experiment, workdir: str | pathlib.Path | None = None, print_fn=print
) -> list[dict]:
    """Run `experiment.train.steps` steps; returns the logged metrics (one dict per log line)."""
    tcfg = experiment.train
    if experiment.diffusion.objective == "sft_llada":
        raise ValueError(
            "objective=sft_llada needs prompt/answer batches, which arrive with the "
            "SFT data pipeline; use objective=pretrain or sft_illada for now"
        )
    out_dir = None
    if workdir is not None:
        out_dir = pathlib.Path(workdir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(flags.to_json(experiment))

    model = Transformer(experiment.model, rngs=nnx.Rngs(tcfg.seed))
    graphdef, params = nnx.split(model)
    del model
    optimizer = make_optimizer(experiment.optim)
    opt_state = optimizer.init(params)
    schedule = learning_rate_schedule(experiment.optim)
    step_fn = make_train_step(graphdef, experiment.diffusion, optimizer)
    batches = make_pipeline(experiment).iterator(start_step=0)
    base_key = jax.random.key(tcfg.seed)

    history = []
    tokens_per_step = tcfg.batch_size * tcfg.seq_len
    window_start, window_steps = time.perf_counter(), 0
    metrics_file = (out_dir / "metrics.jsonl").open("a") if out_dir else None
    try:
        for step in range(1, tcfg.steps + 1):
            batch = next(batches)
            params, opt_state, metrics = step_fn(
                params, opt_state, batch, jax.random.fold_in(base_key, step)
            )
            window_steps += 1
            if step % tcfg.log_every and step != tcfg.steps:
                continue
            metrics = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
            elapsed = time.perf_counter() - window_start
            record = {
                "step": step,
                **metrics,
                "lr": float(schedule(step - 1)),
                "tokens_per_s": window_steps * tokens_per_step / elapsed,
            }
            if not np.isfinite(record["loss"]):
                raise FloatingPointError(f"loss is {record['loss']} at step {step}")
            history.append(record)
            print_fn(
                f"step {step:>5}/{tcfg.steps}  loss {record['loss']:.4f}  "
                f"masked_ce {record['masked_ce']:.4f}  lr {record['lr']:.2e}  "
                f"grad_norm {record['grad_norm']:.3f}  tok/s {record['tokens_per_s']:.0f}"
            )
            if metrics_file:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
            window_start, window_steps = time.perf_counter(), 0
    finally:
        if metrics_file:
            metrics_file.close()
    return history
