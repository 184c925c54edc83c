"""Sampling from a masked-diffusion LM (docs/algorithms.md#sampling and the sections after it).

How it is tested:

- Fixed-canvas generation at temperature 0 is compared token for token with an independent NumPy
  re-implementation of docs/algorithms.md#sampling written here (`ref_generate`): canvas, blocks,
  the transfer schedule, argmax candidates (mask logit set to -inf first: the documented deviation
  in `generate.py`), float64 softmax confidences, -inf outside the current block and at committed
  positions, top-k with ties to the lower index. The per-step logits come from the JAX network
  itself (a jitted forward used as an oracle; the network is checked against the float64 NumPy
  forward in `test_model.py`), so what is re-implemented is the sampling algorithm. Cases: pure
  diffusion and semi-AR blocks, 1, 2 and uneven tokens per step, idle steps, CFG, the EOS flags,
  all on a LEFT-padded batch. The `</think>` boost and the variable-length loop ("append
  one block, run generate on it") have their own reference loops.
- Schedule helpers against tables and brute-force NumPy selections.
- Caches (docs/algorithms.md#caches-and-parallel-decoding): the cached forward paths are exact where
  they must be (unchanged canvas; a one-layer model, whose K/V depend only on token and position,
  with the canvas changed only where K/V are recomputed) and approximate by a bounded amount
  otherwise. Generation with a cache on a one-layer model equals no-cache generation exactly; on the
  two-layer model the token agreement is measured and printed (`pytest -s`).
- Gumbel noise and temperature sampling: moments, the tail beyond the 24-bit-uniform cap, and
  draw frequencies against softmax(logits/τ) with chi-square tolerances at fixed keys.

Everything runs on the tiny random model of `numpy_reference` (vocab 64, d 32) with G = 16, batch 2.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from numpy_reference import (  # noqa: E402  (pytest puts tests/unit on sys.path)
    VOCAB,
    make_model,
    max_rel_err,
    model_params_f64,
    ref_forward,
    tiny_config,
)

from illada_jax.sampling import schedule
from illada_jax.sampling.generate import (
    SamplingOptions,
    SpecialIds,
    generate,
    generate_variable,
    variable_budget,
)
from illada_jax.sampling.schedule import SamplingError
from illada_jax.sampling.trace import trace_fixed

P, G = 6, 16  # prompt length (row 1 has 2 left pads), generated length
PAD_LEFT = 2
IDS = SpecialIds.from_config(tiny_config())  # mask 4, eos 3, eot 7
MASK = IDS.mask
# The random model rarely predicts EOS (3) or EoT (7) but predicts 2 and 57 very often: the EOS-flag
# cases declare those to be EOS and EoT so the flags act (asserted: the tests are not vacuous).
IDS_FREQ = SpecialIds(mask=MASK, eos=2, eot=57)
REL_TOL = 1e-5


# ---------------------------------------------------------------------------------------------
# Model, prompt and the logits oracle
# ---------------------------------------------------------------------------------------------


@functools.cache
def _model(n_layers: int = 2):
    cfg = tiny_config(n_layers=n_layers)
    model = make_model(cfg, 0)
    graphdef, params = nnx.split(model)
    return cfg, model, graphdef, params


@functools.cache
def _forward(n_layers: int = 2):
    _, _, graphdef, params = _model(n_layers)
    fwd = jax.jit(lambda p, t, m: nnx.merge(graphdef, p)(t, key_mask=m))

    def oracle(tokens, key_mask):
        """The network's logits for canvas `tokens` [B, L] (positions 0..L-1), float64."""
        logits = fwd(params, jnp.asarray(tokens, jnp.int32), jnp.asarray(key_mask, bool))
        return np.asarray(logits, np.float64)

    return oracle


def _prompt(last_token: int | None = None):
    """A [2, P] batch; row 1 is LEFT-padded with PAD_LEFT pad tokens (prompt_mask False)."""
    rng = np.random.default_rng(7)
    prompt = rng.integers(8, VOCAB, (2, P)).astype(np.int32)  # no special ids in the prompt
    mask = np.ones((2, P), bool)
    prompt[1, :PAD_LEFT] = 0
    mask[1, :PAD_LEFT] = False
    if last_token is not None:
        prompt[1, -1] = last_token
    return prompt, mask


def _softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Independent NumPy reference of docs/algorithms.md#sampling (+ the think boost)
# ---------------------------------------------------------------------------------------------


def ref_schedule(k: int, n: int) -> list[int]:
    base, rem = divmod(k, n)
    return [base + (1 if j < rem else 0) for j in range(n)]


def ref_think_boost(logits, x, lo, hi, prompt_len, gen_length, think, stats):
    """docs/algorithms.md#the-think-boost on [B, L, V] logits in place: boost the next `</think>`
    token at the first masked slot of the block [lo, hi) while E is absent from the generated
    part."""
    e_ids, strength, power = think
    m = len(e_ids)
    for r in range(x.shape[0]):
        gen = list(x[r, prompt_len:])
        present = any(gen[i : i + m] == list(e_ids) for i in range(len(gen) - m + 1))
        masked = np.flatnonzero(x[r, lo:hi] == MASK)
        if present or not len(masked):
            continue
        pos = lo + int(masked[0])
        target = e_ids[0]
        for j in range(m - 1, 0, -1):  # longest partial prefix E[:j] right before pos
            if pos - j >= 0 and list(x[r, pos - j : pos]) == list(e_ids[:j]):
                target = e_ids[j]
                break
        progress = min(max((pos - prompt_len + 1) / gen_length, 0.0), 1.0)
        logits[r, pos, target] += strength * progress**power
        stats["boosts"][r] += 1


def ref_generate(oracle, prompt, prompt_mask, gen_length, block_length, steps, *, ids=IDS,
                 cfg_scale=0.0, logits_eos_inf=False, confidence_eos_eot_inf=False,
                 think=None, record=None):  # fmt: skip
    """docs/algorithms.md#sampling at temperature 0 with low-confidence remasking. Returns (canvas,
    stats).

    `record` (a dict): filled with "step" (the global step each position was committed at, -1
    for the prompt) and "conf" (the confidence it was committed with, NaN for the prompt)."""
    batch, prompt_len = prompt.shape
    x = np.concatenate([prompt, np.full((batch, gen_length), ids.mask)], axis=1).astype(np.int64)
    key_mask = np.concatenate([prompt_mask, np.ones((batch, gen_length), bool)], axis=1)
    prompt_index = x != ids.mask  # computed once (docs/algorithms.md#sampling step 1)
    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    counts = ref_schedule(block_length, per_block)
    suppressed = [t for t in (ids.eos, ids.eot) if t is not None] if confidence_eos_eot_inf else []
    stats = dict(max_conf=0.0, suppressed=dict.fromkeys(suppressed, 0), boosts=[0] * batch)
    if record is not None:
        record["step"] = np.full(x.shape, -1)
        record["conf"] = np.full(x.shape, np.nan)
    for b in range(num_blocks):
        lo, hi = prompt_len + b * block_length, prompt_len + (b + 1) * block_length
        for j in range(per_block):
            if cfg_scale:
                uncond = np.where(prompt_index, ids.mask, x)
                both = oracle(np.concatenate([x, uncond]), np.concatenate([key_mask, key_mask]))
                cond, un = both[:batch], both[batch:]
                logits = un + (cfg_scale + 1.0) * (cond - un)
            else:
                logits = oracle(x, key_mask)
            logits[..., ids.mask] = -np.inf
            if logits_eos_inf:
                logits[..., ids.eos] = -np.inf
            if think is not None:
                ref_think_boost(logits, x, lo, hi, prompt_len, gen_length, think, stats)
            x0 = logits.argmax(axis=-1)
            conf = np.take_along_axis(_softmax(logits), x0[..., None], axis=-1)[..., 0]
            eligible = np.zeros_like(x, bool)
            eligible[:, lo:hi] = x[:, lo:hi] == ids.mask
            stats["max_conf"] = max(stats["max_conf"], float(conf[eligible].max(initial=0.0)))
            for t in suppressed:
                stats["suppressed"][t] += int((eligible & (x0 == t)).sum())
                conf = np.where(x0 == t, 0.0, conf)
            conf = np.where(eligible, conf, -np.inf)
            for r in range(batch):
                order = np.lexsort((np.arange(x.shape[1]), -conf[r]))  # ties: lower index
                for i in order[: counts[j]]:
                    if eligible[r, i]:
                        x[r, i] = x0[r, i]
                        if record is not None:
                            record["step"][r, i] = b * per_block + j
                            record["conf"][r, i] = conf[r, i]
    return x, stats


# ---------------------------------------------------------------------------------------------
# 1. Fixed-canvas generation against the reference
# ---------------------------------------------------------------------------------------------

# name: (SamplingOptions fields, special ids)
CASES = {
    "pure_1tok": (dict(block_length=16, steps=16), IDS),
    "pure_2tok": (dict(block_length=16, steps=8), IDS),
    "blocks4_1tok": (dict(block_length=4, steps=16), IDS),
    "blocks8_1tok": (dict(block_length=8, steps=16), IDS),
    "blocks8_2tok": (dict(block_length=8, steps=8), IDS),
    "blocks8_uneven": (dict(block_length=8, steps=6), IDS),  # 3 steps/block: [3, 3, 2]
    "blocks4_idle": (dict(block_length=4, steps=24), IDS),  # 6 steps/block: [1, 1, 1, 1, 0, 0]
    "cfg": (dict(block_length=8, steps=8, cfg_scale=1.0), IDS),
    "eos_logits_inf": (
        dict(block_length=8, steps=16, logits_eos_inf=True, confidence_eos_eot_inf=True),
        IDS_FREQ,
    ),
    "eos_conf_zero": (dict(block_length=16, steps=16, confidence_eos_eot_inf=True), IDS_FREQ),
}


# The same schedule without the EOS flags.
FLAG_BASELINE = {"eos_logits_inf": "blocks8_1tok", "eos_conf_zero": "pure_1tok"}


def _opts(**fields) -> SamplingOptions:
    return SamplingOptions(**{"gen_length": G, **fields})


@functools.cache
def _generated(name: str) -> np.ndarray:
    fields, ids = CASES[name]
    _, _, graphdef, params = _model()
    prompt, mask = _prompt()
    return generate(graphdef, params, ids, prompt, _opts(**fields), prompt_mask=mask)


@functools.cache
def _reference(name: str):
    fields, ids = CASES[name]
    prompt, mask = _prompt()
    flags = {k: fields[k] for k in ("cfg_scale", "logits_eos_inf", "confidence_eos_eot_inf")
             if k in fields}  # fmt: skip
    return ref_generate(_forward(), prompt, mask, G, fields["block_length"], fields["steps"],
                        ids=ids, **flags)  # fmt: skip


def _assert_valid_canvas(out, prompt):
    assert out.shape == (prompt.shape[0], P + G) and out.dtype == np.int32
    np.testing.assert_array_equal(out[:, :P], prompt)  # the prompt (pads included) is untouched
    gen = out[:, P:]
    assert not (gen == MASK).any(), "mask tokens left in the generated region"
    assert ((gen >= 0) & (gen < VOCAB)).all()


@pytest.mark.parametrize("name", list(CASES))
def test_generate_matches_numpy_reference(name):
    prompt, _ = _prompt()
    got = _generated(name)
    want, stats = _reference(name)
    _assert_valid_canvas(got, prompt)
    np.testing.assert_array_equal(got, want, err_msg=f"{name}: generated tokens differ")
    fields, ids = CASES[name]
    if name in FLAG_BASELINE:  # not vacuous: the flags change the output of this model
        assert not np.array_equal(got, _generated(FLAG_BASELINE[name]))
    if fields.get("logits_eos_inf"):
        assert not (got[:, P:] == ids.eos).any(), "EOS generated although its logit is -inf"
        assert (_generated(FLAG_BASELINE[name])[:, P:] == ids.eos).any()
    if fields.get("confidence_eos_eot_inf"):
        live = [t for t in stats["suppressed"] if not fields.get("logits_eos_inf") or t != ids.eos]
        # Not vacuous: such candidates did occur and had their confidence zeroed.
        assert all(stats["suppressed"][t] > 0 for t in live), stats["suppressed"]


# ---------------------------------------------------------------------------------------------
# 2. Transfer schedule and block plan
# ---------------------------------------------------------------------------------------------

SCHEDULE_TABLE = {
    (7, 3): [3, 2, 2],
    (5, 5): [1, 1, 1, 1, 1],
    (4, 8): [1, 1, 1, 1, 0, 0, 0, 0],  # more steps than tokens: the extra steps commit nothing
    (32, 6): [6, 6, 5, 5, 5, 5],
    (1, 1): [1],
    (8, 3): [3, 3, 2],
    (10, 4): [3, 3, 2, 2],
    (32, 32): [1] * 32,
    (32, 1): [32],
}


@pytest.mark.parametrize(("k", "n"), list(SCHEDULE_TABLE))
def test_transfer_schedule_table(k, n):
    got = schedule.transfer_schedule(k, n)
    assert got.tolist() == SCHEDULE_TABLE[(k, n)]
    assert got.shape == (n,) and int(got.sum()) == k


@pytest.mark.parametrize(
    ("gen_length", "block_length", "steps", "plan"),
    [(16, 16, 16, (1, 16)), (16, 4, 8, (4, 2)), (12, 4, 3, (3, 1)), (1024, 32, 1024, (32, 32))],
)
def test_block_plan(gen_length, block_length, steps, plan):
    assert schedule.block_plan(gen_length, block_length, steps) == plan


@pytest.mark.parametrize(
    ("gen_length", "block_length", "steps", "names"),
    [
        (16, 5, 16, ("gen_length=16", "block_length=5")),  # G not a multiple of K
        (16, 32, 16, ("gen_length=16", "block_length=32")),
        (16, 4, 6, ("steps=6",)),  # 4 blocks do not divide 6 steps
        (16, 4, 2, ("steps=2",)),
        (16, 4, 0, ("steps=0",)),
    ],
)
def test_block_plan_errors_name_the_argument(gen_length, block_length, steps, names):
    with pytest.raises(SamplingError) as err:
        schedule.block_plan(gen_length, block_length, steps)
    for name in names:
        assert name in str(err.value)
    # generate() validates before tracing anything.
    _, _, graphdef, params = _model()
    prompt, mask = _prompt()
    opts = SamplingOptions(gen_length=gen_length, block_length=block_length, steps=steps)
    with pytest.raises(SamplingError):
        generate(graphdef, params, IDS, prompt, opts, prompt_mask=mask)


# ---------------------------------------------------------------------------------------------
# 3. Selection rules
# ---------------------------------------------------------------------------------------------


def np_select_top_k(conf, eligible, k):
    out = np.zeros(conf.shape, bool)
    for r in range(conf.shape[0]):
        order = np.lexsort((np.arange(conf.shape[1]), -conf[r]))
        chosen = [i for i in order if eligible[r, i]][: int(k[r])]
        out[r, chosen] = True
    return out


def np_select_threshold(conf, eligible, threshold):
    out = np.zeros(conf.shape, bool)
    for r in range(conf.shape[0]):
        cand = np.flatnonzero(eligible[r])
        if not len(cand):
            continue
        best = cand[np.lexsort((cand, -conf[r, cand]))[0]]
        out[r, best] = True
        out[r, cand[conf[r, cand] >= threshold]] = True
    return out


def test_select_top_k_per_row_k_against_numpy():
    rng = np.random.default_rng(0)
    n = 12
    conf = (rng.integers(0, 4, (5, n)) / 4).astype(np.float32)  # many ties
    eligible = rng.random((5, n)) < 0.5
    eligible[3] = False
    eligible[3, [2, 9]] = True  # two eligible positions, asked for ten
    eligible[4] = False  # none eligible
    conf[3, :] = 1.0
    conf[3, [2, 9]] = 0.0  # ineligible positions are the most confident ones
    k = np.array([0, 3, n, 10, 5], np.int32)
    got = np.asarray(
        schedule.select_top_k(jnp.asarray(conf), jnp.asarray(eligible), jnp.asarray(k))
    )
    np.testing.assert_array_equal(got, np_select_top_k(conf, eligible, k))
    assert not (got & ~eligible).any()
    np.testing.assert_array_equal(got.sum(axis=1), np.minimum(k, eligible.sum(axis=1)))
    # A scalar k applies to every row.
    got = np.asarray(schedule.select_top_k(jnp.asarray(conf), jnp.asarray(eligible), 2))
    np.testing.assert_array_equal(got, np_select_top_k(conf, eligible, np.full(5, 2)))


def test_select_top_k_ties_go_to_the_lower_index():
    conf = jnp.asarray(np.array([[0.5, 0.9, 0.5, 0.9, 0.5]], np.float32))
    eligible = jnp.asarray(np.array([[True, False, True, True, True]]))
    got = np.asarray(schedule.select_top_k(conf, eligible, 2))
    assert got.tolist() == [[True, False, False, True, False]]


def test_select_threshold_best_plus_confident():
    conf = np.array(
        [
            [0.2, 0.95, 0.91, 0.5, 0.99],  # 0.99 is ineligible: 0.95 is the best, 0.91 >= 0.9
            [0.1, 0.3, 0.3, 0.2, 0.05],  # nothing reaches 0.9: only the best (tie: lower index)
            [0.9, 0.9, 0.1, 0.9, 0.8],  # >= is inclusive
            [0.99, 0.99, 0.99, 0.99, 0.99],  # nothing eligible
        ],
        np.float32,
    )
    eligible = np.array(
        [
            [True, True, True, True, False],
            [True, True, True, True, True],
            [True, True, True, False, True],
            [False] * 5,
        ]
    )
    got = np.asarray(schedule.select_threshold(jnp.asarray(conf), jnp.asarray(eligible), 0.9))
    want = np_select_threshold(conf, eligible, 0.9)
    assert want.tolist() == [
        [False, True, True, False, False],
        [False, True, False, False, False],
        [True, True, False, False, False],
        [False] * 5,
    ]
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------
# 4. Threshold decoding with threshold 1.0 == one token per step
# ---------------------------------------------------------------------------------------------


def test_threshold_one_equals_one_token_per_step():
    _, _, graphdef, params = _model()
    prompt, mask = _prompt()
    # steps=2 is any valid plan: the per-step schedule is unused with a threshold.
    opts = _opts(block_length=8, steps=2, threshold=1.0)
    got = generate(graphdef, params, IDS, prompt, opts, prompt_mask=mask)
    baseline = _generated("blocks8_1tok")  # G=16, K=8, 16 steps: one token per step
    _, stats = _reference("blocks8_1tok")
    # A random tiny model is never confident: no candidate reaches 1.0, so only "the best" of
    # each step is committed, exactly as top-1.
    assert stats["max_conf"] < 0.9, stats["max_conf"]
    np.testing.assert_array_equal(got, baseline)


# ---------------------------------------------------------------------------------------------
# 5a. Cache mechanics (`hidden_with_kv`, `hidden_cached`)
# ---------------------------------------------------------------------------------------------

BLOCK = 8
START = P + BLOCK  # the second block of the canvas
L = P + G


def _canvas_for_cache():
    """A mid-generation canvas: prompt, first block committed, the rest half masked."""
    rng = np.random.default_rng(11)
    prompt, mask = _prompt()
    gen = rng.integers(8, VOCAB, (2, G))
    gen[:, BLOCK:] = np.where(rng.random((2, G - BLOCK)) < 0.5, MASK, gen[:, BLOCK:])
    x = np.concatenate([prompt, gen], axis=1).astype(np.int32)
    key_mask = np.concatenate([mask, np.ones((2, G), bool)], axis=1)
    return x, key_mask


def _changed(x, lo, hi, seed):
    """x with every position in [lo, hi) set to a different (non-special) token."""
    x2 = x.copy()
    x2[:, lo:hi] = 8 + (x[:, lo:hi] - 8 + 1 + np.random.default_rng(seed).integers(0, 50)) % 56
    x2[:, lo:hi] = np.where(x2[:, lo:hi] == x[:, lo:hi], 9, x2[:, lo:hi])
    assert (x2[:, lo:hi] != x[:, lo:hi]).all() and (x2[:, lo:hi] >= 8).all()
    return x2


@functools.cache
def _kv_programs(n_layers: int):
    """Jitted `hidden_with_kv` and `hidden_cached` (+ the head) of the n-layer model."""
    _, _, graphdef, params = _model(n_layers)

    @jax.jit
    def with_kv(p, x, key_mask):
        model = nnx.merge(graphdef, p)
        hidden, kv = model.hidden_with_kv(x, key_mask=key_mask)
        return model.project(hidden), kv

    @jax.jit
    def cached(p, window, start, kv, fresh_from, key_mask):  # start, fresh_from traced
        model = nnx.merge(graphdef, p)
        hidden, kv = model.hidden_cached(window, start, kv, fresh_from, key_mask=key_mask)
        return model.project(hidden), kv

    return params, with_kv, cached


def _with_kv(n_layers, x, key_mask):
    """(logits float64 [B, L, V], kv) of the whole canvas."""
    params, with_kv, _ = _kv_programs(n_layers)
    logits, kv = with_kv(params, jnp.asarray(x), jnp.asarray(key_mask))
    return np.asarray(logits, np.float64), kv


def _cached(n_layers, x, start, width, kv, fresh_from, key_mask):
    """(logits float64 [B, W, V], kv) of the window x[:, start:start+width] from the cache."""
    params, _, cached = _kv_programs(n_layers)
    window = jnp.asarray(x[:, start : start + width])
    logits, kv = cached(params, window, jnp.int32(start), kv, jnp.int32(fresh_from),
                        jnp.asarray(key_mask))  # fmt: skip
    return np.asarray(logits, np.float64), kv


def test_cache_paths_exact_on_an_unchanged_canvas():
    cfg, model, _, _ = _model()
    x, key_mask = _canvas_for_cache()
    full, kv = _with_kv(2, x, key_mask)
    want = ref_forward(model_params_f64(model), cfg, x, key_mask=key_mask)  # float64, independent
    real = np.broadcast_to(key_mask[:, :, None], want.shape)
    assert max_rel_err(full[real], want[real]) < REL_TOL
    assert max_rel_err(full, _forward()(x, key_mask)) < REL_TOL  # same as the plain forward
    # Dual cache: the block's window against cached K/V of everything else.
    dual, kv_dual = _cached(2, x, START, BLOCK, kv, START, key_mask)
    assert max_rel_err(dual, want[:, START : START + BLOCK]) < REL_TOL
    # Prefix cache: the whole generated region, cached K/V before the block, fresh from it on.
    prefix, kv_prefix = _cached(2, x, P, G, kv, START, key_mask)
    assert max_rel_err(prefix, want[:, P:]) < REL_TOL
    for new_kv, (lo, hi) in ((kv_dual, (START, START + BLOCK)), (kv_prefix, (START, L))):
        for old, new in zip(kv, new_kv, strict=True):  # k, then v: [layers, B, L, KV, D]
            old, new = np.asarray(old), np.asarray(new)
            outside = np.ones(L, bool)
            outside[lo:hi] = False
            np.testing.assert_array_equal(new[:, :, outside], old[:, :, outside])
            assert max_rel_err(new[:, :, lo:hi], old[:, :, lo:hi]) < REL_TOL


def test_dual_cache_after_the_block_changed_is_approximate_and_bounded():
    """Two layers: the K/V of positions outside the window depend (from layer 1 on) on the window
    tokens, so logits from a stale cache differ from the full forward of the new canvas. The
    cache still does better than not recomputing at all (the old logits)."""
    x, key_mask = _canvas_for_cache()
    full, kv = _with_kv(2, x, key_mask)
    lo, hi = P, P + BLOCK  # the first block: the prompt is left of it, masks right of it
    x2 = _changed(x, lo, hi, seed=1)
    full2, kv2_exact = _with_kv(2, x2, key_mask)
    cached, kv2 = _cached(2, x2, lo, BLOCK, kv, lo, key_mask)
    err_cache = max_rel_err(cached, full2[:, lo:hi])
    err_stale = max_rel_err(full[:, lo:hi], full2[:, lo:hi])
    print(
        f"\ndual cache on a changed block: rel err {err_cache:.3g} (stale logits {err_stale:.3g})"
    )
    assert 1e-4 < err_cache < 0.5 * err_stale
    # Layer 0 K/V depend only on token and position: exact everywhere. Layer 1 outside the
    # window keeps the stale values (= old cache), which differ from the new canvas's.
    outside = np.ones(L, bool)
    outside[lo:hi] = False
    for new, exact, old in zip(kv2, kv2_exact, kv, strict=True):
        new, exact, old = np.asarray(new), np.asarray(exact), np.asarray(old)
        assert max_rel_err(new[0], exact[0]) < REL_TOL
        assert max_rel_err(new[1, :, lo:hi], exact[1, :, lo:hi]) < REL_TOL
        np.testing.assert_array_equal(new[1][:, outside], old[1][:, outside])
        assert max_rel_err(old[1][:, outside], exact[1][:, outside]) > 1e-4


def test_one_layer_cache_exact_where_kv_is_recomputed():
    """One layer: a position's K/V depend only on its token and position. Changing tokens only
    where the window recomputes K/V (>= fresh_from) gives exactly the full forward of the new
    canvas; changing a token in the cached part (< fresh_from) does not."""
    x, key_mask = _canvas_for_cache()
    _, kv = _with_kv(1, x, key_mask)
    # Dual: the first block changes (cached K/V on both sides of it).
    x2 = _changed(x, P, P + BLOCK, seed=2)
    full2, _ = _with_kv(1, x2, key_mask)
    dual, _ = _cached(1, x2, P, BLOCK, kv, P, key_mask)
    assert max_rel_err(dual, full2[:, P : P + BLOCK]) < REL_TOL
    # Prefix: the second block changes; the window is the generated region, fresh from the block.
    x3 = _changed(x, START, L, seed=3)
    full3, _ = _with_kv(1, x3, key_mask)
    prefix, _ = _cached(1, x3, P, G, kv, START, key_mask)
    assert max_rel_err(prefix, full3[:, P:]) < REL_TOL
    # A change before fresh_from inside the window is not seen through the cache.
    x4 = _changed(x3, P + 1, P + 2, seed=4)
    full4, _ = _with_kv(1, x4, key_mask)
    stale, _ = _cached(1, x4, P, G, kv, START, key_mask)
    assert max_rel_err(stale[:, BLOCK:], full4[:, START:]) > 1e-3


# ---------------------------------------------------------------------------------------------
# 5b. Generation with caches
# ---------------------------------------------------------------------------------------------


def _generate(n_layers, **fields):
    _, _, graphdef, params = _model(n_layers)
    prompt, mask = _prompt()
    return generate(graphdef, params, IDS, prompt, _opts(**fields), prompt_mask=mask)


@pytest.mark.parametrize(
    "fields",
    [
        dict(cache="dual"),
        dict(cache="prefix"),
        dict(cache="dual", cfg_scale=1.0),
        dict(cache="prefix", cfg_scale=1.0, threshold=0.9),
    ],
    ids=["dual", "prefix", "dual_cfg", "prefix_cfg_threshold"],
)
def test_cache_exact_on_one_layer_model(fields):
    """One layer: the K/V outside the recomputed window only change when their own tokens do,
    which never happens inside a block's steps, so a cache changes nothing (left padding, CFG
    and threshold decoding included)."""
    plan = dict(block_length=BLOCK, steps=16)
    baseline = _generate(1, **plan, **{k: v for k, v in fields.items() if k != "cache"})
    got = _generate(1, **plan, **fields)
    _assert_valid_canvas(got, _prompt()[0])
    np.testing.assert_array_equal(got, baseline)


@pytest.mark.parametrize("threshold", [None, 0.9])
@pytest.mark.parametrize("cache", ["dual", "prefix"])
def test_cache_generation_agreement(cache, threshold):
    """Two layers: caches are approximate (docs/algorithms.md#caches-and-parallel-decoding). Measure
    the token agreement with the no-cache run; it is at least the first step's commits, which both
    runs share exactly."""
    plan = dict(block_length=BLOCK, steps=16, threshold=threshold)
    baseline = _generated("blocks8_1tok") if threshold is None else _generate(2, **plan)
    got = _generate(2, cache=cache, **plan)
    prompt, _ = _prompt()
    _assert_valid_canvas(got, prompt)
    per_row = (got[:, P:] == baseline[:, P:]).mean(axis=1)
    print(f"\ncache={cache} threshold={threshold}: agreement per row {per_row.tolist()}")
    assert (per_row >= 1 / G).all()


# ---------------------------------------------------------------------------------------------
# 6. Variable-length generation (docs/algorithms.md#variable-length-decoding)
# ---------------------------------------------------------------------------------------------

VAR_K, VAR_STEPS = 4, 4  # blocks of 4, one token per step (steps are per block here)


def _variable(**kwargs):
    cfg, _, graphdef, params = _model()
    prompt, mask = _prompt()
    opts = SamplingOptions(gen_length=G, block_length=VAR_K, steps=VAR_STEPS)
    snapshots = []
    result = generate_variable(graphdef, params, IDS, prompt, opts, max_seq_len=cfg.max_seq_len,
                               prompt_mask=mask, on_block=lambda b, c: snapshots.append((b, c)),
                               **kwargs)  # fmt: skip
    return result, snapshots


@functools.cache
def _variable_full():
    """The run without stops: all G / K blocks."""
    return _variable()


def ref_variable(oracle, prompt, prompt_mask, num_blocks):
    """docs/algorithms.md#variable-length-decoding literally: append one block of K masks (nothing
    after it) and run the fixed-canvas generate on it with gen_length = block_length = K and `steps`
    steps; the canvas grows block by block."""
    x, mask = prompt, prompt_mask
    for _ in range(num_blocks):
        x, _ = ref_generate(oracle, x, mask, VAR_K, VAR_K, VAR_STEPS)
        mask = np.concatenate([mask, np.ones((x.shape[0], VAR_K), bool)], axis=1)
    return x


def test_variable_length_matches_the_block_loop_and_never_changes_commits():
    result, snapshots = _variable_full()
    prompt, mask = _prompt()
    assert result.ids.shape == (2, P + G) and result.lengths.tolist() == [G, G]
    assert result.prompt_length == P
    _assert_valid_canvas(result.ids, prompt)
    np.testing.assert_array_equal(result.ids, ref_variable(_forward(), prompt, mask, G // VAR_K))
    assert [b for b, _ in snapshots] == list(range(G // VAR_K))
    for b, canvas in snapshots:
        end = P + (b + 1) * VAR_K
        assert not (canvas[:, P:end] == MASK).any()  # opened blocks are complete
        assert (canvas[:, end:] == MASK).all()  # later blocks are not touched yet
        for _, later in snapshots[b + 1 :]:
            np.testing.assert_array_equal(later[:, :end], canvas[:, :end])
    np.testing.assert_array_equal(snapshots[-1][1], result.ids)


def _stop_tokens():
    """Per row, a token that first appears (in either row) in the same block b >= 1: a stop set
    whose first hit is in block b for both rows. Returns (stop ids, b)."""
    gen = _variable_full()[0].ids[:, P:]
    for b in range(1, G // VAR_K):
        seen = set(gen[:, : b * VAR_K].ravel().tolist())
        fresh = [sorted(set(gen[r, b * VAR_K : (b + 1) * VAR_K].tolist()) - seen) for r in range(2)]
        if all(fresh):
            return sorted({fresh[0][0], fresh[1][0]}), b
    pytest.fail("the tiny model produced no usable stop token; change the prompt seed")


def _first_hits(gen, stop):
    return [int(np.flatnonzero(np.isin(gen[r], stop))[0]) for r in range(gen.shape[0])]


def test_variable_length_stops_at_the_first_stop_id():
    stop, block = _stop_tokens()
    full_gen = _variable_full()[0].ids[:, P:]
    cuts = _first_hits(full_gen, stop)
    assert all(block * VAR_K <= c < (block + 1) * VAR_K for c in cuts)
    result, snapshots = _variable(stop_ids=stop)
    assert [b for b, _ in snapshots] == list(range(block + 1)), "did not stop after the block"
    end = P + (block + 1) * VAR_K
    assert result.ids.shape == (2, end)
    np.testing.assert_array_equal(result.ids, _variable_full()[0].ids[:, :end])
    assert result.lengths.tolist() == cuts  # cut right before the first stop id
    for r in range(2):
        kept = result.generated(r)
        assert len(kept) == cuts[r] and not np.isin(kept, stop).any()


def test_variable_length_stop_fn_cuts_like_a_stop_string():
    """`stop_fn` stands in for stop strings on decoded text: each id decodes to "<id>"."""
    stop, block = _stop_tokens()
    strings = [f"<{t}>" for t in stop]

    def stop_fn(generated):
        pieces = [f"<{int(t)}>" for t in generated]
        text = "".join(pieces)
        hits = [text.find(s) for s in strings if s in text]
        if not hits:
            return None
        char = min(hits)
        starts = np.cumsum([0] + [len(p) for p in pieces])
        return int(np.searchsorted(starts, char))  # the token the stop string starts in

    result, snapshots = _variable(stop_fn=stop_fn)
    cuts = _first_hits(_variable_full()[0].ids[:, P:], stop)
    assert len(snapshots) == block + 1
    assert result.ids.shape == (2, P + (block + 1) * VAR_K)
    assert result.lengths.tolist() == cuts


@pytest.mark.parametrize(
    ("requested", "prompt_len", "max_seq_len", "block", "budget"),
    [
        (16, 6, 64, 4, 16),  # the request fits
        (100, 10, 64, 8, 48),  # min(100, 54) = 54 -> 48
        (100, 10, 64, 4, 52),  # 54 -> 52
        (13, 0, 64, 4, 12),  # the request itself is rounded down
        (30, 60, 64, 4, 4),  # exactly one block of room
    ],
)
def test_variable_budget(requested, prompt_len, max_seq_len, block, budget):
    assert variable_budget(requested, prompt_len, max_seq_len, block) == budget


@pytest.mark.parametrize(
    ("requested", "prompt_len", "max_seq_len", "block"),
    [(30, 61, 64, 4), (3, 0, 64, 4), (30, 64, 64, 4), (30, 70, 64, 4)],
)
def test_variable_budget_too_small_raises(requested, prompt_len, max_seq_len, block):
    with pytest.raises(SamplingError, match="no room to generate"):
        variable_budget(requested, prompt_len, max_seq_len, block)


# ---------------------------------------------------------------------------------------------
# 7. The `</think>` boost (docs/algorithms.md#the-think-boost)
# ---------------------------------------------------------------------------------------------


def test_think_boost_forces_the_end_of_thinking_sequence_once():
    """E = (a, b), boost 1e4, power 1, one token per step. Row 0: the first masked slot of the
    block gets a, then b right after it (prefix a to its left). Row 1's prompt ends with a, so the
    longest-prefix rule asks for b first, then a, then b. Once E is in the generated part the boost
    stops: the rest must equal the spec reference, which only boosts while E is absent."""
    oracle = _forward()
    plain_prompt, mask = _prompt()
    plain, _ = ref_generate(oracle, plain_prompt, mask, G, BLOCK, G)
    unused = [t for t in range(8, VOCAB) if t not in plain[:, P:] and t not in plain_prompt]
    a, b = unused[0], unused[1]
    prompt, mask = _prompt(last_token=a)
    think = ((a, b), 1e4, 1.0)
    want, stats = ref_generate(oracle, prompt, mask, G, BLOCK, G, think=think)
    _, _, graphdef, params = _model()
    opts = _opts(block_length=BLOCK, steps=G, think_ids=(a, b), think_boost=1e4, think_power=1.0)
    got = generate(graphdef, params, IDS, prompt, opts, prompt_mask=mask)
    assert want[0, P : P + 2].tolist() == [a, b]
    assert want[1, P : P + 3].tolist() == [b, a, b]
    assert stats["boosts"] == [2, 3]  # the reference stopped boosting once E was present
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------
# 8. Gumbel noise and temperature sampling (docs/algorithms.md#gumbel-noise)
# ---------------------------------------------------------------------------------------------

EULER_GAMMA = 0.5772156649015329
CAP_24BIT = -math.log(-math.log1p(-(2.0**-24)))  # largest Gumbel draw from a 24-bit uniform


def test_gumbel_moments():
    n = 1 << 22
    g = np.asarray(schedule.gumbel_noise(jax.random.key(0), (n,), "fp32_hires"), np.float64)
    assert g.shape == (n,)
    var = math.pi**2 / 6
    assert abs(g.mean() - EULER_GAMMA) < 5 * math.sqrt(var / n)
    # sd of the sample variance: sqrt((mu4 - sigma^4) / n), Gumbel excess kurtosis 12/5.
    assert abs(g.var() - var) < 5 * math.sqrt((12 / 5 + 2) * var**2 / n)
    # Tail: P(g > t) = 1 - exp(-exp(-t)).
    for t in (2.0, 5.0, 8.0):
        p = -math.expm1(-math.exp(-t))
        assert abs((g > t).mean() - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-9


@functools.cache
def _gumbel_extremes():
    """max, min and the count of non-finite values over 2^27 draws (32 chunks of 2^22)."""

    @jax.jit
    def run(key):
        def chunk(k):
            g = schedule.gumbel_noise(k, (1 << 22,), "fp32_hires")
            return g.max(), g.min(), (~jnp.isfinite(g)).sum()

        return jax.lax.map(chunk, jax.random.split(key, 32))

    hi, lo, bad = run(jax.random.key(0))
    return float(hi.max()), float(lo.min()), int(bad.sum())


def test_gumbel_tail_beyond_the_24_bit_cap():
    """A 24-bit uniform caps draws at -log(-log(1 - 2^-24)) ≈ 16.64; the high-resolution noise must
    exceed it. Over 2^27 draws about 8 are expected above the cap (none: probability e^-8)."""
    assert 16.6 < CAP_24BIT < 16.7
    assert _gumbel_extremes()[0] > CAP_24BIT


def test_gumbel_draws_are_finite():
    _, lowest, non_finite = _gumbel_extremes()
    assert non_finite == 0 and math.isfinite(lowest)


def _chi_square(counts, probs):
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("noise", ["fp32_hires", "float64"])
def test_temperature_sampling_frequencies(noise):
    logits = np.array([1.0, 0.2, -0.5, 2.0, 0.0, -2.0], np.float32)
    n, tau = 200_000, 0.7

    def draw():
        batch = jnp.broadcast_to(jnp.asarray(logits), (n, logits.size))
        return np.asarray(schedule.sample_candidates(batch, jax.random.key(3), tau, noise))

    if noise == "float64":
        with jax.enable_x64(True):
            x0 = draw()
    else:
        x0 = draw()
    counts = np.bincount(x0, minlength=logits.size).astype(np.float64)
    want = _softmax(logits.astype(np.float64) / tau)
    # 5 degrees of freedom: P(chi2 > 35) ≈ 1.6e-6.
    assert _chi_square(counts, want) < 35, (counts / n, want)
    # Not vacuous: the untempered distribution is rejected.
    assert _chi_square(counts, _softmax(logits.astype(np.float64))) > 1000
    # Temperature 0 is the argmax.
    greedy = schedule.sample_candidates(jnp.asarray(logits)[None], jax.random.key(0), 0.0, noise)
    assert np.asarray(greedy).tolist() == [3]


def test_float64_noise_generation_on_cpu():
    _, _, graphdef, params = _model()
    prompt, mask = _prompt()
    opts = _opts(block_length=BLOCK, steps=8, temperature=1.0, noise="float64")
    out = generate(graphdef, params, IDS, prompt, opts, prompt_mask=mask, seed=1)
    _assert_valid_canvas(out, prompt)
    again = generate(graphdef, params, IDS, prompt, opts, prompt_mask=mask, seed=1)
    np.testing.assert_array_equal(out, again)  # the seed fixes the draw
    # Sampling at temperature 1 differs from greedy decoding with the same schedule.
    assert not np.array_equal(out, _generated("blocks8_2tok"))
    assert jnp.zeros(1).dtype == jnp.float32  # x64 did not leak out of the call


# ---------------------------------------------------------------------------------------------
# 9. The recorded reverse process (`trace.py`)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pure_2tok", "blocks8_uneven", "blocks4_idle", "cfg"])
def test_trace_records_the_reference_process(name):
    """Final canvas, commit step and commit confidence of every position against the NumPy
    reference; the stored canvases show exactly the schedule's tokens appearing at each step."""
    fields, ids = CASES[name]
    _, _, graphdef, params = _model()
    prompt, mask = _prompt()
    got = trace_fixed(graphdef, params, ids, prompt, _opts(**fields), prompt_mask=mask)
    record = {}
    flags = {k: v for k, v in fields.items() if k == "cfg_scale"}
    want, _ = ref_generate(_forward(), prompt, mask, G, fields["block_length"], fields["steps"],
                           ids=ids, record=record, **flags)  # fmt: skip
    np.testing.assert_array_equal(got.ids, want)
    np.testing.assert_array_equal(got.ids, _generated(name))  # what `generate` returns
    np.testing.assert_array_equal(got.commit_step, record["step"])
    gen = np.s_[:, P:]
    assert max_rel_err(got.confidence[gen], record["conf"][gen]) < REL_TOL
    assert np.isnan(got.confidence[:, :P]).all()
    # Canvases: S + 1 snapshots; step s adds exactly the tokens whose commit step is s.
    assert (
        got.canvases.shape == (fields["steps"] + 1, 2, P + G) and got.num_steps == fields["steps"]
    )
    assert (got.canvases[0][gen] == MASK).all()
    for s in range(got.num_steps):
        added = got.canvases[s + 1] != got.canvases[s]
        np.testing.assert_array_equal(added, got.commit_step == s)
    np.testing.assert_array_equal(got.canvases[-1], got.ids)


def test_trace_follows_generate_with_sampling_and_threshold():
    """Temperature sampling (the same key sequence) and threshold decoding reproduce
    `generate`; every threshold pass commits at least one token of the open block."""
    _, _, graphdef, params = _model()
    prompt, mask = _prompt()
    for fields in (dict(block_length=8, steps=8, temperature=1.0),
                   dict(block_length=8, steps=16, threshold=0.06)):  # fmt: skip
        opts = _opts(**fields)
        got = trace_fixed(graphdef, params, IDS, prompt, opts, prompt_mask=mask, seed=5)
        want = generate(graphdef, params, IDS, prompt, opts, prompt_mask=mask, seed=5)
        np.testing.assert_array_equal(got.ids, want, err_msg=str(fields))
        steps = got.commit_step[:, P:]
        assert (steps >= 0).all()
        # Blocks are decoded left to right: block 1's steps all come after block 0's.
        assert steps[:, :8].max() < steps[:, 8:].min()
        if "threshold" in fields:
            assert got.num_steps < 16  # parallel decoding took fewer passes than tokens
            used = np.unique(steps)
            np.testing.assert_array_equal(used, np.arange(got.num_steps))  # no empty pass
    with pytest.raises(SamplingError, match="cache"):
        trace_fixed(graphdef, params, IDS, prompt, _opts(cache="dual"), prompt_mask=mask)


def test_model_trace_strips_the_prompt_bucket():
    """`Model.trace` on ragged id prompts: the same tokens as `Model.generate`, prompt columns
    as given (the left bucket padding removed)."""
    from illada_jax import Model

    _, model, _, _ = _model()
    api_model = Model.from_module(model)
    api_model.special_ids = IDS
    rows = [[11, 12, 13], [21, 22, 23, 24, 25]]
    got = api_model.trace(rows, gen_length=G, steps=8, block_length=8)
    want = api_model.generate(rows, gen_length=G, steps=8, block_length=8)
    assert got.prompt_length == 5 and got.ids.shape == (2, 5 + G) and got.mask_id == MASK
    np.testing.assert_array_equal(got.ids, want)
    assert (got.commit_step[:, :5] == -1).all() and (got.commit_step[:, 5:] >= 0).all()
    assert got.canvases.shape == (9, 2, 5 + G)
