"""Masked-diffusion losses (docs/algorithms.md: the pre-training loss
and SFT) against float64 numpy references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from illada_jax.config.schema import DiffusionConfig, ModelConfig
from illada_jax.diffusion import losses
from illada_jax.model.transformer import Transformer
from illada_jax.train.objective import diffusion_loss

pytestmark = pytest.mark.core

# ---------------------------------------------------------------------------------------------
# numpy float64 references
# ---------------------------------------------------------------------------------------------


def np_logsumexp(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def np_token_ce(hidden, w, targets):
    logits = hidden.astype(np.float64) @ w.astype(np.float64)
    target_logit = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return np_logsumexp(logits) - target_logit


def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _ce_inputs(batch, length, d_model, vocab, seed):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(batch, length, d_model)).astype(np.float32)
    w = (rng.normal(size=(d_model, vocab)) / np.sqrt(d_model)).astype(np.float32)
    targets = rng.integers(0, vocab, size=(batch, length)).astype(np.int32)
    return hidden, w, targets


# ---------------------------------------------------------------------------------------------
# token_cross_entropy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "length,chunk",
    [(12, 4), (12, 6), (12, 12), (13, 13), (13, 4), (13, 5), (13, 20), (13, 1), (1, 3)],
)
def test_token_cross_entropy_matches_numpy(length, chunk):
    batch, d_model, vocab = 3, 8, 11
    hidden, w, targets = _ce_inputs(batch, length, d_model, vocab, seed=length * 31 + chunk)
    w_j = jnp.asarray(w)
    ce = losses.token_cross_entropy(
        jnp.asarray(hidden), jnp.asarray(targets), lambda h: h @ w_j, chunk
    )
    assert ce.shape == (batch, length)
    assert ce.dtype == jnp.float32
    np.testing.assert_allclose(
        np.asarray(ce, np.float64), np_token_ce(hidden, w, targets), rtol=1e-5, atol=1e-6
    )


def test_token_cross_entropy_project_sees_chunks():
    """`project` receives [batch, chunk, d] blocks, never the whole sequence."""
    batch, length, d_model, vocab, chunk = 2, 13, 4, 5, 4
    hidden, w, targets = _ce_inputs(batch, length, d_model, vocab, seed=0)
    shapes = []
    w_j = jnp.asarray(w)

    def project(h):
        shapes.append(h.shape)
        return h @ w_j

    losses.token_cross_entropy(jnp.asarray(hidden), jnp.asarray(targets), project, chunk)
    assert shapes and all(s == (batch, chunk, d_model) for s in shapes)


def test_token_cross_entropy_gradients():
    batch, length, d_model, vocab = 2, 13, 8, 11
    hidden, w, targets = _ce_inputs(batch, length, d_model, vocab, seed=5)
    weights = np.random.default_rng(6).random((batch, length)).astype(np.float32)
    t_j, wt_j = jnp.asarray(targets), jnp.asarray(weights)

    def objective(h, w_, chunk_size):
        ce = losses.token_cross_entropy(h, t_j, lambda x: x @ w_, chunk_size)
        return jnp.sum(ce * wt_j)

    grad = jax.jit(jax.grad(objective, argnums=(0, 1)), static_argnums=2)
    h_j, w_j = jnp.asarray(hidden), jnp.asarray(w)
    g_h_full, g_w_full = grad(h_j, w_j, length)  # one chunk: no chunking at all

    # Analytic float64 reference: d CE / d logits = softmax - onehot.
    h64, w64 = hidden.astype(np.float64), w.astype(np.float64)
    probs = np_softmax(h64 @ w64)
    onehot = np.eye(vocab)[targets]
    d_logits = weights.astype(np.float64)[..., None] * (probs - onehot)
    want_g_h = d_logits @ w64.T
    want_g_w = np.einsum("bld,blv->dv", h64, d_logits)
    for g_h, g_w in [(g_h_full, g_w_full), grad(h_j, w_j, 4), grad(h_j, w_j, 1)]:
        np.testing.assert_allclose(np.asarray(g_h), np.asarray(g_h_full), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(g_w), np.asarray(g_w_full), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(g_h, np.float64), want_g_h, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(g_w, np.float64), want_g_w, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# pretrain_loss (docs/algorithms.md#the-pre-training-loss)
# ---------------------------------------------------------------------------------------------


def _loss_inputs(batch, length, seed):
    rng = np.random.default_rng(seed)
    ce = rng.uniform(0.1, 5.0, size=(batch, length)).astype(np.float32)
    p = rng.uniform(1e-3, 1.0, size=(batch,)).astype(np.float32)
    is_masked = rng.random((batch, length)) < p[:, None]
    return ce, is_masked, p


def np_pretrain(ce, is_masked, p, n_tokens):
    ce64, p64 = ce.astype(np.float64), p.astype(np.float64)
    return np.sum(np.where(is_masked, ce64 / p64[:, None], 0.0)) / n_tokens


def _check_stats(out, ce, is_masked):
    assert int(out.num_masked) == int(is_masked.sum())
    assert out.num_masked.dtype == jnp.int32
    want = ce.astype(np.float64)[is_masked].mean() if is_masked.any() else 0.0
    np.testing.assert_allclose(float(out.masked_ce), want, rtol=1e-5, atol=1e-7)


def test_pretrain_loss_full_batch():
    batch, length = 4, 16
    ce, is_masked, p = _loss_inputs(batch, length, seed=0)
    is_masked[2] = False  # a row with no masked token: contributes 0, still in the normaliser
    p[0] = 1e-3  # a tiny p_mask with a masked token: large 1/p weight
    is_masked[0, 3] = True
    out = losses.pretrain_loss(jnp.asarray(ce), jnp.asarray(is_masked), jnp.asarray(p))
    want = np_pretrain(ce, is_masked, p, batch * length)
    np.testing.assert_allclose(float(out.loss), want, rtol=1e-5)
    _check_stats(out, ce, is_masked)

    # Removing the masked-free row changes the normaliser from B*L to (B-1)*L.
    keep = np.array([0, 1, 3])
    out3 = losses.pretrain_loss(
        jnp.asarray(ce[keep]), jnp.asarray(is_masked[keep]), jnp.asarray(p[keep])
    )
    np.testing.assert_allclose(float(out3.loss), want * batch / (batch - 1), rtol=1e-5)

    # valid=None equals an all-True valid.
    out_v = losses.pretrain_loss(
        jnp.asarray(ce), jnp.asarray(is_masked), jnp.asarray(p), jnp.ones((batch, length), bool)
    )
    np.testing.assert_allclose(float(out_v.loss), float(out.loss), rtol=1e-6)


@pytest.mark.parametrize("ell", [1, 5, 11, 16])
def test_pretrain_loss_truncated_batch(ell):
    batch, length = 3, 16
    ce, is_masked, p = _loss_inputs(batch, length, seed=ell)
    valid = np.broadcast_to(np.arange(length) < ell, (batch, length)).copy()
    ce[~valid] = 1e3  # padding CE must not leak into the loss, even where marked masked
    is_masked[1] = False  # a row with nothing masked still counts in B*l
    out = losses.pretrain_loss(
        jnp.asarray(ce), jnp.asarray(is_masked), jnp.asarray(p), jnp.asarray(valid)
    )
    is_masked &= valid  # the reference: only real tokens are in the loss
    want = np_pretrain(ce, is_masked, p, batch * ell)
    np.testing.assert_allclose(float(out.loss), want, rtol=1e-5, atol=1e-7)
    _check_stats(out, ce, is_masked)


def test_pretrain_loss_nothing_masked():
    ce, _, p = _loss_inputs(2, 8, seed=3)
    out = losses.pretrain_loss(jnp.asarray(ce), jnp.zeros((2, 8), bool), jnp.asarray(p))
    assert float(out.loss) == 0.0
    assert int(out.num_masked) == 0
    assert float(out.masked_ce) == 0.0


def test_pretrain_loss_gradient_is_importance_weight():
    """d loss / d ce_i = 1[masked_i] / (p_b * B * L)."""
    batch, length = 3, 8
    ce, is_masked, p = _loss_inputs(batch, length, seed=4)
    g = jax.grad(lambda c: losses.pretrain_loss(c, jnp.asarray(is_masked), jnp.asarray(p)).loss)(
        jnp.asarray(ce)
    )
    want = is_masked / (p.astype(np.float64)[:, None] * batch * length)
    np.testing.assert_allclose(np.asarray(g, np.float64), want, rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# sft_llada_loss (docs/algorithms.md#sft-llada-style)
# ---------------------------------------------------------------------------------------------


def np_sft_llada(ce, is_masked, p, prompt_lengths):
    batch, length = ce.shape
    total = 0.0
    for b in range(batch):
        answer_len = length - int(prompt_lengths[b])
        masked_sum = ce[b].astype(np.float64)[is_masked[b]].sum()
        total += masked_sum / (float(p[b]) * answer_len)
    return total / batch


def test_sft_llada_loss_matches_reference():
    batch, length = 5, 16
    ce, is_masked, p = _loss_inputs(batch, length, seed=7)
    prompt_lengths = np.array([3, 0, 10, 15, 7], np.int32)
    is_answer = np.arange(length)[None, :] >= prompt_lengths[:, None]
    is_masked &= is_answer
    is_masked[4] = False  # zero masked answer tokens: contributes 0, still counts in 1/B
    is_masked[3, 15] = True  # a one-token answer, fully masked
    out = losses.sft_llada_loss(
        jnp.asarray(ce), jnp.asarray(is_masked), jnp.asarray(p), jnp.asarray(prompt_lengths)
    )
    want = np_sft_llada(ce, is_masked, p, prompt_lengths)
    np.testing.assert_allclose(float(out.loss), want, rtol=1e-5)
    _check_stats(out, ce, is_masked)
    # Different from the pretraining normalisation (guards against a swapped formula).
    assert not np.isclose(want, np_pretrain(ce, is_masked, p, batch * length), rtol=1e-3)


def test_sft_llada_loss_per_sample_normaliser():
    """Same masked CE sum, different answer lengths: the loss scales with 1/answer_len_b."""
    length = 8
    ce = np.full((1, length), 2.0, np.float32)
    is_masked = np.zeros((1, length), bool)
    is_masked[0, 6:] = True
    p = np.array([0.5], np.float32)
    for prompt_len in (2, 4, 6):
        out = losses.sft_llada_loss(
            jnp.asarray(ce), jnp.asarray(is_masked), jnp.asarray(p), jnp.asarray([prompt_len])
        )
        np.testing.assert_allclose(float(out.loss), 4.0 / (0.5 * (length - prompt_len)), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# diffusion_loss end to end on a tiny Transformer (docs/algorithms.md#the-pre-training-loss)
# ---------------------------------------------------------------------------------------------

MODEL_CFG = ModelConfig(
    vocab_size=32,
    d_model=16,
    n_layers=1,
    n_heads=2,
    n_kv_heads=1,
    head_dim=8,
    mlp_dim=32,
    max_seq_len=16,
    mask_token_id=4,
)
B, L = 4, 12


@pytest.fixture(scope="module")
def model():
    return nnx.jit(lambda: Transformer(MODEL_CFG, rngs=nnx.Rngs(0)))()


def _tokens(seed=0):
    rng = np.random.default_rng(seed)
    toks = rng.integers(5, MODEL_CFG.vocab_size, size=(B, L))  # never pad/bos/eos/mask
    return jnp.asarray(toks, jnp.int32)


def _jitted_loss(model, cfg):
    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state, batch, key):
        return diffusion_loss(nnx.merge(graphdef, state), batch, key, cfg)

    return lambda batch, key: f(state, batch, key)


def np_model_ce(model, noisy, targets):
    """Per-token float64 CE from the model's logits on a given noisy input."""
    logits = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(noisy)), np.float64)
    target_logit = np.take_along_axis(logits, np.asarray(targets)[..., None], axis=-1)[..., 0]
    return np_logsumexp(logits) - target_logit


def test_sft_llada_only_answer_positions_are_masked(model):
    cfg = DiffusionConfig(objective="sft_llada", random_length_mode="none", loss_chunk_size=5)
    loss_fn = _jitted_loss(model, cfg)
    batch = {"tokens": _tokens(), "prompt_lengths": jnp.full((B,), L - 1, jnp.int32)}
    for seed in range(8):
        loss, metrics = loss_fn(batch, jax.random.key(seed))
        assert int(metrics["num_masked"]) <= B
        assert np.isfinite(float(loss))


def test_sft_llada_high_mask_rate_end_to_end(model):
    """mask_eps ~ 1: every answer position is masked, prompts stay clean; the loss matches the
    per-sample answer-length reference computed from the model's own logits."""
    cfg = DiffusionConfig(
        objective="sft_llada", mask_eps=0.9999, random_length_mode="none", loss_chunk_size=5
    )
    loss_fn = _jitted_loss(model, cfg)
    tokens = _tokens(seed=1)
    prompt_lengths = np.array([2, 5, 0, 9], np.int32)
    batch = {"tokens": tokens, "prompt_lengths": jnp.asarray(prompt_lengths)}
    n_answer = int((L - prompt_lengths).sum())
    is_answer = np.arange(L)[None, :] >= prompt_lengths[:, None]
    noisy = np.where(is_answer, MODEL_CFG.mask_token_id, np.asarray(tokens))
    ce = np_model_ce(model, noisy, tokens)
    want = np.mean((ce * is_answer).sum(axis=1) / (L - prompt_lengths))
    checked = 0
    for seed in range(6):
        loss, metrics = loss_fn(batch, jax.random.key(seed))
        num_masked = int(metrics["num_masked"])
        assert num_masked <= n_answer  # prompt positions are never masked
        assert num_masked >= 0.9 * n_answer
        if num_masked == n_answer:
            # p_mask in [0.9999, 1): the 1/p weight is within 1e-4 of 1.
            np.testing.assert_allclose(float(loss), want, rtol=3e-4)
            np.testing.assert_allclose(float(metrics["masked_ce"]), ce[is_answer].mean(), rtol=1e-4)
            checked += 1
    assert checked >= 1


def test_pretrain_high_mask_rate_end_to_end(model):
    cfg = DiffusionConfig(
        objective="pretrain", mask_eps=0.999, random_length_mode="none", loss_chunk_size=4
    )
    loss_fn = _jitted_loss(model, cfg)
    tokens = _tokens(seed=2)
    # When everything is masked the input is all mask ids.
    ce = np_model_ce(model, np.full((B, L), MODEL_CFG.mask_token_id), tokens)
    checked = 0
    for seed in range(6):
        loss, metrics = loss_fn({"tokens": tokens}, jax.random.key(seed))
        num_masked = int(metrics["num_masked"])
        assert num_masked >= 0.95 * B * L
        assert float(metrics["mask_prob"]) >= 0.999 * (1 - 1e-6)
        if num_masked == B * L:
            # No label shift: the target at position i is tokens[i]; p in [0.999, 1).
            np.testing.assert_allclose(float(loss), ce.mean(), rtol=1.5e-3)
            np.testing.assert_allclose(float(metrics["masked_ce"]), ce.mean(), rtol=1e-4)
            checked += 1
    assert checked >= 1


def test_sft_llada_without_prompt_lengths_raises(model):
    cfg = DiffusionConfig(objective="sft_llada", random_length_mode="none")
    with pytest.raises(ValueError):
        diffusion_loss(model, {"tokens": _tokens()}, jax.random.key(0), cfg)


@pytest.mark.parametrize(
    "objective,mode",
    [("pretrain", "llada_truncate"), ("sft_llada", "illada_split")],
)
def test_diffusion_loss_finite_with_gradients(model, objective, mode):
    cfg = DiffusionConfig(
        objective=objective,
        random_length_mode=mode,
        random_length_prob=1.0,
        two_segment_prob=1.0,
        loss_chunk_size=5,
    )
    graphdef, state = nnx.split(model)
    batch = {"tokens": _tokens(seed=3), "prompt_lengths": jnp.array([1, 4, 6, 2], jnp.int32)}

    @jax.jit
    def loss_and_grad(state, key):
        return jax.value_and_grad(
            lambda s: diffusion_loss(nnx.merge(graphdef, s), batch, key, cfg), has_aux=True
        )(state)

    (loss, metrics), grads = loss_and_grad(state, jax.random.key(1))
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert int(metrics["num_masked"]) > 0
    leaves = jax.tree.leaves(grads)
    assert leaves
    assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)
    # The gradient tree mirrors the parameter tree.
    assert jax.tree.structure(grads) == jax.tree.structure(state)
