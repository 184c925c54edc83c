"""The held-out negative ELBO bound: the runner's periodic evaluation and `illada eval`; for
preference optimisation, the held-out preference accuracy.

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


def heldout_bound(eval_step: Callable, params, pipeline, batches: int, put: Callable,
                  name: str = "eval_nll_bound") -> dict:  # fmt: skip
    """{name: nats/token, "eval_tokens": n} over batches 0..`batches`-1 of `pipeline` (built
    with seed `EVAL_SEED`); `put` turns a process's numpy batch into the step's input arrays;
    `eval_step(params, batch, key) -> (nats_sum, n_tokens)`; `name`: `eval_nll_bound` (the
    diffusion bound) or `eval_ar_nll` (an autoregressive run's exact NLL)."""
    total, tokens = 0.0, 0.0
    for index in range(batches):
        bound, n = eval_step(params, put(pipeline.process_batch(index)), eval_key(index))
        total += float(bound)
        tokens += float(n)
    return {name: total / max(tokens, 1.0), "eval_tokens": tokens}


def heldout_preference(eval_step: Callable, params, pipeline, batches: int, put: Callable) -> dict:
    """Over batches 0..`batches`-1 of a preference pipeline (docs/algorithms.md#preference-optimisation-vrpo):
    `eval_pref_accuracy`, the fraction of pairs whose chosen answer gains more ELBO over the
    reference than the rejected one (ties count half: 0.5 at the start, when the policy is the
    reference); `eval_reward_margin`, the mean β·margin; `eval_likelihood_accuracy`, the fraction
    whose chosen answer has the higher ELBO under the model itself; `eval_pairs`.
    `eval_step(params, batch, key)` returns those sums (`train/objective.preference_eval`)."""
    sums: dict[str, float] = {}
    for index in range(batches):
        out = eval_step(params, put(pipeline.process_batch(index)), eval_key(index))
        for name, value in out.items():
            sums[name] = sums.get(name, 0.0) + float(value)
    pairs = max(sums["pairs"], 1.0)
    return {"eval_pref_accuracy": sums["right"] / pairs,
            "eval_reward_margin": sums["margin"] / pairs,
            "eval_likelihood_accuracy": sums["likelihood_right"] / pairs,
            "eval_pairs": sums["pairs"]}  # fmt: skip
