"""bf16 compute with fp32 master weights: the fp32-accumulating einsum and its bf16 backward
(against float64 numpy), every matmul of the bf16 train step in bf16 (the lowered program), the
weights cast once per step, and a short bf16 run whose losses follow the fp32 run's."""

from __future__ import annotations

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from illada_jax.config.schema import DiffusionConfig, MeshConfig, ModelConfig, OptimConfig
from illada_jax.model.layers import einsum_f32
from illada_jax.model.transformer import graphdef_and_specs
from illada_jax.parallel import mesh as mesh_lib
from illada_jax.train import state as state_lib
from illada_jax.train.optim import make_optimizer
from illada_jax.train.step import cast_params, make_train_step, weights_compute_dtype

pytestmark = pytest.mark.core

MODEL = dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
             mlp_dim=128, max_seq_len=32)  # fmt: skip


def _bf16_as_f64(x) -> np.ndarray:
    return np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), np.float64)


@pytest.mark.parametrize("subscripts", ["ij,kj->ik", "bij,bjk->bik"])
def test_einsum_f32_forward_and_backward_against_float64(subscripts):
    rng = np.random.default_rng(0)
    shapes = {"ij,kj->ik": ((6, 40), (9, 40)), "bij,bjk->bik": ((2, 5, 40), (2, 40, 7))}
    a32, b32 = (rng.standard_normal(s).astype(np.float32) for s in shapes[subscripts])
    a, b = jnp.asarray(a32, jnp.bfloat16), jnp.asarray(b32, jnp.bfloat16)
    out = einsum_f32(subscripts, a, b)
    assert out.dtype == jnp.float32
    a64, b64 = _bf16_as_f64(a), _bf16_as_f64(b)
    want = np.einsum(subscripts, a64, b64)
    np.testing.assert_allclose(np.asarray(out, np.float64), want, rtol=1e-5, atol=1e-5)
    # Backward: d/da sum(out * w) = w·b (in the einsum's layout), computed from a bf16 cotangent.
    w = rng.standard_normal(want.shape).astype(np.float32)
    grad_a, grad_b = jax.grad(lambda x, y: jnp.sum(einsum_f32(subscripts, x, y) * w), (0, 1))(a, b)
    assert grad_a.dtype == jnp.bfloat16 and grad_b.dtype == jnp.bfloat16
    w64 = _bf16_as_f64(w)
    ins, out_spec = subscripts.split("->")
    spec_a, spec_b = ins.split(",")
    want_a = np.einsum(f"{out_spec},{spec_b}->{spec_a}", w64, b64)
    want_b = np.einsum(f"{spec_a},{out_spec}->{spec_b}", a64, w64)
    scale = max(np.abs(want_a).max(), np.abs(want_b).max())
    np.testing.assert_allclose(_bf16_as_f64(grad_a), want_a, atol=2e-2 * scale)
    np.testing.assert_allclose(_bf16_as_f64(grad_b), want_b, atol=2e-2 * scale)
    # fp32 operands: plain autodiff, fp32 gradients.
    g32 = jax.grad(lambda x: jnp.sum(einsum_f32(subscripts, x, jnp.asarray(b32)) * w))(a32)
    assert g32.dtype == jnp.float32


def _step_and_state(compute_dtype: str):
    cfg = ModelConfig(**MODEL, compute_dtype=compute_dtype)
    optimizer = make_optimizer(OptimConfig(learning_rate=3e-3, warmup_steps=0), total_steps=40)
    mesh = mesh_lib.make_mesh(MeshConfig(rules="dp"))
    state = state_lib.create_state(cfg, optimizer, mesh, "dp", seed=0)
    step = make_train_step(graphdef_and_specs(cfg)[0], DiffusionConfig(), optimizer,
                           compute_dtype=weights_compute_dtype(cfg))  # fmt: skip
    return step, state


CONTROLS = {"lr_scale": jnp.float32(1), "loss_ceiling": jnp.float32(np.inf),
            "data_step": jnp.int32(0)}  # fmt: skip


def _batch(seed: int) -> dict:
    """A learnable stream: repeated 8-token phrases drawn from a small set."""
    rng = np.random.default_rng(seed)
    phrases = np.random.default_rng(99).integers(5, 256, (6, 8))
    rows = [np.concatenate(phrases[rng.integers(0, 6, 4)]) for _ in range(8)]
    return {"tokens": jnp.asarray(np.stack(rows), jnp.int32)}


def test_every_matmul_of_the_bf16_step_is_bf16_and_weights_are_cast_once():
    step, state = _step_and_state("bfloat16")
    text = step.lower(state, _batch(0), jax.random.key(0), CONTROLS).as_text()
    operands = collections.Counter()
    for match in re.finditer(r"dot_general.*: \(tensor<[^>]*x(\w+)>, tensor<[^>]*x(\w+)>\)", text):
        operands[match.groups()] += 1
    assert operands and set(operands) == {("bf16", "bf16")}, operands
    # Weights are cast once per step, before the layer loop: no fp32 -> bf16 convert of one
    # layer's slice of a stacked weight (what casting at each use inside the loop gives), and
    # the embedding (used by the lookup and the tied output head) cast exactly once.
    casts = collections.Counter(
        re.findall(r"stablehlo.convert[^\n]*\(tensor<([\dx]+)xf32>\) -> tensor<[\dx]+xbf16>", text)
    )
    params = state["params"]
    slices = {
        "x".join(map(str, leaf.shape[1:]))
        for leaf in jax.tree.leaves(params["blocks"])
        if leaf.ndim >= 3
    }
    assert not {shape: casts[shape] for shape in slices if casts[shape]}, casts
    assert casts["x".join(map(str, params["embed"].shape))] == 1, casts
    assert cast_params({"w": jnp.ones(2), "i": jnp.arange(2)}, jnp.bfloat16)["i"].dtype == jnp.int32


def test_a_short_bf16_run_follows_the_fp32_run():
    """30 steps on the same batches and keys: the bf16 losses track the fp32 ones (mean
    absolute gap well under the loss drop), and both learn."""
    losses = {}
    for dtype in ("float32", "bfloat16"):
        step, state = _step_and_state(dtype)
        curve = []
        for i in range(30):
            state, metrics = step(state, _batch(i), jax.random.key(i), CONTROLS)
            curve.append(float(metrics["masked_ce"]))
        losses[dtype] = np.asarray(curve)
    f32, bf16 = losses["float32"], losses["bfloat16"]
    drop = f32[:5].mean() - f32[-5:].mean()
    print(f"fp32 {f32[0]:.3f}->{f32[-1]:.3f}; bf16 {bf16[0]:.3f}->{bf16[-1]:.3f}; "
          f"mean |gap| {np.abs(f32 - bf16).mean():.4f}")  # fmt: skip
    assert drop > 1.0
    assert np.abs(f32 - bf16).mean() < 0.05 * drop
    assert bf16[:5].mean() - bf16[-5:].mean() > 0.9 * drop
