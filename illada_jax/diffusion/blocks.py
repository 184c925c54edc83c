"""Block diffusion's forward process (docs/algorithms.md#block-diffusion; BD3-LM, Arriola et al.
2025): the sequence is cut into K = L / block_size blocks, each with its own diffusion time, and
each noisy block is denoised given the clean blocks before it.

Training runs the network once on the canvas [x_t ; x] of 2L positions (the noisy copy, then the
clean one, both with positions 0..L-1) under the `noisy_clean` attention pattern
(`model/masks.py`); only the noisy half is scored. With one block (block_size = L) no noisy
block reads the clean copy, so the clean half is left out and the computation is masked
diffusion's, operation for operation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from illada_jax.diffusion import masking


def block_times(key: jax.Array, batch_size: int, n_blocks: int, method: str) -> jax.Array:
    """Diffusion times, one per (row, block): [batch, n_blocks] in [0, 1).

    `antithetic` stratifies all batch·n_blocks draws together (one per stratum, as for whole
    sequences) and deals the strata to the cells in a random order, so every block position
    sees uniform times (an unbiased estimator) while the batch covers [0, 1) evenly. With one
    block this is `masking.sample_times` of the same key, draw for draw.
    """
    times = masking.sample_times(key, batch_size * n_blocks, method)
    if n_blocks > 1 and method == "antithetic":
        times = jax.random.permutation(jax.random.fold_in(key, 1), times)
    return times.reshape(batch_size, n_blocks)


def per_token(block_values: jax.Array, block_size: int) -> jax.Array:
    """[batch, n_blocks] -> [batch, n_blocks * block_size]: each block's value on its tokens."""
    return jnp.repeat(block_values, block_size, axis=1)


def noisy_clean_canvas(noisy: jax.Array, tokens: jax.Array, positions, key_mask, segment_ids):
    """The 2L training canvas: ([x_t ; x] [B, 2L], positions, key_mask, segment_ids doubled the
    same way; None stays None except positions, which default to 0..L-1 in both halves)."""
    batch, length = tokens.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    twice = lambda x: None if x is None else jnp.concatenate([x, x], axis=1)  # noqa: E731
    return (jnp.concatenate([noisy, tokens], axis=1), twice(positions), twice(key_mask),
            twice(segment_ids))  # fmt: skip


def mask_exact_count_per_block(key: jax.Array, tokens: jax.Array, mask_id: int, block_size: int,
                               valid: jax.Array | None = None):  # fmt: skip
    """`masking.mask_exact_count` inside every block: per (row, block) with n real tokens, l ~
    U{1..n} of them masked, weight n / l (0 for a block without real tokens). Returns (noisy
    [B, L], is_masked [B, L], weight per token [B, L])."""
    batch, length = tokens.shape
    n_blocks = length // block_size
    blocked = lambda x: x.reshape(batch * n_blocks, block_size)  # noqa: E731
    noisy, is_masked, weight = masking.mask_exact_count(
        key, blocked(tokens), mask_id, None if valid is None else blocked(valid)
    )
    weight = per_token(weight.reshape(batch, n_blocks), block_size)
    return noisy.reshape(batch, length), is_masked.reshape(batch, length), weight
