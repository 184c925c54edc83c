"""The LLaDA / iLLaDA network: a plain pre-norm transformer, bidirectional unless the objective
passes another attention pattern (`model/masks.py`; docs/models.md#the-block).

    h = x + Attn(RMSNorm(x));  y = h + SwiGLU(RMSNorm(h));  logits = Head(RMSNorm(y_L))

No time input, no logit or embedding scaling. The network knows nothing of diffusion: it maps
token ids to logits (with `shifted_logits`, position i's from the hidden state of i-1). For the loss, `hidden_states` and `project` are exposed separately so the
caller can compute cross-entropy chunk by chunk without materialising [batch, length, vocab] logits.

The layers are created stacked (every block parameter has a leading `layers` axis) and run with
`jax.lax.scan`, so compile time does not grow with depth; `scan_layers=False` runs the same
stacked parameters in an unrolled Python loop (same numbers, for debugging and tests). Each layer is
wrapped in `jax.checkpoint` with the configured remat policy.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from illada_jax.config.schema import ModelConfig
from illada_jax.model.attention import Attention, xla_attention
from illada_jax.model.layers import (
    DTYPE_BY_NAME,
    RMSNorm,
    SwiGLU,
    einsum_f32,
    param,
    residual_out_std,
    rope_angles,
)
from illada_jax.model.masks import BIDIRECTIONAL
from illada_jax.parallel.rules import constrain

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.checkpoint_dots,
    "save_dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nnx.Module):
    """One pre-norm transformer layer."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        pd, cd = DTYPE_BY_NAME[cfg.param_dtype], DTYPE_BY_NAME[cfg.compute_dtype]
        out_std = residual_out_std(cfg.init_std, cfg.n_layers)
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, param_dtype=pd, rngs=rngs)
        self.attn = Attention(
            cfg, std=cfg.init_std, out_std=out_std, param_dtype=pd, compute_dtype=cd, rngs=rngs
        )
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, param_dtype=pd, rngs=rngs)
        self.mlp = SwiGLU(
            cfg.d_model,
            cfg.mlp_dim,
            use_bias=cfg.use_bias,
            std=cfg.init_std,
            out_std=out_std,
            param_dtype=pd,
            compute_dtype=cd,
            rngs=rngs,
            fused=cfg.fused_projections,
        )

    def __call__(self, x, cos, sin, key_mask=None, segment_ids=None, pattern=BIDIRECTIONAL):
        """x: [batch, length, d_model] (compute dtype) -> same."""
        attn = self.attn(self.attn_norm(x), cos, sin, key_mask, segment_ids, pattern)
        h = x + attn.astype(x.dtype)
        return h + self.mlp(self.mlp_norm(h)).astype(x.dtype)

    def _finish(self, x, attn):
        h = x + self.attn.project_out(attn).astype(x.dtype)
        return h + self.mlp(self.mlp_norm(h)).astype(x.dtype)

    def with_kv(self, x, cos, sin, key_mask=None, pattern=BIDIRECTIONAL):
        """Inference forward that also returns this layer's (k, v), each [B, L, KV, D]."""
        q, k, v = self.attn.project_qkv(self.attn_norm(x), cos, sin)
        return self._finish(x, self.attn.attend(q, k, v, key_mask, pattern=pattern)), (k, v)

    def cached(self, x, cos, sin, kv, start, fresh_from, key_mask=None, pattern=BIDIRECTIONAL):
        """Forward of a window of queries against a K/V cache of the whole canvas.

        x: [B, W, d] holds canvas positions start..start+W-1; kv: (k, v) [B, L, KV, D]. Window
        positions >= `fresh_from` use their freshly computed K/V, earlier ones keep the cached K/V
        (Fast-dLLM's prefix / dual cache, docs/algorithms.md#caches-and-parallel-decoding).
        key_mask: [B, L]; pattern: applied to the window's queries at their canvas positions.
        Returns ([B, W, d], kv with the window's slots updated).
        """
        q, k, v = self.attn.project_qkv(self.attn_norm(x), cos, sin)
        width = x.shape[1]
        fresh = (start + jnp.arange(width) >= fresh_from)[None, :, None, None]
        k_cache, v_cache = kv
        k = jnp.where(fresh, k, jax.lax.dynamic_slice_in_dim(k_cache, start, width, axis=1))
        v = jnp.where(fresh, v, jax.lax.dynamic_slice_in_dim(v_cache, start, width, axis=1))
        k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), start, 1)
        v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), start, 1)
        mask = None
        if key_mask is not None:
            mask = jnp.broadcast_to(
                key_mask.astype(bool)[:, None, None, :], (x.shape[0], 1, width, k_cache.shape[1])
            )
        allowed = pattern.dense(width, k_cache.shape[1], q_offset=start)
        if allowed is not None:
            mask = allowed[None, None] if mask is None else mask & allowed[None, None]
        # Queries and keys differ in length here: the einsum kernel serves every configuration.
        attn = xla_attention(q, k_cache, v_cache, mask)
        return self._finish(x, attn), (k_cache, v_cache)


class Transformer(nnx.Module):
    """Token ids -> logits. Parameters: `embed [vocab, d]`, `blocks.*` stacked over layers,
    `final_norm`, and `lm_head [d, vocab]` when embeddings are untied."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = DTYPE_BY_NAME[cfg.param_dtype]
        self.compute_dtype = DTYPE_BY_NAME[cfg.compute_dtype]
        self.embed = param(
            rngs,
            (cfg.vocab_size, cfg.d_model),
            ("vocab", "embed"),
            math.sqrt(1.0 / (2 * cfg.d_model)),
            pd,
        )

        @nnx.split_rngs(splits=cfg.n_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(rngs):
            return Block(cfg, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, param_dtype=pd, rngs=rngs)
        if not cfg.tie_embeddings:
            self.lm_head = param(
                rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg.init_std, pd
            )

    def hidden_states(self, tokens, positions=None, key_mask=None, segment_ids=None,
                      pattern=BIDIRECTIONAL):  # fmt: skip
        """Final-normed hidden states.

        tokens: [batch, length] int; positions: [batch, length] int (default 0..length-1);
        key_mask: [batch, length] bool (True = real token); segment_ids: [batch, length] int;
        pattern: the static attention pattern (`model/masks.py`; default bidirectional).
        Returns [batch, length, d_model] in the compute dtype.
        """
        cfg = self.cfg
        batch, length = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        cos, sin = rope_angles(positions, cfg.head_dim, cfg.rope_theta, cfg.rope_scaling_params)
        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.compute_dtype)

        graphdef, stacked = nnx.split(self.blocks)

        def layer(x, layer_params):
            x = constrain(x, ("batch", "length", "embed"))  # the residual stream, rows split
            return nnx.merge(graphdef, layer_params)(x, cos, sin, key_mask, segment_ids, pattern)

        policy = REMAT_POLICIES[cfg.remat_policy]
        if cfg.remat_policy != "none":
            layer = jax.checkpoint(layer, policy=policy, prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            x, _ = jax.lax.scan(lambda carry, p: (layer(carry, p), None), x, stacked)
        else:
            for i in range(cfg.n_layers):
                x = layer(x, jax.tree.map(lambda a, i=i: a[i], stacked))
        return self._shifted(self.final_norm(x))

    def _shifted(self, hidden):
        """With `shifted_logits`, position i gets the final hidden state of position i-1
        (position 0 keeps its own): [B, L, d] -> [B, L, d]."""
        if not self.cfg.shifted_logits:
            return hidden
        return jnp.concatenate([hidden[:, :1], hidden[:, :-1]], axis=1)

    def project(self, hidden):
        """Output head: hidden [..., d_model] -> logits [..., vocab] in fp32 (fp32 accumulation)."""
        cd = self.compute_dtype
        hidden = hidden.astype(cd)
        if self.cfg.tie_embeddings:
            logits = einsum_f32("...d,vd->...v", hidden, self.embed[...].astype(cd))
        else:
            logits = einsum_f32("...d,dv->...v", hidden, self.lm_head[...].astype(cd))
        if logits.ndim == 3:  # [batch, length, vocab]: rows stay where the hidden states are
            logits = constrain(logits, ("batch", "length", "vocab"))
        return logits

    def _positions(self, batch: int, start, width: int):
        positions = start + jnp.arange(width, dtype=jnp.int32)
        return rope_angles(jnp.broadcast_to(positions, (batch, width)), self.cfg.head_dim,
                           self.cfg.rope_theta, self.cfg.rope_scaling_params)  # fmt: skip

    def _scan_layers(self, fn, x, per_layer):
        """Run `fn(block, x, per_layer_slice) -> (x, out)` over the stacked layers (inference)."""
        graphdef, stacked = nnx.split(self.blocks)

        def body(carry, inputs):
            layer_params, extra = inputs
            return fn(nnx.merge(graphdef, layer_params), carry, extra)

        return jax.lax.scan(body, x, (stacked, per_layer))

    def hidden_with_kv(self, tokens, key_mask=None, pattern=BIDIRECTIONAL):
        """Inference forward over the whole canvas that also returns every layer's K/V.

        tokens: [B, L] (positions 0..L-1); key_mask: [B, L] bool; pattern: the attention
        pattern (`model/masks.py`; block-causal or causal for the block and AR samplers).
        Returns (final-normed hidden
        [B, L, d_model], kv = (k, v) each [layers, B, L, KV, D]); `project` gives logits. The
        training path is untouched.
        """
        batch, length = tokens.shape
        cos, sin = self._positions(batch, 0, length)
        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.compute_dtype)
        x, kv = self._scan_layers(
            lambda blk, h, _: blk.with_kv(h, cos, sin, key_mask, pattern), x, None
        )
        return self._shifted(self.final_norm(x)), kv

    def hidden_cached(self, tokens, start, kv, fresh_from, key_mask=None, *,
                      return_kv: bool = True, pattern=BIDIRECTIONAL):  # fmt: skip
        """Hidden states of a window of the canvas from a K/V cache (see `Block.cached`).

        tokens: [B, W] = canvas[start:start+W]; kv: as returned by `hidden_with_kv`; start and
        fresh_from may be traced. Returns (final-normed hidden [B, W, d_model], updated kv, or
        None with return_kv=False: the sampler overwrites the window's K/V at every step anyway).
        The hidden states are the window's own, never shifted (`shifted_logits`): a caller
        predicting position i reads row i-1.
        """
        batch, width = tokens.shape
        cos, sin = self._positions(batch, start, width)
        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.compute_dtype)

        def layer(blk, h, layer_kv):
            h, new_kv = blk.cached(h, cos, sin, layer_kv, start, fresh_from, key_mask, pattern)
            return h, (new_kv if return_kv else None)

        x, kv = self._scan_layers(layer, x, kv)
        return self.final_norm(x), kv

    def __call__(self, tokens, positions=None, key_mask=None, segment_ids=None,
                 pattern=BIDIRECTIONAL):  # fmt: skip
        """tokens: [batch, length] -> logits [batch, length, vocab] fp32 (inference helper;
        training uses `hidden_states` + chunked cross-entropy)."""
        return self.project(self.hidden_states(tokens, positions, key_mask, segment_ids, pattern))


def abstract_model(cfg: ModelConfig) -> Transformer:
    """The model with `jax.ShapeDtypeStruct` leaves: shapes and dtypes, no allocation."""
    return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))


def graphdef_and_specs(cfg: ModelConfig):
    """(graphdef, logical PartitionSpecs as a pure dict, abstract params as a pure dict): the
    network's structure, its parameters' logical axis names and their shapes, nothing allocated.
    `nnx.merge(graphdef, params)` rebuilds the network from a pure dict of parameters."""
    graphdef, abstract = nnx.split(abstract_model(cfg))
    logical = nnx.to_pure_dict(nnx.get_partition_spec(abstract))
    return graphdef, logical, nnx.to_pure_dict(abstract)


def count_params(cfg: ModelConfig) -> tuple[int, int]:
    """(total, non-embedding) parameter counts from the real parameter tree (no allocation).

    Non-embedding excludes the token embedding and an untied output head, as the LLaDA/iLLaDA
    papers count them (docs/models.md#shapes).
    """
    state = nnx.state(abstract_model(cfg), nnx.Param)
    total = embedding = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        size = math.prod(leaf.shape)
        total += size
        keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
        if keys[0] in ("embed", "lm_head"):
            embedding += size
    return total, total - embedding
