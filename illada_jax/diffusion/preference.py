"""Preference optimisation with ELBO estimates: LLaDA 1.5's VRPO
(docs/algorithms.md#preference-optimisation-vrpo). Pure math: no model, mesh or data here.

A masked-diffusion model has no exact log-likelihood of an answer, so DPO's `log π(y | x)` is
replaced by a Monte-Carlo ELBO `B(y)` (a lower bound on it, in nats), estimated from `n` draws
of a masking count `l ∈ {1..A}` (A = answer length) and a mask of exactly `l` answer tokens:

    B(y) = -(1/n) Σ_j (A / l_j) Σ_{i masked in draw j} CE_i

the `l`-form of docs/algorithms.md#the-monte-carlo-elbo, prompt visible and never masked. For a
one-token answer every draw masks that token with weight 1, so `B` is the exact log-probability
and the VRPO loss is exactly DPO's.

Rows are laid out `[prompt, answer, pad...]`: `tokens [R, L] int32`, `prompt_lengths [R]`,
`answer_lengths [R]` (A_r ≥ 1 answer tokens at positions p_r .. p_r + A_r - 1). Padding is hidden
from attention by a key mask, so the model sees exactly `[prompt, answer]`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class AnswerDraws(NamedTuple):
    """`n` masked copies of each row. noisy, masked: [R, n, L]; weights [R, n] (A/l);
    key_mask [R, L] (True on prompt and answer)."""

    noisy: jax.Array
    masked: jax.Array
    weights: jax.Array
    key_mask: jax.Array


def stratified_from_offset(offset, samples: int, answer_lengths) -> jax.Array:
    """`l_j = ((k - 1 + round(j·A/n)) mod A) + 1` for j = 0..n-1: the n counts spread evenly over
    1..A from offset k [R, 1] (answer_lengths [R, 1]). The rounding is of the spacing only, so
    with k uniform on 1..A every l_j is exactly uniform on 1..A (an unbiased ELBO term)."""
    a = answer_lengths.astype(jnp.int32)
    spacing = jnp.round(jnp.arange(samples)[None, :] * (a.astype(jnp.float32) / samples))
    return (offset - 1 + spacing.astype(jnp.int32)) % a + 1


def mask_counts(key, answer_lengths, samples: int, stratified: bool) -> jax.Array:
    """Masking counts `l [R, n]` in 1..A_r, each uniform on 1..A_r.

    stratified: one offset k ~ U{1..A} per row and the n counts spread evenly from it
    (`stratified_from_offset`; LLaDA 1.5: n timesteps, one mask each); otherwise n independent
    uniform counts.
    """
    a = answer_lengths[:, None].astype(jnp.int32)
    uniform = jax.random.uniform(key, (answer_lengths.shape[0], 1 if stratified else samples))
    draws = jnp.minimum(jnp.floor(uniform * a).astype(jnp.int32) + 1, a)  # U{1..A}
    if not stratified:
        return draws
    return stratified_from_offset(draws, samples, a)


def answer_draws(key, tokens, prompt_lengths, answer_lengths, mask_id: int, samples: int,
                 stratified: bool) -> AnswerDraws:  # fmt: skip
    """`samples` draws of (l, mask) per row: exactly l_j answer tokens replaced by `mask_id`,
    chosen uniformly (the l_j smallest of uniform scores over the answer positions)."""
    rows, length = tokens.shape
    count_key, mask_key = jax.random.split(key)
    counts = mask_counts(count_key, answer_lengths, samples, stratified)  # [R, n]
    position = jnp.arange(length)[None, :]
    start = prompt_lengths[:, None]
    is_answer = (position >= start) & (position < start + answer_lengths[:, None])  # [R, L]
    scores = jax.random.uniform(mask_key, (rows, samples, length))
    scores = jnp.where(is_answer[:, None, :], scores, 2.0)  # non-answer positions rank last
    ranks = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
    masked = (ranks < counts[..., None]) & is_answer[:, None, :]
    noisy = jnp.where(masked, mask_id, tokens[:, None, :])
    weights = answer_lengths[:, None].astype(jnp.float32) / counts.astype(jnp.float32)
    key_mask = position < start + answer_lengths[:, None]
    return AnswerDraws(noisy, masked, weights, key_mask)


def elbo_from_cross_entropy(ce, draws: AnswerDraws) -> jax.Array:
    """`B [R]` (nats) from the per-token cross-entropy `ce [R, n, L]` of the draws."""
    per_draw = jnp.sum(jnp.where(draws.masked, ce, 0.0), axis=-1) * draws.weights  # [R, n]
    return -jnp.mean(per_draw, axis=-1)


class PreferenceOutput(NamedTuple):
    """loss: scalar mean over pairs; per pair [P]: margin = (B_θ(w) - B_ref(w)) -
    (B_θ(l) - B_ref(l)) in nats, chosen_drift = B_θ(w) - B_ref(w)."""

    loss: jax.Array
    margin: jax.Array
    chosen_drift: jax.Array
    rejected_drift: jax.Array


def dpo_loss(policy_chosen, reference_chosen, policy_rejected, reference_rejected,
             beta: float) -> PreferenceOutput:  # fmt: skip
    """DPO on log-likelihood surrogates, all [P]: `mean(-log σ(β · margin))`."""
    chosen_drift = policy_chosen - reference_chosen
    rejected_drift = policy_rejected - reference_rejected
    margin = chosen_drift - rejected_drift
    loss = jnp.mean(-jax.nn.log_sigmoid(beta * margin))
    return PreferenceOutput(loss, margin, chosen_drift, rejected_drift)
