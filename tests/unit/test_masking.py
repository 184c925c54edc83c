"""The forward (masking) process and its randomness (docs/algorithms.md: the forward
process, time sampling, random length).

Statistical checks use fixed keys and tolerances of several standard errors, so they are
deterministic and can only fail when the distribution is wrong.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from illada_jax.diffusion import masking

pytestmark = pytest.mark.core

EPS = 1e-3


def _keys(n: int, seed: int = 0) -> jax.Array:
    return jax.random.split(jax.random.key(seed), n)


# ---------------------------------------------------------------------------------------------
# mask_probability
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [1e-3, 0.0, 0.25])
def test_mask_probability_matches_linear_schedule(eps):
    t = np.array([0.0, 1e-6, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999], np.float32)
    got = np.asarray(masking.mask_probability(jnp.asarray(t), eps), np.float64)
    want = (1.0 - eps) * t.astype(np.float64) + eps
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_mask_probability_range():
    t_max = np.nextafter(np.float32(1.0), np.float32(0.0))
    t = jnp.asarray(np.array([0.0, 0.5, t_max], np.float32))
    p = np.asarray(masking.mask_probability(t, EPS))
    assert p[0] == pytest.approx(EPS, rel=1e-6)
    assert np.all(p >= np.float32(EPS) * (1 - 1e-6))
    assert np.all(p < 1.0)
    # And on real sampled times.
    ts = masking.sample_times(jax.random.key(3), 20000, "uniform")
    ps = np.asarray(masking.mask_probability(ts, EPS))
    assert ps.min() >= np.float32(EPS) * (1 - 1e-6) and ps.max() < 1.0


# ---------------------------------------------------------------------------------------------
# sample_times
# ---------------------------------------------------------------------------------------------


def test_sample_times_uniform_moments():
    n = 20000
    t = np.asarray(masking.sample_times(jax.random.key(0), n, "uniform"), np.float64)
    assert t.shape == (n,)
    assert t.min() >= 0.0 and t.max() < 1.0
    mean_se = np.sqrt(1.0 / 12.0 / n)
    assert abs(t.mean() - 0.5) < 5 * mean_se
    # Var of the sample variance of U[0,1): (mu4 - sigma^4) / n with mu4 = 1/80.
    var_se = np.sqrt((1.0 / 80.0 - 1.0 / 144.0) / n)
    assert abs(t.var() - 1.0 / 12.0) < 5 * var_se
    # Roughly flat histogram (10 bins, 5 sigma each).
    counts, _ = np.histogram(t, bins=10, range=(0.0, 1.0))
    assert np.all(np.abs(counts - n / 10) < 5 * np.sqrt(n * 0.1 * 0.9))


def test_sample_times_different_keys_differ():
    a = masking.sample_times(jax.random.key(0), 16, "uniform")
    b = masking.sample_times(jax.random.key(1), 16, "uniform")
    assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_sample_times_antithetic_strata():
    b = 64
    keys = _keys(500, seed=1)
    t = np.asarray(jax.vmap(lambda k: masking.sample_times(k, b, "antithetic"))(keys), np.float64)
    assert t.shape == (500, b)
    rows = np.arange(b, dtype=np.float64)[None, :]
    assert np.all(t >= rows / b), "a row fell below its stratum"
    assert np.all(t < (rows + 1) / b), "a row reached the next stratum"
    assert t.min() >= 0.0 and t.max() < 1.0
    # Inside its stratum, B*t - r is uniform on [0, 1).
    frac = (t * b - rows).ravel()
    assert abs(frac.mean() - 0.5) < 5 * np.sqrt(1.0 / 12.0 / frac.size)


def test_sample_times_antithetic_reduces_variance_of_batch_mean():
    b, n_keys = 64, 200
    keys = _keys(n_keys, seed=2)

    def batch_means(method):
        t = jax.vmap(lambda k: masking.sample_times(k, b, method))(keys)
        return np.asarray(t, np.float64).mean(axis=1)

    uniform, antithetic = batch_means("uniform"), batch_means("antithetic")
    # Both unbiased for E[t] = 1/2.
    assert abs(uniform.mean() - 0.5) < 5 * np.sqrt(1.0 / 12.0 / (b * n_keys))
    assert abs(antithetic.mean() - 0.5) < 0.01
    assert antithetic.var() / uniform.var() < 0.05


def test_sample_times_unknown_method_raises():
    with pytest.raises(ValueError):
        masking.sample_times(jax.random.key(0), 4, "sobol")


# ---------------------------------------------------------------------------------------------
# apply_mask
# ---------------------------------------------------------------------------------------------

MASK_ID = 4
VOCAB = 50


def _tokens(batch, length, seed=0):
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, VOCAB - 1, size=(batch, length))
    toks = np.where(
        toks >= MASK_ID, toks + 1, toks
    )  # never the mask id (docs/algorithms.md#sft-llada-style)
    assert not np.any(toks == MASK_ID)
    return toks.astype(np.int32)


def test_apply_mask_rates_and_replacement():
    batch, length = 8, 20000
    p = np.array([EPS, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.999], np.float32)
    toks = _tokens(batch, length)
    noisy, is_masked = masking.apply_mask(
        jax.random.key(7), jnp.asarray(toks), jnp.asarray(p), MASK_ID
    )
    noisy, is_masked = np.asarray(noisy), np.asarray(is_masked)
    assert noisy.shape == toks.shape and is_masked.shape == toks.shape
    assert is_masked.dtype == np.bool_
    assert noisy.dtype == toks.dtype
    # Masked positions hold the mask id, the others keep their token.
    np.testing.assert_array_equal(noisy[is_masked], MASK_ID)
    np.testing.assert_array_equal(noisy[~is_masked], toks[~is_masked])
    np.testing.assert_array_equal(noisy == MASK_ID, is_masked)
    # Per-row masked fraction ~ p_b within 5 binomial sigma.
    p64 = p.astype(np.float64)
    frac = is_masked.mean(axis=1)
    sigma = np.sqrt(p64 * (1 - p64) / length)
    assert np.all(np.abs(frac - p64) < 5 * sigma + 1e-12), (frac, p64)
    # Independence between neighbours: P(both masked) ~ p^2.
    both = (is_masked[:, 1:] & is_masked[:, :-1]).mean(axis=1)
    q = p64**2
    assert np.all(np.abs(both - q) < 6 * np.sqrt(q * (1 - q) / (length - 1)) + 1e-12)


def test_apply_mask_respects_maskable():
    batch, length = 4, 4096
    toks = _tokens(batch, length, seed=1)
    rng = np.random.default_rng(2)
    maskable = rng.random((batch, length)) < 0.5
    maskable[0] = False  # a row with nothing maskable
    p = np.array([0.999, 0.999, 0.5, 0.2], np.float32)
    noisy, is_masked = masking.apply_mask(
        jax.random.key(11), jnp.asarray(toks), jnp.asarray(p), MASK_ID, jnp.asarray(maskable)
    )
    noisy, is_masked = np.asarray(noisy), np.asarray(is_masked)
    assert not np.any(is_masked & ~maskable)
    assert not np.any(is_masked[0])
    np.testing.assert_array_equal(noisy[~maskable], toks[~maskable])
    np.testing.assert_array_equal(noisy[is_masked], MASK_ID)
    for b in range(1, batch):
        n = maskable[b].sum()
        frac = is_masked[b][maskable[b]].mean()
        p64 = float(p[b])
        assert abs(frac - p64) < 5 * np.sqrt(p64 * (1 - p64) / n) + 1e-3


# ---------------------------------------------------------------------------------------------
# random_length_valid (LLaDA truncation, per step)
# ---------------------------------------------------------------------------------------------


def _valid_many(n_keys, batch, length, prob, seed):
    fn = jax.jit(
        jax.vmap(lambda k: masking.random_length_valid(k, batch, length, prob)),
    )
    return np.asarray(fn(_keys(n_keys, seed)))


def test_random_length_valid_prob_zero_is_all_valid():
    v = _valid_many(200, 3, 16, 0.0, seed=0)
    assert v.shape == (200, 3, 16) and v.dtype == np.bool_
    assert v.all()


def test_random_length_valid_prob_one_is_uniform_prefix():
    n_keys, batch, length = 4000, 3, 8
    v = _valid_many(n_keys, batch, length, 1.0, seed=1)
    # Same cut for every row of the batch (per-step truncation).
    assert np.all(v == v[:, :1, :])
    ell = v[:, 0, :].sum(axis=1)
    # A prefix of length ell: exactly positions < ell are valid.
    prefix = np.arange(length)[None, :] < ell[:, None]
    np.testing.assert_array_equal(v[:, 0, :], prefix)
    assert ell.min() >= 1 and ell.max() <= length
    counts = np.bincount(ell, minlength=length + 1)[1:]
    q = 1.0 / length
    sigma = np.sqrt(n_keys * q * (1 - q))
    assert np.all(np.abs(counts - n_keys * q) < 5 * sigma), counts


def test_random_length_valid_truncation_rate():
    n_keys, batch, length, prob = 20000, 2, 8, 0.01
    v = _valid_many(n_keys, batch, length, prob, seed=2)
    truncated = ~v.all(axis=(1, 2))
    # l = L is drawn with probability 1/L and then nothing is cut.
    q = prob * (length - 1) / length
    rate = truncated.mean()
    assert abs(rate - q) < 5 * np.sqrt(q * (1 - q) / n_keys), rate
    # Untruncated steps are fully valid; truncated ones are prefixes shared by the batch.
    assert np.all(v == v[:, :1, :])


# ---------------------------------------------------------------------------------------------
# two_segment_split (iLLaDA, per sequence)
# ---------------------------------------------------------------------------------------------


def _plain(batch, length):
    """Plain windows: one real segment (id 1), positions 0..L-1."""
    seg = jnp.ones((batch, length), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    return seg, pos


def _split(key, batch, length, prob):
    seg, pos = masking.two_segment_split(key, *_plain(batch, length), prob)
    return np.asarray(seg), np.asarray(pos)


def test_two_segment_split_prob_zero():
    seg, pos = _split(jax.random.key(0), 5, 12, 0.0)
    assert seg.shape == (5, 12) and pos.shape == (5, 12)
    assert seg.dtype == np.int32 and pos.dtype == np.int32
    assert np.all(seg == 1)  # segment k -> 2k-1 before any cut
    np.testing.assert_array_equal(pos, np.broadcast_to(np.arange(12), (5, 12)))


def test_two_segment_split_prob_one_structure_and_cut_distribution():
    batch, length = 20000, 8
    seg, pos = _split(jax.random.key(1), batch, length, 1.0)
    cut = (seg == 1).sum(axis=1)
    assert cut.min() >= 1 and cut.max() <= length - 1
    idx = np.arange(length)[None, :]
    want_seg = np.where(idx >= cut[:, None], 2, 1)
    np.testing.assert_array_equal(seg, want_seg)
    want_pos = np.where(idx >= cut[:, None], idx - cut[:, None], idx)
    np.testing.assert_array_equal(pos, want_pos)
    # c ~ U{1..L-1}.
    counts = np.bincount(cut, minlength=length)[1:]
    q = 1.0 / (length - 1)
    assert np.all(np.abs(counts - batch * q) < 5 * np.sqrt(batch * q * (1 - q))), counts


def test_two_segment_split_rate():
    batch, length, prob = 20000, 16, 0.3
    seg, pos = _split(jax.random.key(2), batch, length, prob)
    split = seg.max(axis=1) == 2
    assert abs(split.mean() - prob) < 5 * np.sqrt(prob * (1 - prob) / batch)
    # Unsplit rows keep plain positions.
    np.testing.assert_array_equal(
        pos[~split], np.broadcast_to(np.arange(length), pos[~split].shape)
    )
    # Split rows: segment ids are non-decreasing and in {1, 2}.
    assert np.all(np.diff(seg, axis=1) >= 0) and set(np.unique(seg)) <= {1, 2}


def test_two_segment_split_length_two_and_one():
    seg, pos = _split(jax.random.key(3), 64, 2, 1.0)
    np.testing.assert_array_equal(seg, np.broadcast_to([1, 2], (64, 2)))
    np.testing.assert_array_equal(pos, np.zeros((64, 2)))
    seg, pos = _split(jax.random.key(4), 256, 1, 1.0)
    assert np.all(seg == 1) and np.all(pos == 0)


def test_two_segment_split_of_packed_documents():
    """Only the document holding the cut splits; padding (0) and other documents are untouched."""
    seg = np.array([[1, 1, 1, 2, 2, 2, 2, 3, 3, 0, 0, 0]] * 400, np.int32)
    pos = np.array([[5, 6, 7, 0, 1, 2, 3, 0, 1, 9, 10, 11]] * 400, np.int32)
    new_seg, new_pos = masking.two_segment_split(
        jax.random.key(5), jnp.asarray(seg), jnp.asarray(pos), 1.0
    )
    new_seg, new_pos = np.asarray(new_seg), np.asarray(new_pos)
    for row in range(400):
        # Reference: recover the cut c as the first index whose id is "after" (even, non-zero).
        evens = np.flatnonzero((new_seg[row] % 2 == 0) & (new_seg[row] > 0))
        c = int(evens[0]) if len(evens) else 9  # no even id: the cut fell in the padding
        after = np.arange(12) >= c
        want_seg = np.where(seg[row] == 0, 0, 2 * seg[row] - 1 + after)
        restart = after & (seg[row] == seg[row, c]) & (seg[row] != 0)
        want_pos = np.where(restart, pos[row] - pos[row, c], pos[row])
        np.testing.assert_array_equal(new_seg[row], want_seg)
        np.testing.assert_array_equal(new_pos[row], want_pos)
        # Tokens of one original document never share a segment with another document.
        for a in range(12):
            for b in range(12):
                if new_seg[row, a] == new_seg[row, b] and new_seg[row, a]:
                    assert seg[row, a] == seg[row, b]


# ---------------------------------------------------------------------------------------------
# Importance weight 1[masked] / p_mask is unbiased (the 1/t weight of eq. 3)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["uniform", "antithetic"])
def test_importance_weight_is_unbiased(method):
    batch, length = 4000, 64
    t_key, m_key = jax.random.split(jax.random.key(123))
    p = masking.mask_probability(masking.sample_times(t_key, batch, method), EPS)
    toks = jnp.asarray(_tokens(batch, length, seed=3))
    _, is_masked = masking.apply_mask(m_key, toks, p, MASK_ID)
    w = np.asarray(is_masked, np.float64) / np.asarray(p, np.float64)[:, None]
    row_means = w.mean(axis=1)  # i.i.d. across rows for uniform; stratified is less variable
    se = row_means.std(ddof=1) / np.sqrt(batch)
    assert abs(row_means.mean() - 1.0) < 6 * se, (row_means.mean(), se)
    # And the masked fraction tracks E[p] = (1 - eps)/2 + eps.
    frac = np.asarray(is_masked).mean()
    assert abs(frac - ((1 - EPS) / 2 + EPS)) < 0.02


# ---------------------------------------------------------------------------------------------
# l-form masking for the held-out ELBO bound (docs/algorithms.md#the-held-out-bound, LLaDA eq. 14)
# ---------------------------------------------------------------------------------------------


def test_mask_exact_count_masks_exactly_l_real_tokens_with_uniform_l():
    batch, length, n_keys = 4, 10, 3000
    tokens = jnp.arange(batch * length, dtype=jnp.int32).reshape(batch, length) + 10
    valid = np.arange(length)[None, :] < np.array([10, 7, 3, 1])[:, None]
    counts = np.zeros((batch, length + 1), np.int64)
    weighted_ce = np.zeros(batch)
    ce = np.random.default_rng(0).uniform(0.5, 3.0, (batch, length))  # a fixed per-token CE
    for k in range(n_keys):
        noisy, masked, weight = masking.mask_exact_count(
            jax.random.key(k), tokens, 4, jnp.asarray(valid)
        )
        noisy, masked, weight = np.asarray(noisy), np.asarray(masked), np.asarray(weight)
        assert not np.any(masked & ~valid)  # padding never masked
        np.testing.assert_array_equal(noisy[masked], 4)
        np.testing.assert_array_equal(noisy[~masked], np.asarray(tokens)[~masked])
        n_masked = masked.sum(axis=1)
        n = valid.sum(axis=1)
        assert np.all((n_masked >= 1) & (n_masked <= n))
        np.testing.assert_allclose(weight, n / n_masked, rtol=1e-6)
        counts[np.arange(batch), n_masked] += 1
        weighted_ce += (masked * ce).sum(axis=1) * weight
    n = valid.sum(axis=1)
    for row in range(batch):
        # l ~ U{1..n}: each count within 5 sigma of n_keys / n.
        q = 1.0 / n[row]
        observed = counts[row, 1 : n[row] + 1]
        assert np.all(np.abs(observed - n_keys * q) < 5 * np.sqrt(n_keys * q * (1 - q)) + 1)
    # Unbiased: E[(n/l) * sum of masked CE] = sum of CE over the real tokens.
    want = (ce * valid).sum(axis=1)
    np.testing.assert_allclose(weighted_ce / n_keys, want, rtol=0.06)
