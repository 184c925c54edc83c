"""Building blocks of the transformer: parameters with logical axes, RMSNorm, RoPE, SwiGLU.

Every parameter carries logical axis names (`embed`, `heads`, `kv_heads`, `head_dim`, `mlp`,
`vocab`; the layer stack adds `layers`) as NNX sharding metadata. The mapping from logical axes to
mesh axes lives in `illada_jax.parallel` (rules), never here: this module never shards eagerly.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from illada_jax.parallel.rules import constrain

DTYPE_BY_NAME = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def einsum_f32(subscripts: str, a, b):
    """`jnp.einsum(subscripts, a, b)` accumulated and returned in fp32 (logits, attention
    scores). With low-precision operands (bf16) the backward pass casts the fp32 cotangent to the
    operands' dtype first, so both gradient products are low-precision matmuls too — plain
    autodiff would upcast the operands and run them in fp32 (the slowest matmuls of the step:
    the output head's). fp32 operands: exactly `jnp.einsum`."""
    if a.dtype == jnp.float32 and b.dtype == jnp.float32:
        return jnp.einsum(subscripts, a, b, preferred_element_type=jnp.float32)
    return _einsum_f32_low(subscripts, a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _einsum_f32_low(subscripts, a, b):
    return jnp.einsum(subscripts, a, b, preferred_element_type=jnp.float32)


def _einsum_f32_low_fwd(subscripts, a, b):
    return _einsum_f32_low(subscripts, a, b), (a, b)


def _einsum_f32_low_bwd(subscripts, residuals, cotangent):
    a, b = residuals
    # The low-precision einsum's own transpose (its forward is dead code under jit).
    _, transpose = jax.vjp(lambda x, y: jnp.einsum(subscripts, x, y), a, b)
    return transpose(cotangent.astype(jnp.result_type(a, b)))


_einsum_f32_low.defvjp(_einsum_f32_low_fwd, _einsum_f32_low_bwd)


def param(
    rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], std: float | None, dtype
) -> nnx.Param:
    """A parameter drawn from N(0, std) (or ones when std is None), tagged with logical axes."""
    if len(shape) != len(axes):
        raise ValueError(f"shape {shape} and logical axes {axes} differ in rank")
    if std is None:
        value = jnp.ones(shape, dtype)
    else:
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def zeros_param(shape: tuple[int, ...], axes: tuple[str, ...], dtype) -> nnx.Param:
    return nnx.Param(jnp.zeros(shape, dtype), out_sharding=axes, eager_sharding=False)


TENSOR_MESH_AXIS = "tensor"  # the mesh axis every rule table splits heads / kv_heads / mlp over


def can_fuse_projections(enabled: bool) -> bool:
    """Fuse projections sharing an input into one matmul (concatenated weights)? Not while
    tracing under a mesh whose `tensor` axis has more than one device: the weights are split
    along the axis they would be concatenated on, and GSPMD would gather them."""
    if not enabled:
        return False
    mesh = jax.sharding.get_abstract_mesh()
    return mesh.empty or mesh.shape.get(TENSOR_MESH_AXIS, 1) == 1


class RMSNorm(nnx.Module):
    """RMSNorm as both reference codebases compute it (docs/models.md#the-block).

    Upcast to fp32, `x * rsqrt(mean(x^2) + eps)`, cast back to the input dtype, *then* multiply by
    the learned scale. No bias.
    """

    def __init__(self, dim: int, eps: float, *, param_dtype, rngs: nnx.Rngs):
        del rngs  # ones-initialised
        self.eps = eps
        self.scale = param(None, (dim,), ("embed",), None, param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., dim] -> [..., dim] in x.dtype."""
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return normed.astype(x.dtype) * self.scale[...].astype(x.dtype)


def scaled_inv_freq(inv_freq: jax.Array, scaling: tuple) -> jax.Array:
    """RoPE scaling of imported autoregressive models (docs/models.md#rope-scaling), as
    `transformers` computes it: `("linear", factor, ...)` divides every frequency by the factor;
    `("llama3", factor, low_freq_factor, high_freq_factor, original_max_len)` divides the low
    frequencies (wavelength > original_max_len / low_freq_factor) by the factor, keeps the high
    ones (wavelength < original_max_len / high_freq_factor) and interpolates in between."""
    kind, factor, low, high, original = scaling
    if kind == "linear":
        return inv_freq / factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    return jnp.where(medium, smoothed, scaled)


def rope_angles(positions: jax.Array, head_dim: int, theta: float,
                scaling: tuple | None = None) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """cos/sin tables for rotate-half RoPE (docs/models.md#the-block), in fp32.

    positions: [batch, length] int -> cos, sin: [batch, length, 1, head_dim]
    (inv_freq_j = theta^(-2j/head_dim); angles duplicated as cat(freqs, freqs)); `scaling`:
    `ModelConfig.rope_scaling_params` (None: plain RoPE).
    """
    exponent = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    inv_freq = 1.0 / (theta**exponent)
    if scaling is not None:
        inv_freq = scaled_inv_freq(inv_freq, scaling)
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, head_dim/2]
    angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE applied in fp32 (LLaDA's rope_full_precision) and cast back.

    x: [batch, length, heads, head_dim]; cos, sin: [batch, length, 1, head_dim].
    """
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


class SwiGLU(nnx.Module):
    """`down( silu(gate x) * up x )` (LLaDA: ff_proj=gate, up_proj=up, ff_out=down)."""

    def __init__(
        self,
        d_model: int,
        mlp_dim: int,
        *,
        use_bias: bool,
        std: float,
        out_std: float,
        param_dtype,
        compute_dtype,
        rngs: nnx.Rngs,
        fused: bool = True,
    ):
        self.compute_dtype = compute_dtype
        self.fused = fused
        self.gate = param(rngs, (d_model, mlp_dim), ("embed", "mlp"), std, param_dtype)
        self.up = param(rngs, (d_model, mlp_dim), ("embed", "mlp"), std, param_dtype)
        self.down = param(rngs, (mlp_dim, d_model), ("mlp", "embed"), out_std, param_dtype)
        if use_bias:
            self.gate_bias = zeros_param((mlp_dim,), ("mlp",), param_dtype)
            self.up_bias = zeros_param((mlp_dim,), ("mlp",), param_dtype)
            self.down_bias = zeros_param((d_model,), ("embed",), param_dtype)
        self.use_bias = use_bias

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [batch, length, d_model] -> same shape, compute dtype."""
        cd = self.compute_dtype
        x = x.astype(cd)
        if can_fuse_projections(self.fused):  # one [d, 2·mlp] matmul, one dx in the backward
            fused = jnp.concatenate([self.gate[...], self.up[...]], axis=1).astype(cd)
            gate, up = jnp.split(x @ fused, 2, axis=-1)
        else:
            gate = x @ self.gate[...].astype(cd)
            up = x @ self.up[...].astype(cd)
        gate, up = (constrain(a, ("batch", "length", "mlp")) for a in (gate, up))
        if self.use_bias:
            gate = gate + self.gate_bias[...].astype(cd)
            up = up + self.up_bias[...].astype(cd)
        # The gating in fp32, cast once for the down projection: XLA:CPU has no bf16 arithmetic
        # and rounds every intermediate of a bf16 elementwise chain back to bf16 (a convert pair
        # per op, forward and backward); in fp32 the chain is plain arithmetic. Measured 6% of
        # the bf16 train step's CPU time at d_model 256; on TPU/GPU the chain is one fused kernel
        # either way, and fp32 only adds precision.
        hidden = jax.nn.silu(gate.astype(jnp.float32)) * up.astype(jnp.float32)
        out = hidden.astype(cd) @ self.down[...].astype(cd)
        if self.use_bias:
            out = out + self.down_bias[...].astype(cd)
        return constrain(out, ("batch", "length", "embed"))


def residual_out_std(init_std: float, n_layers: int) -> float:
    """iLLaDA scales the init of o_proj/down_proj by 1/sqrt(2 n_layers)
    (docs/models.md#the-block)."""
    return init_std / math.sqrt(2 * n_layers)
