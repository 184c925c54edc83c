"""The forward (masking) process and its randomness (docs/algorithms.md: the forward
process, time sampling, random length).

One time `t` per sequence; every token is masked independently with probability
`p_mask = (1 - eps) * t + eps`. Random-length training keeps static shapes: LLaDA's truncation marks
the tail as padding, iLLaDA's two-segment split assigns segment ids (block-diagonal attention) and
restarts positions in the second segment, as a variable-length kernel would.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mask_probability(t: jax.Array, eps: float) -> jax.Array:
    """t: [batch] in [0, 1) -> p_mask: [batch] in [eps, 1)."""
    return (1.0 - eps) * t + eps


def sample_times(key: jax.Array, batch_size: int, method: str) -> jax.Array:
    """Diffusion times, one per sequence of the *global* batch: [batch] in [0, 1).

    `uniform`: i.i.d. U[0, 1). `antithetic`: stratified (MDLM's low-discrepancy sampler) — row r
    gets one uniform draw inside its own stratum [r/B, (r+1)/B), so every batch covers the whole
    time range evenly and the loss variance drops.
    """
    u = jax.random.uniform(key, (batch_size,), jnp.float32)
    if method == "uniform":
        return u
    if method == "antithetic":
        stratum = jnp.arange(batch_size, dtype=jnp.float32)
        # Clamp: (r + u) / B can round up to (r + 1) / B in fp32, the next stratum's start.
        upper = jnp.nextafter((stratum + 1) / batch_size, jnp.float32(0.0))
        return jnp.minimum((stratum + u) / batch_size, upper)
    raise ValueError(f"time sampling method {method!r} is not one of uniform, antithetic")


def apply_mask(
    key: jax.Array,
    tokens: jax.Array,
    mask_prob: jax.Array,
    mask_id: int,
    maskable: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Independent Bernoulli masking.

    tokens: [batch, length] int; mask_prob: [batch], or [batch, length] (one per token: block
    diffusion); maskable: [batch, length] bool or None (all).
    Returns (noisy tokens [batch, length], is_masked [batch, length] bool).
    """
    draws = jax.random.uniform(key, tokens.shape, jnp.float32)
    is_masked = draws < (mask_prob if mask_prob.ndim == 2 else mask_prob[:, None])
    if maskable is not None:
        is_masked = is_masked & maskable
    return jnp.where(is_masked, jnp.asarray(mask_id, tokens.dtype), tokens), is_masked


def random_length_valid(key: jax.Array, batch_size: int, length: int, prob: float) -> jax.Array:
    """LLaDA's random-length trick with static shapes (docs/algorithms.md#random-length).

    With probability `prob` *per step* the whole batch is cut to a length l ~ U{1..length}:
    positions >= l become padding (invisible to attention, outside the loss and its normaliser).
    Returns valid: [batch, length] bool.
    """
    apply_key, length_key = jax.random.split(key)
    truncate = jax.random.uniform(apply_key, ()) < prob
    cut = jax.random.randint(length_key, (), 1, length + 1)
    kept = jnp.where(truncate, cut, length)
    return jnp.broadcast_to(jnp.arange(length) < kept, (batch_size, length))


def two_segment_split(key: jax.Array, segment_ids: jax.Array, positions: jax.Array,
                      prob: float) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """iLLaDA's random-length training (docs/algorithms.md#random-length): each sequence,
    with probability `prob`, is cut at a uniform point c ~ U{1..length-1}; the segment containing c
    is split in two that do not attend to each other, and its part from c on restarts its positions
    at 0.

    segment_ids, positions: [batch, length] int32, segment id 0 = padding (kept as is). Plain
    windows pass ones and 0..L-1. Segment k becomes 2k-1 before the cut and 2k after it, so ids
    stay distinct and non-zero. Returns the new (segment_ids, positions).
    """
    batch_size, length = segment_ids.shape
    split_key, cut_key = jax.random.split(key)
    split = jax.random.uniform(split_key, (batch_size,)) < prob
    if length < 2:
        split = jnp.zeros_like(split)
    cut = jax.random.randint(cut_key, (batch_size, 1), 1, max(length, 2))
    index = jnp.arange(length, dtype=jnp.int32)[None, :]
    after = split[:, None] & (index >= cut)
    new_segments = jnp.where(segment_ids == 0, 0, 2 * segment_ids - 1 + after)
    segment_at_cut = jnp.take_along_axis(segment_ids, cut, axis=1)
    position_at_cut = jnp.take_along_axis(positions, cut, axis=1)
    restart = after & (segment_ids == segment_at_cut) & (segment_ids != 0)
    new_positions = jnp.where(restart, positions - position_at_cut, positions)
    return new_segments.astype(jnp.int32), new_positions.astype(jnp.int32)


def mask_exact_count(
    key: jax.Array, tokens: jax.Array, mask_id: int, valid: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The low-variance `l`-form of the forward process (docs/algorithms.md#the-held-out-bound,
    LLaDA eq. 14).

    Per row: l ~ U{1..n} with n real tokens, then exactly l of them masked, chosen uniformly
    without replacement. Returns (noisy tokens, is_masked [batch, length], weight [batch] = n / l);
    `sum(is_masked * ce) * weight` is an unbiased estimate of the row's negative ELBO.
    """
    batch_size, length = tokens.shape
    valid = jnp.ones_like(tokens, bool) if valid is None else valid
    n_real = jnp.sum(valid, axis=1)
    count_key, order_key = jax.random.split(key)
    u = jax.random.uniform(count_key, (batch_size,))
    count = jnp.clip(jnp.floor(u * n_real).astype(jnp.int32) + 1, 1, jnp.maximum(n_real, 1))
    scores = jnp.where(valid, jax.random.uniform(order_key, tokens.shape), jnp.inf)
    rank = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
    is_masked = (rank < count[:, None]) & valid
    noisy = jnp.where(is_masked, jnp.asarray(mask_id, tokens.dtype), tokens)
    return noisy, is_masked, n_real / count
