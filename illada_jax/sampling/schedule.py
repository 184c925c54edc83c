"""Per-step rules of masked-diffusion sampling (docs/algorithms.md#sampling and the
sections after it).

How many tokens each step commits (the transfer schedule), how candidates are drawn (Gumbel-max
with high-resolution noise), how confident each candidate is, and which masked positions are
committed (top-k by rank, or Fast-dLLM's confidence threshold). Pure functions on arrays; the
loops that use them live in `generate.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from illada_jax.errors import IlladaError

REMASKING = ("low_confidence", "random")
NOISE = ("fp32_hires", "float64")


class SamplingError(IlladaError, ValueError):
    """Sampling arguments that cannot work together (names the argument and the fix)."""


def transfer_schedule(block_length: int, steps: int) -> np.ndarray:
    """Tokens committed at each of `steps` steps of one block of `block_length` masks: [steps].

    `base = K // n` everywhere plus one on the first `K % n` steps (docs/algorithms.md#sampling), so
    the counts sum to K and the earliest steps take the remainder.
    """
    if steps < 1 or block_length < 1:
        raise SamplingError(f"block_length={block_length} and steps={steps} must be >= 1")
    base, rem = divmod(block_length, steps)
    return np.array([base + (1 if j < rem else 0) for j in range(steps)], np.int32)


def block_plan(gen_length: int, block_length: int, steps: int) -> tuple[int, int]:
    """(number of blocks, steps per block) for a fixed canvas, validating
    docs/algorithms.md#sampling's constraints."""
    if gen_length < 1:
        raise SamplingError(f"gen_length={gen_length} must be >= 1")
    if block_length < 1 or gen_length % block_length:
        raise SamplingError(
            f"gen_length={gen_length} is not a multiple of block_length={block_length}; "
            "choose block_length dividing gen_length (block_length=gen_length is pure diffusion)"
        )
    num_blocks = gen_length // block_length
    if steps < 1 or steps % num_blocks:
        raise SamplingError(
            f"steps={steps} must be a positive multiple of the number of blocks "
            f"({gen_length}/{block_length}={num_blocks}); e.g. steps={num_blocks * block_length}"
        )
    return num_blocks, steps // num_blocks


def gumbel_noise(key: jax.Array, shape: tuple[int, ...], noise: str) -> jax.Array:
    """Standard Gumbel draws g = -log(-log u) for Gumbel-max sampling
    (docs/algorithms.md#gumbel-noise).

    `fp32_hires`: the uniform is built from two independent 24-bit integers,
    v = (hi + lo·2⁻²⁴)·2⁻²⁴, so it resolves values near 0 down to 2⁻⁴⁸ and the largest draw is ≈33
    (a plain fp32 uniform caps it at ≈16, which silently lowers the temperature).
    `float64`: the reference's float64 path; needs `jax.enable_x64` (the caller sets it).
    """
    if noise == "float64":
        u = jax.random.uniform(key, shape, jnp.float64, minval=jnp.finfo(jnp.float64).tiny)
        return -jnp.log(-jnp.log(u))
    hi_key, lo_key = jax.random.split(key)
    hi = jax.random.randint(hi_key, shape, 0, 1 << 24).astype(jnp.float32)
    lo = jax.random.randint(lo_key, shape, 0, 1 << 24).astype(jnp.float32)
    # In [0, 1) mathematically; fp32 rounding can give exactly 1 (hi = 2^24-1, lo >= 2^23), and
    # v = 0 would give log(0): clamp both ends.
    v = jnp.clip((hi + lo * 2.0**-24) * 2.0**-24, 2.0**-48, 1.0 - 2.0**-24)
    exponential = -jnp.log1p(-v)  # Exp(1)
    return -jnp.log(exponential)


def first_argmax(values: jax.Array) -> jax.Array:
    """argmax over the last axis (the first index of the maximum, as `jnp.argmax`) -> int32.

    Two plain reductions (max, then the smallest index holding it) instead of XLA's variadic
    (value, index) reduce: about 5x faster on CPU over a vocabulary, where it was a tenth of a
    sampling step.
    """
    top = jnp.max(values, axis=-1, keepdims=True)
    index = jnp.arange(values.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(values == top, index, values.shape[-1]), axis=-1).astype(jnp.int32)


def sample_candidates(logits, key, temperature: float, noise: str):
    """x0 = argmax(logits/τ + g) (a draw from softmax(logits/τ)); τ = 0 is greedy argmax.

    logits: [..., vocab] fp32 -> int32 [...].
    """
    if temperature == 0.0:
        return first_argmax(logits)
    dtype = jnp.float64 if noise == "float64" else jnp.float32
    g = gumbel_noise(key, logits.shape, noise)
    return first_argmax(logits.astype(dtype) / temperature + g)


def confidences(logits, x0, key, remasking: str, suppressed_ids: tuple[int, ...] = ()):
    """Confidence of each candidate: [..., vocab], [...] -> fp32 [...].

    `low_confidence`: softmax(logits)[x0] of the un-noised, un-tempered logits; `random`: U(0,1).
    Candidates whose token is in `suppressed_ids` (EOS/EoT with `confidence_eos_eot_inf`) get 0,
    so they are committed last (docs/algorithms.md#sampling: the intended behaviour of the
    reference).
    """
    if remasking == "low_confidence":
        # softmax(logits)[x0] = exp(logits[x0] - logsumexp(logits)): one pass over the
        # vocabulary, no [..., vocab] probability tensor.
        logits = logits.astype(jnp.float32)
        chosen = jnp.take_along_axis(logits, x0[..., None], axis=-1)[..., 0]
        conf = jnp.exp(chosen - jax.nn.logsumexp(logits, axis=-1))
    elif remasking == "random":
        conf = jax.random.uniform(key, x0.shape, jnp.float32)
    else:
        raise SamplingError(f"remasking={remasking!r}: choose one of {REMASKING}")
    for token in suppressed_ids:
        conf = jnp.where(x0 == token, 0.0, conf)
    return conf


def descending_rank(scores: jax.Array) -> jax.Array:
    """Rank of each entry in its row when sorted by descending score, ties to the lower index.

    scores: [batch, n] -> int32 [batch, n] (0 = best). A rank comparison `rank < k` is top-k
    with a per-row, per-step k that need not be static (docs/algorithms.md#sampling).
    """
    order = jnp.argsort(-scores, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1).astype(jnp.int32)


def select_top_k(conf, eligible, k):
    """Commit the k most confident eligible positions per row.

    conf: fp32 [batch, n]; eligible: bool [batch, n] (masked and inside the block); k: int
    scalar or [batch]. Returns bool [batch, n]. Never selects an ineligible position, even when k
    exceeds the number of eligible ones.
    """
    scores = jnp.where(eligible, conf, -jnp.inf)
    k = jnp.broadcast_to(jnp.asarray(k, jnp.int32), (conf.shape[0],))
    return (descending_rank(scores) < k[:, None]) & eligible


def select_threshold(conf, eligible, threshold: float):
    """Fast-dLLM parallel decoding (docs/algorithms.md#caches-and-parallel-decoding): the most
    confident eligible position plus every eligible position whose confidence is >= `threshold`.
    Shapes as `select_top_k`."""
    scores = jnp.where(eligible, conf, -jnp.inf)
    best = descending_rank(scores) == 0
    return eligible & (best | (conf >= threshold))
