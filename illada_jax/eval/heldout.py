"""Held-out negative ELBO of a checkpoint on prepared shards (`illada eval` without --tasks).

The same estimator and fixed seeds as the runner's periodic evaluation (`train.loop.evaluate`:
the l-form of SPEC §1.2, `EVAL_SEED`), so a number printed here equals the `eval_nll_bound` the
run logged for the same dataset, batch shape and checkpoint. Nats per token; an upper bound on
the negative log-likelihood.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from illada_jax.api import LoadError, Model
from illada_jax.train.objective import elbo_bound


@functools.partial(jax.jit, static_argnums=0)
def _bound(graphdef, params, batch, key):
    return elbo_bound(nnx.merge(graphdef, params), batch, key)


def heldout_bound(model: Model, *, dataset: str | None = None, batches: int | None = None,
                  batch_size: int | None = None, seq_len: int | None = None) -> dict:  # fmt: skip
    """{"dataset", "eval_nll_bound": nats/token, "eval_tokens": n, "batches": b} for `model` (loaded from a
    run, whose config supplies the defaults) on `dataset` (default `train.eval_dataset`)."""
    from illada_jax.train.loop import EVAL_SEED, make_pipeline

    experiment = model.experiment
    if experiment is None:
        raise LoadError("held-out evaluation needs a model loaded from a run (illada_jax.load)")
    tcfg = experiment.train
    tcfg = dataclasses.replace(
        tcfg,
        eval_dataset=dataset or tcfg.eval_dataset,
        eval_batches=batches or tcfg.eval_batches,
        batch_size=batch_size or tcfg.batch_size,
        seq_len=seq_len or tcfg.seq_len,
    )
    experiment = dataclasses.replace(experiment, train=tcfg)
    pipeline = make_pipeline(experiment, dataset=tcfg.eval_dataset, seed=EVAL_SEED)
    total, tokens = 0.0, 0.0
    for index in range(tcfg.eval_batches):
        batch = {k: jnp.asarray(v) for k, v in pipeline.process_batch(index).items()}
        key = jax.random.fold_in(jax.random.key(EVAL_SEED), index)
        bound, n = _bound(model.graphdef, model.params, batch, key)
        total += float(bound)
        tokens += float(n)
    return {
        "dataset": tcfg.eval_dataset,
        "eval_nll_bound": total / max(tokens, 1.0),
        "eval_tokens": tokens,
        "batches": tcfg.eval_batches,
    }
