"""Masked-diffusion losses (docs/algorithms.md: the pre-training loss, SFT in both styles).

All losses consume a per-token cross-entropy `ce [batch, length]` computed by
`token_cross_entropy`, which evaluates the output head chunk by chunk so that fp32 logits of shape
[batch, length, vocab] never exist at once (iLLaDA's 155k vocabulary at 8192 positions would be
5 GB per sequence).

- pretrain (and iLLaDA SFT, which uses the same masking on stream windows):
  `sum(is_masked * ce / p_mask) / (number of real tokens)`; the normaliser is B·L, or B·l under
  LLaDA's random-length truncation, so fully unmasked sequences still count.
- LLaDA SFT: `mean_b( sum_i is_masked * ce / (p_mask_b * answer_len_b) )` with
  `answer_len_b = L - prompt_len_b` (EOS padding is part of the answer).
Each loss also reports the number of masked tokens and their unweighted mean CE for logging.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class LossOutput(NamedTuple):
    loss: jax.Array  # scalar, the objective being minimised
    masked_ce: jax.Array  # scalar, mean CE over masked tokens (no 1/p weight)
    num_masked: jax.Array  # scalar int32


def token_cross_entropy(
    hidden: jax.Array,
    targets: jax.Array,
    project: Callable[[jax.Array], jax.Array],
    chunk_size: int,
) -> jax.Array:
    """Cross-entropy of every position, evaluated in sequence chunks.

    hidden: [batch, length, d_model]; targets: [batch, length] int;
    project: hidden [batch, chunk, d_model] -> logits [batch, chunk, vocab] (fp32).
    Returns ce: [batch, length] fp32. Each chunk is rematerialised in the backward pass, so peak
    memory holds one [batch, chunk, vocab] block of logits instead of the full tensor.
    """
    batch, length, d_model = hidden.shape
    chunk = min(chunk_size, length)
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    hidden_chunks = hidden.reshape(batch, n_chunks, chunk, d_model).swapaxes(0, 1)
    target_chunks = targets.reshape(batch, n_chunks, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def chunk_ce(h, y):
        logits = project(h).astype(jnp.float32)
        target_logit = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
        return jax.nn.logsumexp(logits, axis=-1) - target_logit

    _, ce = jax.lax.scan(lambda _, xs: (None, chunk_ce(*xs)), None, (hidden_chunks, target_chunks))
    return ce.swapaxes(0, 1).reshape(batch, n_chunks * chunk)[:, :length]


def _masked_stats(ce: jax.Array, is_masked: jax.Array) -> tuple[jax.Array, jax.Array]:
    num_masked = jnp.sum(is_masked, dtype=jnp.int32)
    masked_ce = jnp.sum(jnp.where(is_masked, ce, 0.0)) / jnp.maximum(num_masked, 1)
    return masked_ce, num_masked


def pretrain_loss(
    ce: jax.Array, is_masked: jax.Array, mask_prob: jax.Array, valid: jax.Array | None = None
) -> LossOutput:
    """docs/algorithms.md#the-pre-training-loss. ce, is_masked, valid: [batch, length]; mask_prob:
    [batch], or [batch, length] (block diffusion: each token's block's probability).

    valid marks real tokens (None = all); it sets the normaliser (B·L, or B·l when truncated),
    and a masked position outside it is ignored.
    """
    if valid is not None:
        is_masked = is_masked & valid
    per_token = mask_prob if mask_prob.ndim == 2 else mask_prob[:, None]
    weighted = jnp.where(is_masked, ce / per_token, 0.0)
    normaliser = ce.size if valid is None else jnp.maximum(jnp.sum(valid), 1)
    return LossOutput(jnp.sum(weighted) / normaliser, *_masked_stats(ce, is_masked))


def sft_llada_loss(
    ce: jax.Array, is_masked: jax.Array, mask_prob: jax.Array, prompt_lengths: jax.Array
) -> LossOutput:
    """docs/algorithms.md#sft-llada-style. ce, is_masked: [batch, length]; mask_prob,
    prompt_lengths: [batch].

    The caller never masks prompt positions; answer_len_b = length - prompt_len_b counts the EOS
    padding, which is part of the response.
    """
    length = ce.shape[1]
    answer_len = jnp.maximum(length - prompt_lengths, 1).astype(jnp.float32)
    per_sequence = jnp.sum(jnp.where(is_masked, ce, 0.0), axis=1) / (mask_prob * answer_len)
    return LossOutput(jnp.mean(per_sequence), *_masked_stats(ce, is_masked))
