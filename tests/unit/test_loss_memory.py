"""Chunked cross-entropy keeps [batch, length, vocab] fp32 logits out of memory
(docs/algorithms.md#the-pre-training-loss).

Compiles forward+backward of the pre-training objective and reads XLA's own buffer accounting: with
small chunks the temporary memory must stay well below the size of the full logits tensor, while
one chunk spanning the whole sequence needs at least that much.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from illada_jax.config.schema import DiffusionConfig, ModelConfig
from illada_jax.model.transformer import abstract_model
from illada_jax.train.objective import diffusion_loss

BATCH, LENGTH, VOCAB = 16, 256, 32768
FULL_LOGITS_BYTES = BATCH * LENGTH * VOCAB * 4  # 512 MiB


def _temp_bytes(chunk: int) -> int:
    cfg = ModelConfig(
        vocab_size=VOCAB,
        d_model=64,
        n_layers=1,
        n_heads=2,
        n_kv_heads=1,
        head_dim=32,
        mlp_dim=128,
        max_seq_len=LENGTH,
    )
    graphdef, params = nnx.split(abstract_model(cfg))
    diffusion = DiffusionConfig(random_length_mode="none", loss_chunk_size=chunk)

    def loss(p, tokens, key):
        return diffusion_loss(nnx.merge(graphdef, p), {"tokens": tokens}, key, diffusion)[0]

    tokens = jax.ShapeDtypeStruct((BATCH, LENGTH), jnp.int32)
    key = jax.eval_shape(lambda: jax.random.key(0))
    compiled = jax.jit(jax.grad(loss)).lower(params, tokens, key).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_loss_never_holds_full_logits():
    chunked = _temp_bytes(chunk=4)
    unchunked = _temp_bytes(chunk=LENGTH)
    assert unchunked >= FULL_LOGITS_BYTES, unchunked
    assert chunked < FULL_LOGITS_BYTES / 4, (chunked, FULL_LOGITS_BYTES)
