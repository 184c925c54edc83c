"""Held-out negative ELBO of a checkpoint on prepared shards (`illada eval` without --tasks);
for a preference (vrpo) run, its held-out preference accuracy against its frozen reference.

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
from illada_jax.train.evaluate import heldout_preference as preference_over_batches
from illada_jax.train.objective import heldout_name, heldout_nll, preference_eval


@functools.partial(jax.jit, static_argnums=(0, 1))
def _bound(graphdef, diffusion, params, batch, key):
    return heldout_nll(nnx.merge(graphdef, params), batch, key, diffusion)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _preference(graphdef, vrpo, chunk_size, params, batch, key):
    policy, reference = (nnx.merge(graphdef, p) for p in params)
    return preference_eval(policy, reference, batch, key, vrpo, chunk_size)


def heldout_bound(model: Model, *, dataset: str | None = None, batches: int | None = None,
                  batch_size: int | None = None, seq_len: int | None = None,
                  checkpoint=None) -> dict:  # fmt: skip
    """{"dataset", "eval_nll_bound": nats/token (`eval_ar_nll` for an autoregressive run),
    "eval_tokens": n, "batches": b} for `model`
    (loaded from a run, whose config supplies the defaults) on `dataset` (default
    `train.eval_dataset`). A preference (vrpo) run: {"dataset", "eval_pref_accuracy",
    "eval_reward_margin", "eval_likelihood_accuracy", "eval_pairs", "batches"} against the frozen
    reference stored in `checkpoint` (the path `model` was loaded from)."""
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
    put = lambda local: {k: jnp.asarray(v) for k, v in local.items()}  # noqa: E731
    if experiment.diffusion.objective == "vrpo":
        from illada_jax.ckpt.manager import restore_params

        if checkpoint is None:
            raise LoadError("held-out preference accuracy needs the checkpoint path (its "
                            "frozen reference is stored there): pass checkpoint=")  # fmt: skip
        reference = restore_params(checkpoint, model.params, init_from=False, name="ref_params")
        step = functools.partial(_preference, model.graphdef, experiment.vrpo,
                                 experiment.diffusion.loss_chunk_size)  # fmt: skip
        record = preference_over_batches(step, (model.params, reference), pipeline,
                                         tcfg.eval_batches, put=put)  # fmt: skip
        return {"dataset": tcfg.eval_dataset, **record, "batches": tcfg.eval_batches}
    record = bound_over_batches(
        functools.partial(_bound, model.graphdef, experiment.diffusion),
        model.params,
        pipeline,
        tcfg.eval_batches,
        put=put,
        name=heldout_name(experiment.diffusion.objective),
    )
    return {"dataset": tcfg.eval_dataset, **record, "batches": tcfg.eval_batches}
