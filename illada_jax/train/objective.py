"""Wires the forward process, the network and the loss into one scalar objective
(docs/algorithms.md#the-pre-training-loss).

This is the only place where diffusion meets the model. A batch is a dict of arrays:
- `tokens [batch, length] int32` (always);
- `segment_ids`, `positions [batch, length] int32` (optional; segment id 0 = padding, other ids
  separate documents, see `illada_jax.data.pipeline.packing`);
- `prompt_lengths [batch] int32` (objective `sft_llada` only).

iLLaDA's two-segment split cuts every chosen row once, splitting whichever segment (document) holds
the cut point; other segments are untouched.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from illada_jax.config.schema import DiffusionConfig
from illada_jax.diffusion import losses, masking


def diffusion_loss(
    model, batch: dict, key: jax.Array, cfg: DiffusionConfig
) -> tuple[jax.Array, dict]:
    """Sample t, mask, run the network, return (loss, metrics). `model` is a `Transformer`."""
    tokens = batch["tokens"]
    batch_size, length = tokens.shape
    time_key, mask_key, length_key = jax.random.split(key, 3)
    mask_prob = masking.mask_probability(
        masking.sample_times(time_key, batch_size, cfg.time_sampling), cfg.mask_eps
    )

    segment_ids, positions = batch.get("segment_ids"), batch.get("positions")
    # Segment id 0 marks padding: outside attention, masking and the loss normaliser.
    valid = None if segment_ids is None else segment_ids != 0
    if cfg.random_length_mode == "llada_truncate":
        truncated = masking.random_length_valid(
            length_key, batch_size, length, cfg.random_length_prob
        )
        valid = truncated if valid is None else valid & truncated
    elif cfg.random_length_mode == "illada_split":
        if segment_ids is None:
            segment_ids = jnp.ones((batch_size, length), jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch_size, length))
        segment_ids, positions = masking.two_segment_split(
            length_key, segment_ids, positions, cfg.two_segment_prob
        )

    maskable = valid
    if cfg.objective == "sft_llada":
        if "prompt_lengths" not in batch:
            raise ValueError("objective=sft_llada needs batch['prompt_lengths'] [batch] int32")
        is_answer = jnp.arange(length)[None, :] >= batch["prompt_lengths"][:, None]
        maskable = is_answer if maskable is None else maskable & is_answer

    noisy, is_masked = masking.apply_mask(
        mask_key, tokens, mask_prob, model.cfg.mask_token_id, maskable
    )
    hidden = model.hidden_states(noisy, positions, key_mask=valid, segment_ids=segment_ids)
    ce = losses.token_cross_entropy(hidden, tokens, model.project, cfg.loss_chunk_size)
    if cfg.objective == "sft_llada":
        out = losses.sft_llada_loss(ce, is_masked, mask_prob, batch["prompt_lengths"])
    else:  # pretrain and sft_illada share the pre-training loss (docs/algorithms.md#sft-illada-style)
        out = losses.pretrain_loss(ce, is_masked, mask_prob, valid)
    metrics = {
        "loss": out.loss,
        "masked_ce": out.masked_ce,
        "num_masked": out.num_masked,
        "mask_prob": jnp.mean(mask_prob),
    }
    return out.loss, metrics


def elbo_bound(model, batch: dict, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Held-out negative ELBO (an upper bound on the NLL), summed over the batch.

    Uses the `l`-form (exactly l of n real tokens masked, weight n/l) with the caller's fixed key,
    so numbers are comparable across runs and checkpoints. Returns (sum of the bound in nats,
    number of real tokens); their ratio is nats per token.
    """
    tokens = batch["tokens"]
    segment_ids, positions = batch.get("segment_ids"), batch.get("positions")
    valid = None if segment_ids is None else segment_ids != 0
    noisy, is_masked, weight = masking.mask_exact_count(key, tokens, model.cfg.mask_token_id, valid)
    hidden = model.hidden_states(noisy, positions, key_mask=valid, segment_ids=segment_ids)
    ce = losses.token_cross_entropy(hidden, tokens, model.project, chunk_size=512)
    per_row = jnp.sum(jnp.where(is_masked, ce, 0.0), axis=1) * weight
    n_tokens = tokens.size if valid is None else jnp.sum(valid)
    return jnp.sum(per_row), n_tokens
