"""Grouped-query attention with three kernels (docs/models.md#the-block).

Bidirectional unless the objective asks for another pattern (`model/masks.py`: causal for the
autoregressive objective, block-causal and noisy+clean for block diffusion). Two optional per-row
restrictions, both with static shapes, apply on top of the pattern:
- `key_mask [batch, length]` (True = a real token): padded keys are invisible to every query;
- `segment_ids [batch, length]`: a query attends only to keys of its own segment (packed
  documents, iLLaDA's two-segment split).

Kernels (`ModelConfig.attention_impl`):
- `xla`: einsum + fp32 softmax, the CPU default and the numerical reference;
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` (flash attention on NVIDIA GPUs);
- `splash`: the Pallas TPU splash kernel with the pattern as its block-sparse mask (tiles the
  pattern hides are skipped); padding and segments are expressed as segment ids. Under a mesh
  it runs inside `shard_map`, the batch split over the data axes (`dcn_data`, `data`, `fsdp`)
  and the heads over `tensor` (the mesh axis names of parallel/mesh.py).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from illada_jax.model.layers import (
    TENSOR_MESH_AXIS,
    apply_rope,
    can_fuse_projections,
    einsum_f32,
    param,
    zeros_param,
)
from illada_jax.model.masks import BIDIRECTIONAL, AttentionPattern, splash_pattern_mask
from illada_jax.parallel.rules import DATA_AXES, constrain

# Finite, so a row whose keys are all hidden (a padded query) gives a uniform softmax, not NaN.
_MASKED_SCORE = -1e30


def attention_mask(key_mask: jax.Array | None, segment_ids: jax.Array | None,
                   pattern: AttentionPattern = BIDIRECTIONAL,
                   length: int | None = None) -> jax.Array | None:  # fmt: skip
    """Combine padding, segments and the pattern into one boolean mask [batch | 1, 1, length,
    length] (True = attend); `length` is needed only when neither per-row input is given.

    Returns None when there is nothing to mask (plain full attention).
    """
    mask = None
    if not pattern.is_full:
        if length is None:
            length = (key_mask if key_mask is not None else segment_ids).shape[1]
        mask = pattern.dense(length, length)[None]
    if segment_ids is not None:
        segments = segment_ids[:, :, None] == segment_ids[:, None, :]
        mask = segments if mask is None else mask & segments
    if key_mask is not None:
        keys = key_mask.astype(bool)[:, None, :]
        mask = keys if mask is None else mask & keys
    return None if mask is None else mask[:, None, :, :]


def xla_attention(q, k, v, mask):
    """Reference kernel. q: [B, L, H, D]; k, v: [B, S, KV, D]; mask: [B, 1, L, S] | None.

    Returns [B, L, H, D] in q.dtype. Scores and softmax in fp32.
    """
    batch, length, n_heads, head_dim = q.shape
    n_kv = k.shape[2]
    group = n_heads // n_kv
    # Query head h uses kv head h // group (HF repeat_kv order). Heads-major layouts let XLA:CPU
    # run both products as plain batched matmuls (about 25% faster than contracting in place).
    q = q.reshape(batch, length, n_kv, group, head_dim).transpose(0, 2, 3, 1, 4)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, KV, S, D]
    scores = einsum_f32("bkgld,bksd->bkgls", q, k)
    scores = scores * (head_dim**-0.5)
    if mask is not None:
        # An additive bias [B, 1, 1, L, S] (0 or _MASKED_SCORE, which absorbs any score in fp32)
        # rather than `where(mask, scores, _MASKED_SCORE)`: the mask is the same in every layer,
        # and XLA hoists the select's loop-invariant operands out of the layer scan broadcast to
        # the full [B, KV, G, L, S] (a pred and an fp32 tensor read by every layer); the add's
        # operand stays small. Measured 4% of the small preset's bf16 train step on CPU.
        bias = jnp.where(mask, 0.0, _MASKED_SCORE).astype(jnp.float32)
        scores = scores + bias[:, :, None]
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = einsum_f32("bkgls,bksd->bkgld", probs, v)
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, length, n_heads, head_dim).astype(q.dtype)


def cudnn_attention(q, k, v, mask):
    """cuDNN flash attention (GPU only). Same contract as `xla_attention`."""
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")


def _splash_segment_ids(key_mask, segment_ids, batch, length):
    """Padding as its own segment (-1): real queries never see padded keys, and padded queries
    still have a non-empty row (splash requires one)."""
    seg = jnp.zeros((batch, length), jnp.int32) if segment_ids is None else segment_ids
    seg = seg.astype(jnp.int32)
    if key_mask is not None:
        seg = jnp.where(key_mask.astype(bool), seg, -1)
    return seg


_SPLASH_TILE = 128  # the kernel's kv compute blocks must be multiples of 128


def _splash_block(padded_length: int) -> int:
    """Tile size: the largest of 512/256/128 dividing the (padded) sequence length."""
    return next(b for b in (512, 256, _SPLASH_TILE) if padded_length % b == 0)


@functools.cache
def _splash_kernel(n_heads: int, length: int, block: int, interpret: bool,
                   pattern: AttentionPattern, real_length: int):  # fmt: skip
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as splash,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as splash_mask,
    )

    mask = splash_mask.MultiHeadMask([splash_pattern_mask(pattern, length, real_length)] * n_heads)
    sizes = splash.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        use_fused_bwd_kernel=True,
    )
    return splash.make_splash_mha(
        mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
    )


def _dividing_axes(mesh, axes: tuple[str, ...], size: int) -> tuple[str, ...] | None:
    """The mesh axes among `axes` whose product divides `size` (a batch of 3 prompts on 8 data
    devices is not split: each device runs the whole batch rather than failing to compile)."""
    kept, product = [], 1
    for axis in axes:
        if axis in mesh.axis_names and size % (product * mesh.shape[axis]) == 0:
            kept.append(axis)
            product *= mesh.shape[axis]
    return tuple(kept) or None


def splash_attention(q, k, v, key_mask, segment_ids, *, pattern: AttentionPattern = BIDIRECTIONAL,
                     interpret: bool = False):  # fmt: skip
    """Pallas splash attention (TPU). q: [B, L, H, D]; k, v: [B, L, KV, D] -> [B, L, H, D]."""
    from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import (
        SegmentIds,
    )

    batch, length, n_heads, head_dim = q.shape
    seg = _splash_segment_ids(key_mask, segment_ids, batch, length)
    # Pad the sequence to whole 128-tiles; the pad is a segment of its own (-1, like padding),
    # so real tokens never see it, and it is cut off the output.
    pad = -length % _SPLASH_TILE
    if pad:
        q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
        seg = jnp.pad(seg, ((0, 0), (0, pad)), constant_values=-1)
    padded_length = length + pad
    block = _splash_block(padded_length)
    # splash has no softmax scale: pre-scale q. Layout [B, heads, L, D].
    qt = (q * (head_dim**-0.5)).astype(q.dtype).transpose(0, 2, 1, 3)
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)

    def local(qt, kt, vt, seg):
        kernel = _splash_kernel(qt.shape[1], padded_length, block, interpret, pattern, length)

        def per_example(q1, k1, v1, s1):
            return kernel(q1, k1, v1, segment_ids=SegmentIds(s1, s1))

        return jax.vmap(per_example)(qt, kt, vt, seg)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        out = local(qt, kt, vt, seg)
    else:
        P = jax.sharding.PartitionSpec
        data_axes = _dividing_axes(mesh, DATA_AXES, batch)
        head_axis = _dividing_axes(mesh, (TENSOR_MESH_AXIS,), math.gcd(n_heads, kt.shape[1]))
        heads_spec = P(data_axes, head_axis, None, None)
        out = jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(heads_spec, heads_spec, heads_spec, P(data_axes, None)),
            out_specs=heads_spec,
            check_vma=False,
        )(qt, kt, vt, seg)
    return out.transpose(0, 2, 1, 3)[:, :length]


class Attention(nnx.Module):
    """Grouped-query self-attention with RoPE on q and k; q/k/v/o projections without bias."""

    def __init__(
        self, cfg, *, std: float, out_std: float, param_dtype, compute_dtype, rngs: nnx.Rngs
    ):
        d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.impl = cfg.attention_impl
        self.fused = cfg.fused_projections
        self.compute_dtype = compute_dtype
        self.use_bias = cfg.use_bias
        self.q_proj = param(rngs, (d, h, hd), ("embed", "heads", "head_dim"), std, param_dtype)
        self.k_proj = param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), std, param_dtype)
        self.v_proj = param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), std, param_dtype)
        self.o_proj = param(rngs, (h, hd, d), ("heads", "head_dim", "embed"), out_std, param_dtype)
        # q/k/v biases: `use_bias` (every linear) or `qkv_bias` alone (Qwen2); o only with use_bias.
        self.qkv_bias = cfg.use_bias or cfg.qkv_bias
        if self.qkv_bias:
            self.q_bias = zeros_param((h, hd), ("heads", "head_dim"), param_dtype)
            self.k_bias = zeros_param((kv, hd), ("kv_heads", "head_dim"), param_dtype)
            self.v_bias = zeros_param((kv, hd), ("kv_heads", "head_dim"), param_dtype)
        if cfg.use_bias:
            self.o_bias = zeros_param((d,), ("embed",), param_dtype)

    def project_qkv(self, x, cos, sin):
        """x: [B, L, d_model] -> q [B, L, H, D], k, v [B, L, KV, D] (RoPE applied to q, k)."""
        cd = self.compute_dtype
        x = x.astype(cd)
        wq, wk, wv = self.q_proj[...], self.k_proj[...], self.v_proj[...]
        if can_fuse_projections(self.fused):  # one [d, (H + 2 KV)·D] matmul
            (d, h, hd), kv = wq.shape, wk.shape[1]
            fused = jnp.concatenate([w.reshape(d, -1) for w in (wq, wk, wv)], axis=1)
            q, k, v = jnp.split(x @ fused.astype(cd), [h * hd, (h + kv) * hd], axis=-1)
            batch_len = x.shape[:-1]
            q = q.reshape(*batch_len, h, hd)
            k, v = k.reshape(*batch_len, kv, hd), v.reshape(*batch_len, kv, hd)
        else:
            q = jnp.einsum("bld,dhk->blhk", x, wq.astype(cd))
            k = jnp.einsum("bld,dhk->blhk", x, wk.astype(cd))
            v = jnp.einsum("bld,dhk->blhk", x, wv.astype(cd))
        if self.qkv_bias:
            q = q + self.q_bias[...].astype(cd)
            k = k + self.k_bias[...].astype(cd)
            v = v + self.v_bias[...].astype(cd)
        q = constrain(q, ("batch", "length", "heads", "head_dim"))
        k = constrain(k, ("batch", "length", "kv_heads", "head_dim"))
        v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def project_out(self, attn):
        """attn: [B, L, H, D] -> [B, L, d_model]."""
        cd = self.compute_dtype
        out = jnp.einsum("blhk,hkd->bld", attn.astype(cd), self.o_proj[...].astype(cd))
        if self.use_bias:
            out = out + self.o_bias[...].astype(cd)
        return constrain(out, ("batch", "length", "embed"))

    def attend(self, q, k, v, key_mask=None, segment_ids=None, pattern=BIDIRECTIONAL):
        """The configured kernel on projected q [B, L, H, D], k/v [B, L, KV, D] -> [B, L, H, D];
        `pattern`: the static attention pattern (`model/masks.py`)."""
        if self.impl == "splash":
            return splash_attention(q, k, v, key_mask, segment_ids, pattern=pattern)
        mask = attention_mask(key_mask, segment_ids, pattern, length=q.shape[1])
        kernel = cudnn_attention if self.impl == "cudnn" else xla_attention
        return kernel(q, k, v, mask)

    def __call__(self, x, cos, sin, key_mask=None, segment_ids=None, pattern=BIDIRECTIONAL):
        q, k, v = self.project_qkv(x, cos, sin)
        return self.project_out(self.attend(q, k, v, key_mask, segment_ids, pattern))
