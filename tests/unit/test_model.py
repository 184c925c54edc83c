"""Tests of the bidirectional transformer (docs/models.md).

The core check is an independent float64 NumPy forward pass written here from the spec (RMSNorm,
rotate-half RoPE, grouped-query bidirectional attention, SwiGLU, tied/untied head); it never calls
`illada_jax` code, only reads the parameters out of the model. The model's fp32 logits must match
it to a relative error of 1e-5, measured as ``max |model - ref| / max |ref|`` over the compared
positions (a global denominator: individual logits near zero would make an elementwise ratio
meaningless).

Further tests: bidirectionality, segment isolation, key padding, scan vs unrolled layers, remat
policies (identical gradients), bf16 compute, the splash kernel in Pallas interpret mode against
the XLA kernel, and parameter counts of every preset against an arithmetic formula.

All models are tiny (d=32, 2 layers, head_dim 8, vocab 64, length 12) so the file runs on a 2-core
CPU in well under a minute. `init_std` is raised to 0.2 so attention scores are O(1) (with the
default 0.02 attention would be almost uniform and blind to RoPE and mask errors), and every
RMSNorm scale is set to 1 + 0.1 * N(0, 1) so a missing or misplaced scale would show.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from numpy_reference import (  # noqa: E402  (pytest puts tests/unit on sys.path)
    BATCH,
    LENGTH,
    VOCAB,
    lengths_to_key_mask,
    make_model,
    max_rel_err,
    model_params_f64,
    random_tokens,
    ref_forward,
    tiny_config,
)

from illada_jax.config.presets import MODEL_PRESETS
from illada_jax.config.schema import ModelConfig
from illada_jax.model import count_params
from illada_jax.model.attention import attention_mask, splash_attention, xla_attention

pytestmark = pytest.mark.core

REL_TOL = 1e-5


# ---------------------------------------------------------------------------------------------
# 1. Logits against the float64 reference
# ---------------------------------------------------------------------------------------------

CONFIGS = {
    "mha_tied": dict(n_heads=4, n_kv_heads=4, tie_embeddings=True),
    "mha_untied": dict(n_heads=4, n_kv_heads=4, tie_embeddings=False),
    "gqa2_untied": dict(n_heads=4, n_kv_heads=2, tie_embeddings=False),
    "gqa2_tied": dict(n_heads=4, n_kv_heads=2, tie_embeddings=True),
    "mqa_tied": dict(n_heads=4, n_kv_heads=1, tie_embeddings=True),
    "mqa_untied_theta500k": dict(
        n_heads=4, n_kv_heads=1, tie_embeddings=False, rope_theta=500_000.0
    ),
    # The separate q/k/v and gate/up matmuls (the path taken under tensor parallelism).
    "gqa2_tied_unfused": dict(
        n_heads=4, n_kv_heads=2, tie_embeddings=True, fused_projections=False
    ),
}


def _inputs(variant: str) -> dict:
    """Model keyword inputs for one masking variant ([B, L] arrays, B=2, L=12)."""
    half = LENGTH // 2
    if variant == "plain":
        return {}
    if variant == "key_mask":
        return dict(key_mask=lengths_to_key_mask([LENGTH, 7]))
    if variant == "segments":
        return dict(segment_ids=jnp.asarray([[0] * half + [1] * half, [0] * 3 + [1] * 9]))
    if variant == "positions":
        # Offset positions for row 0, a shuffled permutation of 0..L-1 with gaps for row 1.
        rng = np.random.default_rng(7)
        row1 = rng.permutation(LENGTH) * 3
        return dict(positions=jnp.asarray([np.arange(LENGTH) + 40, row1], jnp.int32))
    if variant == "packed":
        # Packed documents: positions restart per segment, right padding in row 1.
        seg = np.array([[0] * 5 + [1] * 7, [0] * 4 + [1] * 4 + [2] * 4])
        pos = np.array([list(range(5)) + list(range(7)), list(range(4)) * 3])
        return dict(
            positions=jnp.asarray(pos, jnp.int32),
            segment_ids=jnp.asarray(seg),
            key_mask=lengths_to_key_mask([LENGTH, 10]),
        )
    raise ValueError(variant)


@pytest.mark.parametrize("variant", ["plain", "key_mask", "segments", "positions", "packed"])
@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_logits_match_float64_reference(config_name, variant):
    cfg = tiny_config(**CONFIGS[config_name])
    model = make_model(cfg)
    tokens = random_tokens(1)
    inputs = _inputs(variant)
    logits = model(tokens, **inputs)
    assert logits.shape == (BATCH, LENGTH, VOCAB)
    assert logits.dtype == jnp.float32

    ref = ref_forward(model_params_f64(model), cfg, tokens, **inputs)
    # Only real (unpadded) query positions are specified; padded rows are free.
    compare = inputs.get("key_mask", np.ones((BATCH, LENGTH), bool))
    err = max_rel_err(logits, ref, compare)
    assert err <= REL_TOL, f"{config_name}/{variant}: max relative error {err:.3g}"


def test_reference_is_sensitive_to_norm_scales_and_rope():
    """Guard against a vacuous reference: perturbing scales or RoPE moves it far beyond 1e-5."""
    cfg = tiny_config(n_kv_heads=2)
    model = make_model(cfg)
    tokens = random_tokens(2)
    p = model_params_f64(model)
    ref = ref_forward(p, cfg, tokens)
    ones = dict(p, final_norm=np.ones_like(p["final_norm"]))
    assert max_rel_err(ref_forward(ones, cfg, tokens), ref) > 1e-3
    shifted = dict(positions=np.broadcast_to(np.arange(LENGTH)[::-1], (BATCH, LENGTH)))
    assert max_rel_err(ref_forward(p, cfg, tokens, **shifted), ref) > 1e-3


# ---------------------------------------------------------------------------------------------
# 2-4. Attention structure: bidirectional, segment-isolated, padding-blind
# ---------------------------------------------------------------------------------------------


def test_bidirectional_last_token_changes_first_position():
    model = make_model(tiny_config(n_kv_heads=2))
    tokens = random_tokens(3)
    changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % VOCAB)
    before, after = model(tokens), model(changed)
    assert np.all(np.max(np.abs(np.asarray(after - before)[:, 0]), axis=-1) > 1e-4)


def test_segments_are_isolated():
    model = make_model(tiny_config(n_kv_heads=2))
    half = LENGTH // 2
    segment_ids = jnp.asarray([[0] * half + [1] * half] * BATCH)
    tokens = random_tokens(4)
    base = np.asarray(model(tokens, segment_ids=segment_ids))

    in_seg1 = tokens.at[:, half + 2].set((tokens[:, half + 2] + 1) % VOCAB)
    out = np.asarray(model(in_seg1, segment_ids=segment_ids))
    np.testing.assert_allclose(out[:, :half], base[:, :half], rtol=0, atol=1e-6)
    assert np.max(np.abs(out[:, half:] - base[:, half:])) > 1e-4

    in_seg0 = tokens.at[:, 1].set((tokens[:, 1] + 1) % VOCAB)
    out = np.asarray(model(in_seg0, segment_ids=segment_ids))
    assert np.all(np.max(np.abs(out[:, :half] - base[:, :half]), axis=(1, 2)) > 1e-4)
    # ... and segment 1 is untouched by a change in segment 0.
    np.testing.assert_allclose(out[:, half:], base[:, half:], rtol=0, atol=1e-6)


def test_padded_keys_are_invisible():
    model = make_model(tiny_config(n_kv_heads=2, tie_embeddings=False))
    lengths = np.array([9, 5])
    key_mask = lengths_to_key_mask(lengths)
    tokens = random_tokens(5)
    base = np.asarray(model(tokens, key_mask=key_mask))
    rng = np.random.default_rng(6)
    other = jnp.where(key_mask, tokens, jnp.asarray(rng.integers(0, VOCAB, tokens.shape)))
    assert not np.array_equal(np.asarray(other), np.asarray(tokens))
    out = np.asarray(model(other, key_mask=key_mask))
    real = np.asarray(key_mask)
    np.testing.assert_allclose(out[real], base[real], rtol=0, atol=1e-6)
    # Without the key mask the same change is visible everywhere.
    leak = np.asarray(model(other)) - np.asarray(model(tokens))
    assert np.max(np.abs(leak[real])) > 1e-4


# ---------------------------------------------------------------------------------------------
# 5-6. Layer loop and rematerialisation do not change the numbers
# ---------------------------------------------------------------------------------------------


def test_scan_and_unrolled_layers_agree():
    cfg = tiny_config(n_kv_heads=2)
    scanned = make_model(dataclasses.replace(cfg, scan_layers=True))
    unrolled = make_model(dataclasses.replace(cfg, scan_layers=False))
    jax.tree.map(
        np.testing.assert_array_equal,
        nnx.state(scanned, nnx.Param),
        nnx.state(unrolled, nnx.Param),
    )
    tokens = random_tokens(8)
    segment_ids = jnp.asarray([[0] * 4 + [1] * 8] * BATCH)
    np.testing.assert_allclose(
        np.asarray(scanned(tokens, segment_ids=segment_ids)),
        np.asarray(unrolled(tokens, segment_ids=segment_ids)),
        rtol=0,
        atol=1e-5,
    )


def test_projections_are_fused_except_under_a_tensor_axis():
    """The fused path is one matmul per projection group; a mesh splitting heads / mlp over
    `tensor` (more than one device) turns it off, a tensor axis of one does not."""
    from illada_jax.model.layers import can_fuse_projections

    def dot_count(cfg):
        model = make_model(cfg)
        graphdef, params = nnx.split(model)
        jaxpr = jax.make_jaxpr(lambda p, t: nnx.merge(graphdef, p)(t))(params, random_tokens(1))
        return str(jaxpr).count("dot_general")

    cfg = tiny_config(n_kv_heads=2, scan_layers=False, n_layers=1)
    fused, separate = dot_count(cfg), dot_count(dataclasses.replace(cfg, fused_projections=False))
    assert separate - fused == 3  # q/k/v: 3 -> 1 and gate/up: 2 -> 1
    assert can_fuse_projections(True) and not can_fuse_projections(False)
    with jax.set_mesh(jax.make_mesh((1, 1), ("fsdp", "tensor"))):
        assert can_fuse_projections(True)
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((2,), ("tensor",))):
        assert not can_fuse_projections(True)  # an abstract 2-device mesh: no devices needed


def _param_grads(cfg: ModelConfig, tokens, key_mask):
    """Gradient of mean(logits**2) w.r.t. all parameters (fresh model, seed 0)."""
    model = make_model(cfg)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        logits = nnx.merge(graphdef, params, rest)(tokens, key_mask=key_mask)
        return jnp.sum(logits**2) / logits.size

    return jax.jit(jax.grad(loss))(params)


@pytest.mark.parametrize(
    ("scan_layers", "policies"),
    [
        (True, ("full", "save_dots", "save_dots_no_batch")),
        # Unrolled layers take the other `prevent_cse` branch; one policy keeps the file fast.
        (False, ("full",)),
    ],
)
def test_remat_policies_give_identical_gradients(scan_layers, policies):
    """Every remat policy gives the gradients of remat_policy="none" (same seed, same params)."""
    cfg = tiny_config(n_kv_heads=2, tie_embeddings=False, scan_layers=scan_layers)
    tokens = random_tokens(9)
    key_mask = lengths_to_key_mask([LENGTH, 8])
    reference = _param_grads(cfg, tokens, key_mask)
    leaves = jax.tree_util.tree_leaves_with_path(reference)
    assert len(leaves) == 12  # embed, lm_head, final_norm, 9 stacked block params
    assert all(np.max(np.abs(np.asarray(g))) > 0 for _, g in leaves)
    for policy in policies:
        grads = _param_grads(dataclasses.replace(cfg, remat_policy=policy), tokens, key_mask)
        flat = dict(jax.tree_util.tree_leaves_with_path(grads))
        for path, expected in leaves:
            np.testing.assert_allclose(
                np.asarray(flat[path]),
                np.asarray(expected),
                rtol=1e-5,
                atol=1e-6,
                err_msg=f"remat_policy={policy}, param {jax.tree_util.keystr(path)}",
            )


# ---------------------------------------------------------------------------------------------
# 7. Mixed precision
# ---------------------------------------------------------------------------------------------


def test_bfloat16_compute_close_to_float32():
    cfg = tiny_config(n_kv_heads=2)
    fp32 = make_model(cfg)
    bf16 = make_model(dataclasses.replace(cfg, compute_dtype="bfloat16"))
    assert bf16.blocks.attn.q_proj[...].dtype == jnp.float32  # parameters stay fp32
    tokens = random_tokens(10)
    key_mask = lengths_to_key_mask([LENGTH, 9])
    ref = np.asarray(fp32(tokens, key_mask=key_mask))
    out = bf16(tokens, key_mask=key_mask)
    assert out.dtype == jnp.float32  # the head accumulates and returns fp32
    out = np.asarray(out)
    assert np.all(np.isfinite(out))
    err = max_rel_err(out, ref, key_mask)
    assert err < 5e-2, f"bf16 relative error {err:.3g}"
    assert err > 0  # it really ran in bf16


# ---------------------------------------------------------------------------------------------
# 8. Splash attention (Pallas, interpret mode on CPU) against the XLA kernel
# ---------------------------------------------------------------------------------------------


def _splash_inputs(length: int, lengths, seg_splits):
    rng = np.random.default_rng(11)
    q = jnp.asarray(rng.standard_normal((2, length, 4, 8)), jnp.float32)  # [B, L, H, D]
    k = jnp.asarray(rng.standard_normal((2, length, 2, 8)), jnp.float32)  # [B, L, KV, D]
    v = jnp.asarray(rng.standard_normal((2, length, 2, 8)), jnp.float32)
    key_mask = lengths_to_key_mask(lengths, length)
    seg = np.stack([(np.arange(length) >= s).astype(np.int32) for s in seg_splits])
    return q, k, v, key_mask, jnp.asarray(seg)


def test_splash_interpret_matches_xla():
    # One whole 128-tile: no internal padding.
    q, k, v, key_mask, seg = _splash_inputs(128, lengths=[128, 100], seg_splits=[70, 40])
    out = splash_attention(q, k, v, key_mask, seg, interpret=True)
    ref = xla_attention(q, k, v, attention_mask(key_mask, seg))
    real = np.asarray(key_mask)
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref)[real], rtol=0, atol=1e-5)


def test_splash_interpret_matches_xla_short_sequence():
    # L=16 is padded internally to one 128-tile; the pad must stay invisible.
    q, k, v, key_mask, seg = _splash_inputs(16, lengths=[16, 12], seg_splits=[7, 5])
    out = splash_attention(q, k, v, key_mask, seg, interpret=True)
    ref = xla_attention(q, k, v, attention_mask(key_mask, seg))
    real = np.asarray(key_mask)
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref)[real], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# 9. Parameter counts (docs/models.md#shapes)
# ---------------------------------------------------------------------------------------------


def expected_counts(cfg: ModelConfig) -> tuple[int, int]:
    """(total, non-embedding) from the architecture; non-embedding excludes embed and lm_head."""
    d, hd, mlp = cfg.d_model, cfg.head_dim, cfg.mlp_dim
    attn = 2 * d * cfg.n_heads * hd + 2 * d * cfg.n_kv_heads * hd  # q, o + k, v
    per_layer = attn + 3 * d * mlp + 2 * d  # + gate, up, down + two norm scales
    if cfg.qkv_bias:  # Qwen2: biases on q, k, v
        per_layer += (cfg.n_heads + 2 * cfg.n_kv_heads) * hd
    non_embedding = cfg.n_layers * per_layer + d  # + final norm
    embedding = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return non_embedding + embedding, non_embedding


@pytest.mark.parametrize("name", list(MODEL_PRESETS))
def test_count_params_matches_formula(name):
    cfg = ModelConfig(**MODEL_PRESETS[name])
    assert count_params(cfg) == expected_counts(cfg)


def test_count_params_matches_instantiated_tree():
    cfg = tiny_config(n_kv_heads=2, tie_embeddings=False)
    leaves = jax.tree.leaves(nnx.state(make_model(cfg), nnx.Param))
    assert count_params(cfg)[0] == sum(leaf.size for leaf in leaves)


def _sig3(x: int) -> float:
    return float(f"{x:.3g}")


@pytest.mark.parametrize(
    ("name", "total", "non_embedding"),
    [
        ("illada_8b", 7.62e9, 6.98e9),
        ("llada_8b", 8.02e9, 6.98e9),
        ("llada_1b", 1.49e9, 0.969e9),
        ("qwen2_5_7b", 7.62e9, 6.53e9),  # Qwen2.5 model card: 7.61B (truncated), 6.53B
        ("llama3_8b", 8.03e9, 6.98e9),
    ],
)
def test_published_sizes(name, total, non_embedding):
    got_total, got_non_embedding = count_params(ModelConfig(**MODEL_PRESETS[name]))
    assert (_sig3(got_total), _sig3(got_non_embedding)) == (total, non_embedding)
    if name == "illada_8b":
        assert (got_total, got_non_embedding) == (7_615_025_152, 6_979_588_096)


def test_small_preset_sizes_match_their_comments():
    counts = {name: count_params(ModelConfig(**MODEL_PRESETS[name])) for name in MODEL_PRESETS}
    tiny_total, tiny_non_embedding = counts["tiny"]
    assert round(tiny_non_embedding / 1e6, 2) == 0.98
    assert round((tiny_total - tiny_non_embedding) / 1e6, 2) == 0.13
    assert round(counts["small"][0] / 1e6, 1) == 24.6
    assert 95e6 < counts["100m"][0] < 105e6
