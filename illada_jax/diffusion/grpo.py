"""diffu-GRPO, the policy-gradient step of online RL with verifiable rewards for masked-diffusion
models (d1: Zhao et al. 2025; docs/algorithms.md#reinforcement-learning-diffu-grpo). Pure math:
no model, sampler, mesh or data here.

Per prompt q the sampler draws G completions o_1..o_G and a reward function scores them r_i.
Rows are the P·G (prompt, completion) sequences, grouped by prompt: row `p·G + i` holds
completion i of prompt p, laid out as the sampler's canvas `[left-padded prompt, completion]`
(W columns, the last `gen_length` generated); `prompt_mask [R, W]` marks the real prompt tokens.

- Advantages: `A_i = r_i - mean_group(r)`, optionally divided by the group's sample standard
  deviation (ddof 1, as d1's `torch.std`) + `eps`: a group whose rewards are all equal has A = 0
  and teaches nothing but the KL term.
- Per-token log-probabilities from one forward pass: every prompt token independently replaced by
  the mask with probability `p_mask_prompt` (a fresh mask at every inner update: a regulariser),
  the completion **fully** masked; `log π(o^k | q', all-mask)` for every completion token k up to
  and including its first EOS (`completion_mask`).
- The loss (minimised; d1's objective with the sign flipped), per row i with |o_i| tokens:
  `-(1/|o_i|) Σ_k [ min(ρ_ik A_i, clip(ρ_ik, 1-ε, 1+ε) A_i) - β KL_ik ]`, averaged over rows
  (= over groups of `1/G Σ_i`), with `ρ_ik = π_θ / π_old` and the k3 estimator
  `KL_ik = π_ref/π_θ - log(π_ref/π_θ) - 1` (always >= 0, 0 where the policy is the reference).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def group_advantages(rewards: jax.Array, group_size: int, *, scale_by_std: bool = True,
                     eps: float = 1e-4) -> jax.Array:  # fmt: skip
    """rewards [P·G] (rows grouped by prompt) -> advantages [P·G] (see the module doc)."""
    groups = rewards.reshape(-1, group_size)
    centred = groups - jnp.mean(groups, axis=1, keepdims=True)
    if scale_by_std:
        centred = centred / (jnp.std(groups, axis=1, keepdims=True, ddof=1) + eps)
    return centred.reshape(-1)


def hide_prompt(key, prompt_mask, p_mask_prompt: float) -> jax.Array:
    """bool [R, W]: each real prompt token (`prompt_mask [R, W]`) hidden independently with
    probability `p_mask_prompt` (a fresh draw at every inner update)."""
    return prompt_mask & (jax.random.uniform(key, prompt_mask.shape) < p_mask_prompt)


def log_prob_input(tokens, prompt_mask, hidden_prompt, gen_length: int,
                   mask_id: int) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """The one-forward input (noisy [R, W], key mask [R, W]): the hidden prompt tokens and the
    whole completion (the last `gen_length` columns) replaced by the mask; the left padding
    before the prompt hidden from attention."""
    generated = jnp.arange(tokens.shape[1])[None, :] >= tokens.shape[1] - gen_length
    noisy = jnp.where(hidden_prompt | generated, mask_id, tokens)
    return noisy, prompt_mask | generated


def completion_mask(tokens, gen_length: int, stop_ids) -> jax.Array:
    """bool [R, W]: the scored completion tokens, up to and including the first stop id
    (EOS / end-of-turn) of the last `gen_length` columns (all of them when there is none)."""
    rows, width = tokens.shape
    stop = jnp.isin(tokens[:, width - gen_length :], jnp.asarray(stop_ids))
    scored = (jnp.cumsum(stop, axis=1) - stop) == 0
    return jnp.concatenate([jnp.zeros((rows, width - gen_length), bool), scored], axis=1)


class PolicyLoss(NamedTuple):
    """loss: scalar; metrics over completion tokens: mean KL, the fraction where the clip is
    active (ρ > 1+ε with A > 0, or ρ < 1-ε with A < 0: no gradient flows there) and the mean
    ratio."""

    loss: jax.Array
    kl: jax.Array
    clipped: jax.Array
    ratio: jax.Array


def policy_loss(log_probs, old_log_probs, ref_log_probs, advantages, completion, *,
                clip_eps: float, beta: float) -> PolicyLoss:  # fmt: skip
    """The clipped surrogate with the k3 KL penalty (module doc). log_probs, old_log_probs,
    ref_log_probs: [R, L] (used where `completion` [R, L] is True); advantages [R]."""
    ratio = jnp.exp(log_probs - old_log_probs)
    a = advantages[:, None]
    surrogate = jnp.minimum(ratio * a, jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps) * a)
    log_ref_over_policy = ref_log_probs - log_probs
    kl = jnp.exp(log_ref_over_policy) - log_ref_over_policy - 1
    per_token = jnp.where(completion, surrogate - beta * kl, 0.0)
    tokens = jnp.maximum(jnp.sum(completion, axis=1), 1)
    loss = -jnp.mean(jnp.sum(per_token, axis=1) / tokens)
    n = jnp.maximum(jnp.sum(completion), 1)
    clipped = ((ratio > 1 + clip_eps) & (a > 0)) | ((ratio < 1 - clip_eps) & (a < 0))
    clipped = clipped & completion
    return PolicyLoss(
        loss,
        jnp.sum(jnp.where(completion, kl, 0.0)) / n,
        jnp.sum(clipped) / n,
        jnp.sum(jnp.where(completion, ratio, 0.0)) / n,
    )
