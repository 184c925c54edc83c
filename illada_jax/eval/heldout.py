"""Held-out negative ELBO of a checkpoint on prepared shards (`illada eval` without --tasks).

The same estimator and fixed seeds as the runner's periodic evaluation (`train/evaluate.py`), so
a number printed here equals the `eval_nll_bound` the run logged for the same dataset, batch
shape and checkpoint. Nats per token; an upper bound on the negative log-likelihood.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from illada_jax.ckpt.rundir import LoadError
from illada_jax.inference import Model
from illada_jax.train.builder import make_pipeline
from illada_jax.train.evaluate import EVAL_SEED
from illada_jax.train.evaluate import heldout_bound as bound_over_batches
from illada_jax.train.objective import elbo_bound


@functools.partial(jax.jit, static_argnums=0)
def _bound(graphdef, params, batch, key):
    return elbo_bound(nnx.merge(graphdef, params), batch, key)


def heldout_bound(model: Model, *, dataset: str | None = None, batches: int | None = None,
                  batch_size: int | None = None, seq_len: int | None = None) -> dict:  # fmt: skip
    """{"dataset", "eval_nll_bound": nats/token, "eval_tokens": n, "batches": b} for `model`
    (loaded from a run, whose config supplies the defaults) on `dataset` (default
    `train.eval_dataset`)."""
    experiment = model.experiment
    if experiment is None:
        raise LoadError("held-out evaluation needs a model loaded from a run (illada_jax.load)")
    tcfg = dataclasses.replace(
        experiment.train,
        eval_dataset=dataset or experiment.train.eval_dataset,
        eval_batches=batches or experiment.train.eval_batches,
        batch_size=batch_size or experiment.train.batch_size,
        seq_len=seq_len or experiment.train.seq_len,
    )
    experiment = dataclasses.replace(experiment, train=tcfg)
    pipeline = make_pipeline(experiment, dataset=tcfg.eval_dataset, seed=EVAL_SEED)
    record = bound_over_batches(
        functools.partial(_bound, model.graphdef),
        model.params,
        pipeline,
        tcfg.eval_batches,
        put=lambda local: {k: jnp.asarray(v) for k, v in local.items()},
    )
    return {"dataset": tcfg.eval_dataset, **record, "batches": tcfg.eval_batches}
