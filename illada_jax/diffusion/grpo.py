"""diffu-GRPO, the policy-gradient step of online RL with verifiable rewards for masked-diffusion
models (d1: Zhao et al. 2025; docs/algorithms.md#reinforcement-learning-diffu-grpo). Pure math:
no model, sampler, mesh or data here.

Per prompt q the sampler draws G completions o_1..o_G and a reward function scores them r_i.
Rows are the P·G (prompt, completion) sequences, grouped by prompt: row `p·G + i` holds
completion i of prompt p, laid out `[prompt, completion, pad...]`.

- Advantages: `A_i = r_i - mean_group(r)`, optionally divided by the group's sample standard
  deviation (ddof 1, as d1's `torch.std`) + `eps`: a group whose rewards are all equal has A = 0
  and teaches nothing but the KL term.
- Per-token log-probabilities from one forward pass: every prompt token independently replaced by
  the mask with probability `p_mask_prompt` (a fresh mask at every inner update: a regulariser),
  the completion **fully** masked; `log π(o^k | q', all-mask)` for every completion token k.
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


def mask_for_log_probs(key, tokens, prompt_lengths, completion_lengths, mask_id: int,
                       p_mask_prompt: float) -> tuple[jax.Array, jax.Array, jax.Array]:  # fmt: skip
    """The one-forward input: (noisy [R, L], completion positions [R, L] bool, key mask [R, L]).
    Prompt tokens masked independently with `p_mask_prompt`, completion tokens all masked,
    padding (after prompt + completion) hidden from attention."""
    position = jnp.arange(tokens.shape[1])[None, :]
    in_prompt = position < prompt_lengths[:, None]
    end = prompt_lengths[:, None] + completion_lengths[:, None]
    is_completion = ~in_prompt & (position < end)
    prompt_masked = in_prompt & (jax.random.uniform(key, tokens.shape) < p_mask_prompt)
    noisy = jnp.where(is_completion | prompt_masked, mask_id, tokens)
    return noisy, is_completion, position < end


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
