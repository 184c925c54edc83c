"""Scoring a continuation under a masked-diffusion LM (docs/algorithms.md#likelihood-and-scoring):
`mc_elbo`, `stratified_counts`, `confidence_score`, `greedy_check` and the `Model` wrappers over
them.

Every reference is float64 NumPy written here from the spec; log-probabilities come from
`numpy_reference.ref_forward`, an independent forward pass that only reads the model's parameters.
The model sees exactly `[prompt, answer]` (the code right-pads to a bucket but hides the pads from
attention keys, and RoPE positions start at 0 on the prompt's first token), so every reference
forward runs on the unpadded sequence.

- Monte-Carlo ELBO: the exact conditional ELBO is enumerated over every masked subset of a 3-token
  answer; the exact mean *and variance* of the stratified estimator are computed from the same
  enumeration, and `mc_elbo` must land within 4 standard errors of the exact value. Single-row
  estimates must each equal the value of one masked subset (exactly `l` answer tokens masked, the
  prompt never). A = 1 is exact for any seed, with and without unsupervised CFG.
- Confidence score and greedy check: a NumPy loop that reveals one token per forward pass.
- Errors: `ScoringError` with a message naming the problem.

Mask id 0 is covered too: answer-bucket padding (token 0) must never count as masked. Tiny model
(vocab 64, d 32, 2 layers): the file runs in well under a minute on a 2-core CPU.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from flax import nnx
from numpy_reference import (  # (pytest puts tests/unit on sys.path)
    make_model,
    model_params_f64,
    ref_forward,
    tiny_config,
)

from illada_jax.diffusion import likelihood
from illada_jax.diffusion.likelihood import ScoringError
from illada_jax.inference import Model

pytestmark = pytest.mark.core

MASK = 4  # tiny_config's mask_token_id
PROMPT = [10, 23, 5, 41]
ANSWER = [17, 33, 9]
GREEDY_PROMPTS = ([10, 23, 5, 41], [11, 12, 13], [50, 6, 44, 20, 9])


def _setup(**overrides):
    cfg = tiny_config(**overrides)
    model = make_model(cfg, 0)
    graphdef, params = nnx.split(model)
    return cfg, model, graphdef, params, model_params_f64(model)


CFG, MODEL, GRAPHDEF, PARAMS, P64 = _setup()


# ---------------------------------------------------------------------------------------------
# float64 NumPy references
# ---------------------------------------------------------------------------------------------


def np_log_softmax(x):
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def ref_log_probs(seqs, cfg=CFG, p64=P64):
    """Equal-length token lists -> float64 log-probs [N, L, V] (full attention, positions 0..)."""
    return np_log_softmax(ref_forward(p64, cfg, np.asarray(seqs, np.int64)))


def np_stratified_counts(k, b, a):
    """docs/algorithms.md#the-monte-carlo-elbo: round(linspace(k, k + (b-1)·A/b, b)) (half to even),
    wrapped into [1, A]."""
    counts = np.round(np.linspace(k, k + (b - 1) * a / b, b)).astype(np.int64)
    return (counts - 1) % a + 1


def subset_values(prompt, answer, mask_id=MASK):
    """{S: (A/|S|)·Σ_{i∈S} log p(a_i | prompt, answer with S masked)} over every non-empty S."""
    p, a = len(prompt), len(answer)
    subsets = [s for size in range(1, a + 1) for s in itertools.combinations(range(a), size)]
    seqs = [prompt + [mask_id if i in s else answer[i] for i in range(a)] for s in subsets]
    lp = ref_log_probs(seqs)
    return {
        s: a / len(s) * sum(lp[row, p + i, answer[i]] for i in s) for row, s in enumerate(subsets)
    }


def estimator_moments(values, a, b):
    """Exact mean and variance of one MC batch of `b` rows (docs/algorithms.md#the-monte-carlo-elbo)
    from the enumeration.

    Given the offset k, row r has count l_r(k) and an independent uniform subset of that size, so
    the batch mean has mean m(k) = mean_r g(l_r) and variance v(k) = Σ_r w(l_r) / b², with g(l),
    w(l) the mean and variance of the subset values of size l. Over k ~ U{1..A}:
    E = mean_k m(k), Var = mean_k v(k) + var_k m(k).
    """
    levels = range(1, a + 1)
    g = {size: np.mean([v for s, v in values.items() if len(s) == size]) for size in levels}
    w = {size: np.var([v for s, v in values.items() if len(s) == size]) for size in levels}
    means, variances = [], []
    for k in range(1, a + 1):
        counts = np_stratified_counts(k, b, a)
        means.append(np.mean([g[c] for c in counts]))
        variances.append(sum(w[c] for c in counts) / b**2)
    exact = np.mean([g[size] for size in levels])  # (1/A) Σ_l (A/l) E_{|S|=l}[...]
    return exact, float(np.mean(means)), float(np.mean(variances) + np.var(means))


def ref_confidence(prompt, answer, cfg=CFG, p64=P64, mask_id=MASK):
    """docs/algorithms.md#confidence-scoring loop. Returns (score, smallest gap between the best and
    runner-up position)."""
    p, a = len(prompt), len(answer)
    canvas, still, total, gap = [mask_id] * a, list(range(a)), 0.0, np.inf
    for _ in range(a):
        lp = ref_log_probs([prompt + canvas], cfg, p64)[0]
        own = np.array([lp[p + i, answer[i]] for i in still])
        best = int(np.argmax(own))  # ties -> lowest index (still is sorted)
        if len(still) > 1:
            gap = min(gap, own[best] - np.sort(own)[-2])
        total += own[best]
        i = still.pop(best)
        canvas[i] = answer[i]
    return total, gap


def ref_greedy(prompt, length, cfg=CFG, p64=P64, mask_id=MASK):
    """docs/algorithms.md#greedy-check decode: argmax everywhere masked, commit only the most
    confident position.

    Returns (decoded tokens, Σ committed log-probs, smallest decision margin)."""
    p = len(prompt)
    canvas, still, total, gap = [mask_id] * length, list(range(length)), 0.0, np.inf
    for _ in range(length):
        lp = ref_log_probs([prompt + canvas], cfg, p64)[0]
        rows = np.stack([lp[p + i] for i in still])  # [n_still, V]
        top2 = np.sort(rows, axis=1)[:, -2:]
        gap = min(gap, float(np.min(top2[:, 1] - top2[:, 0])))  # argmax margin per position
        conf = top2[:, 1]
        best = int(np.argmax(conf))
        if len(still) > 1:
            gap = min(gap, conf[best] - np.sort(conf)[-2])  # which-position margin
        total += conf[best]
        i = still.pop(best)
        canvas[i] = int(np.argmax(rows[best]))
    return canvas, total, gap


# ---------------------------------------------------------------------------------------------
# stratified_counts (docs/algorithms.md#the-monte-carlo-elbo)
# ---------------------------------------------------------------------------------------------

COUNT_CASES = [
    (b, a, k)
    for b, a in [
        (1, 1),
        (1, 5),
        (2, 3),
        (3, 5),
        (5, 3),
        (8, 8),
        (8, 3),
        (7, 13),
        (31, 3),
        (32, 3),
        (32, 4),
        (32, 5),
        (32, 100),
        (10, 3),
        (6, 4),
        (12, 7),
    ]  # fmt: skip
    for k in sorted({1, 2, (a + 1) // 2, a})
    if k <= a
]


@pytest.mark.parametrize(("rows", "answer_len", "offset"), COUNT_CASES)
def test_stratified_counts_match_spec(rows, answer_len, offset):
    got = np.asarray(likelihood.stratified_counts(float(offset), rows, answer_len))
    want = np_stratified_counts(offset, rows, answer_len)
    assert got.shape == (rows,)
    np.testing.assert_array_equal(got, want)
    assert got.min() >= 1 and got.max() <= answer_len


def test_stratified_counts_cover_all_levels():
    """A whole batch with b a multiple of A and no half-way ties hits every level equally often,
    and over the offsets k each row's count is uniform on {1..A} (what makes the ELBO unbiased)."""
    for b, a in [(9, 3), (15, 5), (21, 7)]:  # odd b: r·A/b is never a half-integer
        for k in range(1, a + 1):
            counts = np.asarray(likelihood.stratified_counts(float(k), b, a))
            np.testing.assert_array_equal(np.bincount(counts, minlength=a + 1)[1:], b // a)
        per_row = np.stack(
            [np.asarray(likelihood.stratified_counts(float(k), b, a)) for k in range(1, a + 1)]
        )  # [A, b]
        for r in range(b):
            assert sorted(per_row[:, r]) == list(range(1, a + 1))


# ---------------------------------------------------------------------------------------------
# mc_elbo (docs/algorithms.md#the-monte-carlo-elbo)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("batch_size", "n_batches", "seed"), [(31, 128, 0), (32, 128, 1)])
def test_mc_elbo_converges_to_exact_elbo(batch_size, n_batches, seed):
    """|MC − E| ≤ 4 standard errors, with E and the standard error computed exactly.

    With b = 31 (odd) no row count sits on a rounding tie, every row's count is uniform on
    {1..A}, and E equals the exact ELBO. With the default b = 32 and A = 3, row 16 has
    r·A/b = 1.5 and round-half-to-even (the reference's torch.round) gives counts {2, 1, 1} for
    k = 1, 2, 3 instead of a uniform level, so the estimator's expectation E is off the exact
    ELBO by a little (≈ 3e-3 nats here); the test then targets E, computed from the same
    enumeration. fp32 error (~1e-5) is negligible next to the standard error (~1.8e-2).
    """
    values = subset_values(PROMPT, ANSWER)
    exact, mean, var = estimator_moments(values, len(ANSWER), batch_size)
    if batch_size % 2:
        assert abs(mean - exact) < 1e-9
    else:
        assert 1e-4 < abs(mean - exact) < 1e-2  # the tie bias, present but small
    stderr = np.sqrt(var / n_batches)
    mc = likelihood.mc_elbo(
        GRAPHDEF, PARAMS, PROMPT, ANSWER, mask_id=MASK, mc_num=batch_size * n_batches,
        batch_size=batch_size, seed=seed,
    )  # fmt: skip
    # The test can fail: the per-level means g(l) are -13.50, -13.34, -13.26 and the subset
    # values spread over several nats, so a wrong weight (l instead of l/A), a masked prompt or
    # an unmasked count would move the estimate by far more than 4 · 0.018.
    assert abs(mc - mean) <= 4 * stderr, (mc, mean, exact, stderr)


def test_mc_elbo_single_rows_are_masked_subsets():
    """One row per call (mc_num = 1): the estimate must be the value of one subset S of the
    answer, (A/|S|)·Σ_{i∈S} log p(a_i | prompt, answer with S masked) — so exactly |S| = l answer
    tokens are masked, the prompt never — and over seeds every level l = 1..A must occur."""
    values = subset_values(PROMPT, ANSWER)
    table = np.array(list(values.values()))
    subsets = list(values)
    gaps = np.abs(table[:, None] - table[None, :])[~np.eye(len(table), dtype=bool)]
    assert gaps.min() > 1e-3  # the subsets are identifiable from the value
    sizes = set()
    for seed in range(30):
        mc = likelihood.mc_elbo(
            GRAPHDEF, PARAMS, PROMPT, ANSWER, mask_id=MASK, mc_num=1, batch_size=1, seed=seed
        )
        hit = int(np.argmin(np.abs(table - mc)))
        assert abs(table[hit] - mc) < 1e-4, (seed, mc, values)
        sizes.add(len(subsets[hit]))
    assert sizes == {1, 2, 3}


@pytest.mark.parametrize(
    ("prompt", "mc_num", "batch_size", "seed"),
    [(PROMPT, 1, 1, 0), (PROMPT, 8, 4, 7), ([40, 2, 9, 61, 30, 12, 7, 8, 3], 32, 32, 3), ([], 2, 2, 1)],
)  # fmt: skip
def test_mc_elbo_single_token_is_exact(prompt, mc_num, batch_size, seed):
    answer = [27]
    want = ref_log_probs([prompt + [MASK]])[0, len(prompt), answer[0]]
    got = likelihood.mc_elbo(
        GRAPHDEF, PARAMS, prompt, answer, mask_id=MASK, mc_num=mc_num, batch_size=batch_size,
        seed=seed,
    )  # fmt: skip
    assert abs(got - want) < 1e-4, (got, want)


@pytest.mark.parametrize("cfg_scale", [0.5, 2.0])
def test_mc_elbo_cfg_single_token(cfg_scale):
    """docs/algorithms.md#classifier-free-guidance: logits = un + (w+1)(cond − un), `un` from the
    prompt replaced by mask ids."""
    answer, p = [27], len(PROMPT)
    logits = ref_forward(P64, CFG, np.array([PROMPT + [MASK], [MASK] * p + [MASK]]))[:, p]
    cond, un = logits
    want = np_log_softmax(un + (cfg_scale + 1.0) * (cond - un))[answer[0]]
    plain = np_log_softmax(cond)[answer[0]]
    assert abs(want - plain) > 0.05  # guidance changes the value: the test can tell
    got = likelihood.mc_elbo(
        GRAPHDEF, PARAMS, PROMPT, answer, mask_id=MASK, mc_num=4, batch_size=2,
        cfg_scale=cfg_scale, seed=2,
    )  # fmt: skip
    assert abs(got - want) < 1e-4, (got, want, plain)


# ---------------------------------------------------------------------------------------------
# confidence_score (docs/algorithms.md#confidence-scoring)
# ---------------------------------------------------------------------------------------------


def test_confidence_score_matches_reference():
    """Several candidates of different lengths in one call, one crossing the 32-token bucket."""
    rng = np.random.default_rng(5)
    long = [int(t) for t in rng.integers(5, 64, size=34)]  # ids >= 5: never the mask id
    candidates = [[17], ANSWER, [12, 8, 30, 51, 22], long]
    refs = [ref_confidence(PROMPT, c) for c in candidates]
    assert min(gap for _, gap in refs) > 1e-4  # no near-tie fp32 could order differently
    got = likelihood.confidence_score(GRAPHDEF, PARAMS, PROMPT, candidates, mask_id=MASK)
    assert got.shape == (4,)
    want = np.array([score for score, _ in refs])
    # fp32 error grows with the number of summed log-probs (34 for the long candidate)
    assert np.all(np.abs(got - want) <= 1e-4 * np.array([1, 1, 1, 5])), (got, want)
    # Not the ELBO: the enumerated exact ELBO of the same 3-token answer differs clearly.
    exact_elbo = np.mean(
        [np.mean([v for s, v in subset_values(PROMPT, ANSWER).items() if len(s) == size])
         for size in (1, 2, 3)]
    )  # fmt: skip
    assert abs(got[1] - exact_elbo) > 0.1, (got[1], exact_elbo)


@pytest.mark.parametrize("prompt", GREEDY_PROMPTS)
def test_confidence_of_greedy_decode(prompt):
    """The greedy decode reveals in the same order as the confidence loop, so its score is the
    sum of the greedy max log-probs; a shuffle of it scores lower (true for these three prompts
    and this fixed model, with margins of 0.6-1.3 nats)."""
    greedy, greedy_sum, gap = ref_greedy(prompt, 4)
    assert gap > 1e-4 and MASK not in greedy
    shuffled = [greedy[i] for i in (2, 0, 3, 1)]
    assert shuffled != greedy
    got = likelihood.confidence_score(GRAPHDEF, PARAMS, prompt, [greedy, shuffled], mask_id=MASK)
    assert abs(got[0] - greedy_sum) < 1e-4, (got[0], greedy_sum)
    assert abs(got[1] - ref_confidence(prompt, shuffled)[0]) < 1e-4
    assert got[0] > got[1] + 0.1


# ---------------------------------------------------------------------------------------------
# greedy_check (docs/algorithms.md#greedy-check)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", GREEDY_PROMPTS)
def test_greedy_check(prompt):
    greedy4, _, gap4 = ref_greedy(prompt, 4)
    greedy2, _, gap2 = ref_greedy(prompt, 2)
    assert min(gap4, gap2) > 1e-4 and MASK not in greedy4 + greedy2
    perturbed = list(greedy4)
    perturbed[1] = (perturbed[1] + 1) % 64 or 1
    if perturbed[1] == MASK:
        perturbed[1] += 1
    got = likelihood.greedy_check(
        GRAPHDEF, PARAMS, prompt, [greedy4, perturbed, greedy2], mask_id=MASK
    )
    assert got.dtype == bool
    np.testing.assert_array_equal(got, [True, False, True])


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: likelihood.mc_elbo(GRAPHDEF, PARAMS, PROMPT, [], mask_id=MASK), "no tokens"),
        (lambda: likelihood.mc_elbo(GRAPHDEF, PARAMS, PROMPT + [MASK], ANSWER, mask_id=MASK),
         "mask id 4"),
        (lambda: likelihood.mc_elbo(GRAPHDEF, PARAMS, PROMPT, [7, MASK], mask_id=MASK),
         "mask id 4"),
        (lambda: likelihood.mc_elbo(GRAPHDEF, PARAMS, PROMPT, ANSWER, mask_id=MASK, mc_num=48,
                                    batch_size=32), "mc_num=48 must be a positive multiple"),
        (lambda: likelihood.mc_elbo(GRAPHDEF, PARAMS, PROMPT, ANSWER, mask_id=MASK, mc_num=0),
         "mc_num=0"),
        (lambda: likelihood.confidence_score(GRAPHDEF, PARAMS, PROMPT, [[7], []], mask_id=MASK),
         "no tokens"),
        (lambda: likelihood.confidence_score(GRAPHDEF, PARAMS, PROMPT, [[7, MASK]], mask_id=MASK),
         "mask id 4"),
        (lambda: likelihood.greedy_check(GRAPHDEF, PARAMS, [MASK], [[7]], mask_id=MASK),
         "mask id 4"),
    ],
)  # fmt: skip
def test_scoring_errors(call, match):
    with pytest.raises(ScoringError, match=match):
        call()


def test_mc_elbo_zero_batch_size_is_a_scoring_error():
    with pytest.raises(ScoringError, match="batch_size"):
        likelihood.mc_elbo(GRAPHDEF, PARAMS, PROMPT, ANSWER, mask_id=MASK, mc_num=32, batch_size=0)


def test_confidence_no_candidates_is_a_scoring_error():
    with pytest.raises(ScoringError, match="no answers"):
        likelihood.confidence_score(GRAPHDEF, PARAMS, PROMPT, [], mask_id=MASK)


# ---------------------------------------------------------------------------------------------
# mask id 0 (a valid config: it must only differ from pad/bos/eos)
# ---------------------------------------------------------------------------------------------


def test_confidence_score_with_mask_id_zero():
    cfg, _, graphdef, params, p64 = _setup(mask_token_id=0, pad_token_id=1)
    candidates = [[17], ANSWER]
    want = [ref_confidence(PROMPT, c, cfg, p64, mask_id=0)[0] for c in candidates]
    got = likelihood.confidence_score(graphdef, params, PROMPT, candidates, mask_id=0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_greedy_check_with_mask_id_zero():
    cfg, _, graphdef, params, p64 = _setup(mask_token_id=0, pad_token_id=1)
    greedy, _, gap = ref_greedy(PROMPT, 4, cfg, p64, mask_id=0)
    assert gap > 1e-4 and 0 not in greedy
    assert likelihood.greedy_check(graphdef, params, PROMPT, [greedy], mask_id=0).all()


def test_mc_elbo_with_mask_id_zero():
    """The ELBO path selects masked slots by `valid`, so mask id 0 is fine there (A = 1: exact)."""
    cfg, _, graphdef, params, p64 = _setup(mask_token_id=0, pad_token_id=1)
    want = ref_log_probs([PROMPT + [0]], cfg, p64)[0, len(PROMPT), 27]
    got = likelihood.mc_elbo(graphdef, params, PROMPT, [27], mask_id=0, mc_num=2, batch_size=2)
    assert abs(got - want) < 1e-4


# ---------------------------------------------------------------------------------------------
# Model wrappers (inference/model.py)
# ---------------------------------------------------------------------------------------------


def test_model_wrappers_agree_with_functions():
    model = Model.from_module(MODEL)
    assert model.special_ids.mask == MASK
    prompt_ids = np.array(PROMPT, np.int32)

    for kwargs in (dict(mc_num=64, batch_size=32, seed=3), dict(mc_num=4, cfg_scale=0.5)):
        got = model.log_likelihood(prompt_ids, ANSWER, **kwargs)
        want = likelihood.mc_elbo(GRAPHDEF, PARAMS, PROMPT, ANSWER, mask_id=MASK, **kwargs)
        assert isinstance(got, float) and got == pytest.approx(want, abs=1e-6)

    a1, a2 = ANSWER, [12, 8, 30, 51, 22]
    want = likelihood.confidence_score(GRAPHDEF, PARAMS, PROMPT, [a1, a2], mask_id=MASK)
    many = model.score_confidence(prompt_ids, [a1, a2])
    assert isinstance(many, np.ndarray) and many.shape == (2,)
    np.testing.assert_allclose(many, want, rtol=0, atol=1e-6)
    for single in (a1, np.array(a1)):
        one = model.score_confidence(prompt_ids, single)
        assert isinstance(one, float) and one == pytest.approx(want[0], abs=1e-6)
    # and against the NumPy reference, so the wrapper cannot agree with a wrong function
    assert abs(many[0] - ref_confidence(PROMPT, a1)[0]) < 1e-4

    greedy, _, _ = ref_greedy(PROMPT, 4)
    assert model.is_greedy(prompt_ids, greedy) is True
    assert model.is_greedy(prompt_ids, greedy[::-1]) is (greedy[::-1] == greedy)
