"""The held-out negative ELBO bound: the runner's periodic evaluation and `illada eval`.

The estimator is the `l`-form of the bound (exactly l of n tokens masked, weight n/l;
docs/algorithms.md#the-held-out-bound) with fixed keys (`EVAL_SEED`), so the same checkpoint,
dataset and batch shape always give the same number, in nats per token (an upper bound on the
negative log-likelihood).
"""

from __future__ import annotations

from collections.abc import Callable

import jax

EVAL_SEED = 12345  # fixed: held-out numbers are comparable across runs and checkpoints


def eval_key(index: int) -> jax.Array:
    """The key of evaluation batch `index` (the same for every run and checkpoint)."""
    return jax.random.fold_in(jax.random.key(EVAL_SEED), index)


def heldout_bound(eval_step: Callable, params, pipeline, batches: int, put: Callable) -> dict:
    """{"eval_nll_bound": nats/token, "eval_tokens": n} over batches 0..`batches`-1 of
    `pipeline` (built with seed `EVAL_SEED`); `put` turns a process's numpy batch into the
    step's input arrays; `eval_step(params, batch, key) -> (bound_sum, n_tokens)`."""
    total, tokens = 0.0, 0.0
    for index in range(batches):
        bound, n = eval_step(params, put(pipeline.process_batch(index)), eval_key(index))
        total += float(bound)
        tokens += float(n)
    return {"eval_nll_bound": total / max(tokens, 1.0), "eval_tokens": tokens}
