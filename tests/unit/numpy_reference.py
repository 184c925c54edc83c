"""Shared test helpers: tiny random models and an independent float64 NumPy forward pass.

The reference (`ref_forward`) is written from docs/models.md#the-block and never calls `illada_jax`
code; it only reads parameters out of a model (`model_params_f64`). Used by the model, sampling and
scoring tests (`from numpy_reference import ...`; pytest puts this directory on sys.path).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from illada_jax.config.schema import ModelConfig
from illada_jax.model import Transformer

BATCH, LENGTH, VOCAB = 2, 12, 64


# ---------------------------------------------------------------------------------------------
# Model construction helpers
# ---------------------------------------------------------------------------------------------


def tiny_config(**overrides) -> ModelConfig:
    kwargs = dict(
        name="test", vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4,
        head_dim=8, mlp_dim=48, max_seq_len=64, rope_theta=10_000.0, norm_eps=1e-5,
        init_std=0.2, tie_embeddings=True,
    )  # fmt: skip
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


def randomize_norm_scales(model: Transformer, seed: int) -> None:
    """Replace the ones-initialised RMSNorm scales by 1 + 0.1 * N(0, 1) (deterministic)."""
    rng = np.random.default_rng(seed + 12345)
    for norm in (model.blocks.attn_norm, model.blocks.mlp_norm, model.final_norm):
        old = norm.scale[...]
        norm.scale[...] = jnp.asarray(1.0 + 0.1 * rng.standard_normal(old.shape), old.dtype)


@functools.cache
def make_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """Cached per (config, seed): tests must not mutate the returned model."""
    model = Transformer(cfg, rngs=nnx.Rngs(seed))
    randomize_norm_scales(model, seed)
    return model


def random_tokens(seed: int, batch: int = BATCH, length: int = LENGTH) -> jax.Array:
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(0, VOCAB, size=(batch, length)), jnp.int32)


def lengths_to_key_mask(lengths, length: int = LENGTH) -> jax.Array:
    """[batch] real lengths -> [batch, length] bool, True = real token (right padding)."""
    return jnp.asarray(np.arange(length)[None, :] < np.asarray(lengths)[:, None])


# ---------------------------------------------------------------------------------------------
# Independent float64 NumPy reference (docs/models.md#the-block)
# ---------------------------------------------------------------------------------------------


def model_params_f64(model: Transformer) -> dict[str, np.ndarray]:
    """Read the parameters out of the model as float64 NumPy arrays (no model code is run)."""
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    b = model.blocks
    params = dict(
        embed=f64(model.embed[...]),  # [V, d]
        final_norm=f64(model.final_norm.scale[...]),  # [d]
        attn_norm=f64(b.attn_norm.scale[...]),  # [n_layers, d]
        q=f64(b.attn.q_proj[...]),  # [n_layers, d, H, hd]
        k=f64(b.attn.k_proj[...]),  # [n_layers, d, KV, hd]
        v=f64(b.attn.v_proj[...]),  # [n_layers, d, KV, hd]
        o=f64(b.attn.o_proj[...]),  # [n_layers, H, hd, d]
        mlp_norm=f64(b.mlp_norm.scale[...]),  # [n_layers, d]
        gate=f64(b.mlp.gate[...]),  # [n_layers, d, mlp]
        up=f64(b.mlp.up[...]),  # [n_layers, d, mlp]
        down=f64(b.mlp.down[...]),  # [n_layers, mlp, d]
    )
    if not model.cfg.tie_embeddings:
        params["lm_head"] = f64(model.lm_head[...])  # [d, V]
    return params


def ref_rms_norm(x, scale, eps):
    """x: [..., d], scale: [d] -> x * rsqrt(mean(x^2) + eps) * scale."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def ref_rope(x, positions, theta):
    """Rotate-half RoPE. x: [B, L, N, hd]; positions: [B, L] -> [B, L, N, hd]."""
    hd = x.shape[-1]
    inv_freq = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)  # [hd/2]
    angles = positions[..., None].astype(np.float64) * inv_freq  # [B, L, hd/2]
    angles = np.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, L, 1, hd]
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    rotated = np.concatenate([-x2, x1], axis=-1)
    return x * np.cos(angles) + rotated * np.sin(angles)


def ref_visible(key_mask, segment_ids):
    """key_mask, segment_ids: [B, L] -> visible[b, query, key]: [B, L, L] bool."""
    visible = np.broadcast_to(key_mask[:, None, :], key_mask.shape + key_mask.shape[-1:])
    return visible & (segment_ids[:, :, None] == segment_ids[:, None, :])


def ref_attention(q, k, v, visible):
    """Bidirectional GQA. q: [B, L, H, hd]; k, v: [B, S, KV, hd]; visible: [B, L, S] bool.

    Query head h reads kv head h // (H // KV). Returns [B, L, H, hd].
    """
    n_heads, n_kv, hd = q.shape[2], k.shape[2], q.shape[3]
    assert visible.any(axis=-1).all(), "every query row needs a visible key"
    kv_of_head = np.arange(n_heads) // (n_heads // n_kv)  # [H]
    k, v = k[:, :, kv_of_head], v[:, :, kv_of_head]  # [B, S, H, hd]
    scores = np.einsum("blhd,bshd->bhls", q, k) / np.sqrt(hd)  # [B, H, L, S]
    scores = np.where(visible[:, None], scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs = probs / probs.sum(axis=-1, keepdims=True)
    return np.einsum("bhls,bshd->blhd", probs, v)


def ref_silu(x):
    return x / (1.0 + np.exp(-x))


def ref_forward(p, cfg: ModelConfig, tokens, positions=None, key_mask=None, segment_ids=None,
                allowed=None):  # fmt: skip
    """tokens: [B, L] int -> logits [B, L, V] float64 (pre-norm blocks,
    docs/models.md#the-block). allowed: [L, L] bool, which keys each query may see on top of
    padding and segments (None: all, bidirectional)."""
    tokens = np.asarray(tokens)
    batch, length = tokens.shape
    if positions is None:
        positions = np.broadcast_to(np.arange(length), (batch, length))
    if key_mask is None:
        key_mask = np.ones((batch, length), bool)
    if segment_ids is None:
        segment_ids = np.zeros((batch, length), np.int64)
    positions, key_mask, segment_ids = map(np.asarray, (positions, key_mask, segment_ids))
    visible = ref_visible(key_mask.astype(bool), segment_ids)  # [B, L, L]
    if allowed is not None:
        visible = visible & np.asarray(allowed, bool)[None]

    x = p["embed"][tokens]  # [B, L, d]
    for i in range(cfg.n_layers):
        h = ref_rms_norm(x, p["attn_norm"][i], cfg.norm_eps)
        q = np.einsum("bld,dhk->blhk", h, p["q"][i])  # [B, L, H, hd]
        k = np.einsum("bld,dhk->blhk", h, p["k"][i])  # [B, L, KV, hd]
        v = np.einsum("bld,dhk->blhk", h, p["v"][i])  # [B, L, KV, hd]
        q, k = ref_rope(q, positions, cfg.rope_theta), ref_rope(k, positions, cfg.rope_theta)
        attn = ref_attention(q, k, v, visible)  # [B, L, H, hd]
        x = x + np.einsum("blhk,hkd->bld", attn, p["o"][i])
        h = ref_rms_norm(x, p["mlp_norm"][i], cfg.norm_eps)
        x = x + (ref_silu(h @ p["gate"][i]) * (h @ p["up"][i])) @ p["down"][i]
    h = ref_rms_norm(x, p["final_norm"], cfg.norm_eps)  # [B, L, d]
    head = p["embed"].T if cfg.tie_embeddings else p["lm_head"]  # [d, V]
    return h @ head


def max_rel_err(got, ref, where=None) -> float:
    """max |got - ref| / max |ref| over the positions selected by `where` ([B, L] bool)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if where is not None:
        where = np.asarray(where, bool)
        got, ref = got[where], ref[where]
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
