"""Which keys a query may see: the attention patterns of the objectives
(docs/algorithms.md#attention-patterns).

A pattern is static (a hashable dataclass chosen by the objective, not data) and is applied on top
of padding and segments, which stay per-row inputs of the model:
- `bidirectional`: every query sees every key (masked diffusion, LLaDA / iLLaDA);
- `causal`: position i sees keys j <= i (the autoregressive objective);
- `block_causal`: the canvas is cut into blocks of `block_size`; a query sees its own block and
  every earlier one (a block-diffusion model's inference canvas: committed blocks are clean);
- `noisy_clean`: block diffusion's training canvas [x_t ; x] of 2·`length` positions (BD3-LM): a
  noisy query sees its own noisy block and the clean blocks before it; a clean query sees the clean
  blocks up to its own. The noisy half never leaks the clean copy of its own block.

`allows(q, kv)` is written with arithmetic and comparison operators only, so the same rule builds
the dense boolean mask (jax arrays, the `xla` and `cudnn` kernels) and splash's block-sparse mask
(numpy, `SplashPatternMask`): splash classifies each tile as empty (skipped), full or partial.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

PATTERN_KINDS = ("bidirectional", "causal", "block_causal", "noisy_clean")


@dataclasses.dataclass(frozen=True)
class AttentionPattern:
    """kind: one of PATTERN_KINDS; block_size: the block length (block_causal, noisy_clean);
    length: the sequence length L of each half of the noisy_clean canvas (2L positions)."""

    kind: str = "bidirectional"
    block_size: int = 0
    length: int = 0

    def __post_init__(self) -> None:
        if self.kind not in PATTERN_KINDS:
            raise ValueError(f"attention pattern {self.kind!r} is not one of {PATTERN_KINDS}")
        if self.kind in ("block_causal", "noisy_clean") and self.block_size < 1:
            raise ValueError(f"a {self.kind} pattern needs block_size >= 1")
        if self.kind == "noisy_clean" and (self.length < 1 or self.length % self.block_size):
            raise ValueError(f"a noisy_clean pattern needs a length that block_size="
                             f"{self.block_size} divides, got {self.length}")  # fmt: skip

    @property
    def is_full(self) -> bool:
        """True for the bidirectional pattern, which masks nothing."""
        return self.kind == "bidirectional"

    def allows(self, q, kv):
        """Whether query position `q` may attend to key position `kv` (broadcasting int arrays,
        numpy or jax; operators only)."""
        if self.kind == "bidirectional":
            return (q >= 0) & (kv >= 0)
        if self.kind == "causal":
            return q >= kv
        size = self.block_size
        if self.kind == "block_causal":
            return q // size >= kv // size
        half = self.length
        q_noisy, kv_noisy = q < half, kv < half
        q_block, kv_block = (q % half) // size, (kv % half) // size
        own_noisy_block = q_noisy & kv_noisy & (q_block == kv_block)
        clean_before_noisy = q_noisy & ~kv_noisy & (kv_block < q_block)
        clean_block_causal = ~q_noisy & ~kv_noisy & (kv_block <= q_block)
        return own_noisy_block | clean_before_noisy | clean_block_causal

    def dense(self, q_len: int, kv_len: int, q_offset=0) -> jnp.ndarray | None:
        """The boolean mask [q_len, kv_len] for queries at positions q_offset.. (may be traced)
        against keys 0..kv_len-1; None for the bidirectional pattern."""
        if self.is_full:
            return None
        q = q_offset + jnp.arange(q_len, dtype=jnp.int32)[:, None]
        return self.allows(q, jnp.arange(kv_len, dtype=jnp.int32)[None, :])


BIDIRECTIONAL = AttentionPattern()
CAUSAL = AttentionPattern("causal")


@functools.cache
def _splash_mask_class():
    """SplashPatternMask, made on first use (importing splash loads Pallas)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as splash_mask,
    )

    class SplashPatternMask(splash_mask.Mask):
        """A pattern as splash's mask, evaluated lazily per tile (a 2·8192 canvas never exists
        as one dense array)."""

        def __init__(self, pattern: AttentionPattern, padded_length: int, real_length: int):
            self.pattern, self.padded_length, self.real_length = pattern, padded_length, real_length

        @property
        def shape(self) -> tuple[int, int]:
            return (self.padded_length, self.padded_length)

        def __getitem__(self, idx) -> np.ndarray:
            q_slice, kv_slice = idx
            q = np.arange(*q_slice.indices(self.padded_length))[:, None]
            kv = np.arange(*kv_slice.indices(self.padded_length))[None, :]
            padding = (q >= self.real_length) | (kv >= self.real_length)
            return np.asarray(self.pattern.allows(q, kv) | padding)

        def _key(self):
            return (self.pattern, self.padded_length, self.real_length)

        def __eq__(self, other) -> bool:
            return isinstance(other, SplashPatternMask) and other._key() == self._key()

        def __hash__(self) -> int:
            return hash(self._key())

    return SplashPatternMask


def splash_pattern_mask(pattern: AttentionPattern, padded_length: int, real_length: int):
    """Splash's mask object for `pattern` over a canvas padded to `padded_length`: the pattern on
    the first `real_length` positions; the padding sees and is seen by everything (segment ids keep
    it apart), so every query row is non-empty as splash requires."""
    if pattern.is_full:
        from jax.experimental.pallas.ops.tpu.splash_attention import (
            splash_attention_mask as splash_mask,
        )

        return splash_mask.FullMask((padded_length, padded_length))
    return _splash_mask_class()(pattern, padded_length, real_length)
