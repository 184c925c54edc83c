"""Optimiser: the learning-rate schedules of docs/algorithms.md#learning-rate-schedules, the
weight-decay mask, clipping, config.

Expected learning rates are written out by hand (LLaDA's 4e-4 -> 1e-4 -> 1e-5, iLLaDA's
2e-4 -> 5e-6) and, over whole runs, compared with independent numpy formulas.
"""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from illada_jax.config import flags
from illada_jax.config.schema import ConfigError, ModelConfig, OptimConfig
from illada_jax.model.transformer import Transformer, abstract_model
from illada_jax.train.optim import learning_rate_schedule, make_optimizer, weight_decay_mask

pytestmark = pytest.mark.core

# ------------------------------------------------------------------ numpy reference schedules


def ref_warmup(c, peak, warmup):
    return peak * c / warmup


def ref_constant(c, peak, warmup):
    return ref_warmup(c, peak, warmup) if c < warmup else peak


def ref_cosine(c, peak, final, warmup, total):
    if c < warmup:
        return ref_warmup(c, peak, warmup)
    frac = min(c - warmup, total - warmup) / (total - warmup)
    return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * frac))


def ref_wsd(c, peak, final, warmup, drop, factor, decay, total):
    dropped = peak * factor if drop else peak
    if c < warmup:
        return ref_warmup(c, peak, warmup)
    if drop and c >= drop and c < total - decay:
        return dropped
    if c < total - decay:
        return peak
    frac = min(c - (total - decay), decay) / decay
    return dropped + (final - dropped) * frac


def ref_illada(c, peak, final, warmup, start, total):
    if c < warmup:
        return ref_warmup(c, peak, warmup)
    if c < start:
        return peak
    frac = min(c - start, total - start) / (total - start)
    return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * frac))


def values(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


def assert_whole_run(schedule, ref, total):
    """Every update count of the run (and a few past it), eagerly and jitted on int32 counts."""
    steps = np.arange(total + 5)
    want = np.array([ref(int(c)) for c in steps])
    np.testing.assert_allclose(values(schedule, steps), want, rtol=2e-5, atol=1e-10)
    jitted = jax.jit(jax.vmap(schedule))(jnp.asarray(steps, jnp.int32))
    np.testing.assert_allclose(np.asarray(jitted), want, rtol=2e-5, atol=1e-10)


# ------------------------------------------------------------------ schedules: LLaDA WSD

# LLaDA pretraining scaled to 1000 updates: warmup 20, drop at 52% (1.2T of 2.3T tokens),
# linear decay over the last 13% (0.3T).
LLADA = OptimConfig(
    learning_rate=4e-4,
    warmup_steps=20,
    schedule="wsd",
    wsd_drop_step=520,
    wsd_drop_factor=0.25,
    decay_steps=130,
    final_learning_rate=1e-5,
)


def test_llada_wsd_key_steps():
    schedule = learning_rate_schedule(LLADA, total_steps=1000)
    by_hand = {
        0: 0.0,  # warmup starts at zero
        5: 1e-4,  # a quarter of the warmup
        10: 2e-4,  # mid-warmup
        19: 3.8e-4,
        20: 4e-4,  # end of warmup: peak
        300: 4e-4,  # stable
        519: 4e-4,  # just before the drop
        520: 1e-4,  # the drop: 4e-4 * 0.25
        521: 1e-4,
        869: 1e-4,  # last step before the final decay
        870: 1e-4,  # decay starts (T - decay_steps)
        935: 5.5e-5,  # mid-decay: (1e-4 + 1e-5) / 2
        999: 1e-5 + 9e-5 / 130,  # the last update, one decrement above the floor
        1000: 1e-5,  # the floor, reached at T
        1500: 1e-5,  # held afterwards
    }
    got = values(schedule, list(by_hand))
    np.testing.assert_allclose(got, list(by_hand.values()), rtol=1e-5, atol=1e-12)
    assert_whole_run(
        schedule,
        lambda c: ref_wsd(c, 4e-4, 1e-5, 20, 520, 0.25, 130, 1000),
        1000,
    )


def test_wsd_without_drop_is_llada_sft():
    """docs/algorithms.md#sft-llada-style: warmup 50 to 2.5e-5, hold, linear decay to 2.5e-6 over
    the last 10%."""
    cfg = OptimConfig(
        learning_rate=2.5e-5,
        warmup_steps=50,
        schedule="wsd",
        decay_steps=100,
        final_learning_rate=2.5e-6,
    )
    schedule = learning_rate_schedule(cfg, total_steps=1000)
    by_hand = {
        0: 0.0,
        25: 1.25e-5,
        50: 2.5e-5,
        899: 2.5e-5,
        900: 2.5e-5,
        950: 1.375e-5,
        1000: 2.5e-6,
    }
    np.testing.assert_allclose(values(schedule, list(by_hand)), list(by_hand.values()), rtol=1e-5)
    assert_whole_run(schedule, lambda c: ref_wsd(c, 2.5e-5, 2.5e-6, 50, 0, 0.25, 100, 1000), 1000)


def test_wsd_edge_phases():
    # No warmup; drop right at the start of the decay (empty dropped phase); whole run decays.
    cfg = OptimConfig(
        learning_rate=4e-4,
        warmup_steps=0,
        schedule="wsd",
        wsd_drop_step=80,
        decay_steps=20,
        final_learning_rate=1e-5,
    )
    schedule = learning_rate_schedule(cfg, total_steps=100)
    np.testing.assert_allclose(
        values(schedule, [0, 79, 80, 90, 100]), [4e-4, 4e-4, 1e-4, 5.5e-5, 1e-5], rtol=1e-5
    )
    assert_whole_run(schedule, lambda c: ref_wsd(c, 4e-4, 1e-5, 0, 80, 0.25, 20, 100), 100)
    whole = OptimConfig(
        learning_rate=1e-3, warmup_steps=0, schedule="wsd", decay_steps=10, final_learning_rate=0.0
    )
    np.testing.assert_allclose(
        values(learning_rate_schedule(whole, total_steps=10), [0, 5, 9, 10]),
        [1e-3, 5e-4, 1e-4, 0.0],
        rtol=1e-5,
        atol=1e-12,
    )


# ------------------------------------------------------------------ schedules: iLLaDA, cosine

ILLADA = OptimConfig(
    learning_rate=2e-4,
    warmup_steps=50,
    schedule="illada",
    decay_start_step=600,
    final_learning_rate=5e-6,
)


def test_illada_constant_then_cosine_to_floor():
    schedule = learning_rate_schedule(ILLADA, total_steps=1000)
    mid = (2e-4 + 5e-6) / 2
    by_hand = {
        0: 0.0,
        25: 1e-4,  # mid-warmup
        50: 2e-4,  # end of warmup
        400: 2e-4,  # constant
        599: 2e-4,  # just before the decay
        600: 2e-4,  # decay starts at the peak
        700: 5e-6 + 1.95e-4 * (1 + math.sqrt(0.5)) / 2,  # a quarter into the cosine
        800: mid,  # mid-decay
        999: 5e-6 + 1.95e-4 * (1 - math.cos(math.pi / 400)) / 2,
        1000: 5e-6,  # the floor at T
        1200: 5e-6,
    }
    np.testing.assert_allclose(values(schedule, list(by_hand)), list(by_hand.values()), rtol=1e-5)
    assert_whole_run(schedule, lambda c: ref_illada(c, 2e-4, 5e-6, 50, 600, 1000), 1000)


def test_illada_decay_right_after_warmup():
    cfg = OptimConfig(
        learning_rate=2e-4,
        warmup_steps=10,
        schedule="illada",
        decay_start_step=10,
        final_learning_rate=5e-6,
    )
    schedule = learning_rate_schedule(cfg, total_steps=50)
    assert_whole_run(schedule, lambda c: ref_illada(c, 2e-4, 5e-6, 10, 10, 50), 50)


def test_cosine_smdm():
    """docs/algorithms.md#learning-rate-schedules: warmup, then cosine to the floor at the last step
    (2e-4 -> 2e-5)."""
    cfg = OptimConfig(
        learning_rate=2e-4, warmup_steps=100, schedule="cosine", final_learning_rate=2e-5
    )
    schedule = learning_rate_schedule(cfg, total_steps=1000)
    by_hand = {0: 0.0, 50: 1e-4, 100: 2e-4, 550: 1.1e-4, 1000: 2e-5, 1100: 2e-5}
    np.testing.assert_allclose(values(schedule, list(by_hand)), list(by_hand.values()), rtol=1e-5)
    assert_whole_run(schedule, lambda c: ref_cosine(c, 2e-4, 2e-5, 100, 1000), 1000)
    no_warmup = OptimConfig(learning_rate=1e-3, warmup_steps=0, schedule="cosine")
    np.testing.assert_allclose(
        values(learning_rate_schedule(no_warmup, total_steps=10), [0, 5, 10]),
        [1e-3, 5e-4, 0.0],
        rtol=1e-5,
        atol=1e-12,
    )


def test_constant_schedule_keeps_the_old_signature():
    cfg = OptimConfig(learning_rate=1e-3, warmup_steps=20)
    for schedule in (learning_rate_schedule(cfg), learning_rate_schedule(cfg, total_steps=100)):
        np.testing.assert_allclose(
            values(schedule, [0, 10, 19, 20, 10_000]), [0.0, 5e-4, 9.5e-4, 1e-3, 1e-3], rtol=1e-6
        )
        assert_whole_run(schedule, lambda c: ref_constant(c, 1e-3, 20), 100)
    no_warmup = learning_rate_schedule(OptimConfig(learning_rate=3e-3, warmup_steps=0))
    np.testing.assert_allclose(values(no_warmup, [0, 7]), [3e-3, 3e-3], rtol=1e-6)
    assert isinstance(make_optimizer(cfg), optax.GradientTransformation)


# ------------------------------------------------------------------ schedules: total_steps errors


@pytest.mark.parametrize(
    ("cfg", "total", "expected"),
    [
        (LLADA, None, "needs the run's total_steps"),
        (ILLADA, None, "needs the run's total_steps"),
        (OptimConfig(schedule="cosine"), None, "needs the run's total_steps"),
        (LLADA, 0, "total_steps=0 is invalid"),
        (LLADA, 100.0, "total_steps=100.0 is invalid"),
        (ILLADA, 40, "optim.warmup_steps=50 is invalid: must be <= total_steps=40"),
        (LLADA, 10, "optim.warmup_steps=20 is invalid: must be <= total_steps=10"),
        (OptimConfig(warmup_steps=20, schedule="cosine"), 20, "optim.warmup_steps=20 is invalid"),
        # drop at 520 + decay 130 > 600
        (LLADA, 600, "optim.wsd_drop_step=520 is invalid: must be <= total_steps - decay_steps"),
        # the decay (130) would start inside the warmup (20) of a 140-step run
        (LLADA.__class__(**{**LLADA.__dict__, "wsd_drop_step": 0}), 140, "optim.decay_steps=130"),
        (ILLADA, 600, "optim.decay_start_step=600 is invalid: must be < total_steps=600"),
        (ILLADA, 599, "optim.decay_start_step=600 is invalid"),
    ],
)
def test_schedule_inconsistent_with_total_steps(cfg, total, expected):
    with pytest.raises(ValueError, match=re.escape(expected)):
        learning_rate_schedule(cfg, total_steps=total)
    with pytest.raises(ConfigError):
        make_optimizer(cfg, total_steps=total)


def test_boundary_total_steps_are_accepted():
    learning_rate_schedule(LLADA, total_steps=650)  # drop + decay == T: empty dropped phase
    learning_rate_schedule(ILLADA, total_steps=601)
    learning_rate_schedule(OptimConfig(warmup_steps=20), total_steps=20)
    # "constant" accepts a run shorter than its warmup: the run ends on the ramp.
    short = learning_rate_schedule(OptimConfig(learning_rate=1e-3, warmup_steps=20), total_steps=6)
    np.testing.assert_allclose(values(short, [0, 5]), [0.0, 2.5e-4], rtol=1e-6)


# ------------------------------------------------------------------ weight decay mask


@functools.cache
def tiny_params(*, real: bool = False, **overrides):
    """The parameter tree (`nnx.State` of `nnx.Param`) of a tiny Transformer, every leaf nonzero.

    `real=True` builds the model (seconds); otherwise the same tree comes from `abstract_model`.
    Leaves are shifted away from zero: zero-initialised biases would not move under decay either.
    """
    kwargs = dict(
        vocab_size=64,
        d_model=16,
        n_layers=2,
        n_heads=2,
        n_kv_heads=1,
        head_dim=8,
        mlp_dim=32,
        max_seq_len=16,
    )
    kwargs.update(overrides)
    cfg = ModelConfig(**kwargs)
    if real:
        _, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    else:
        _, params = nnx.split(abstract_model(cfg))
        params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    return jax.tree.map(
        lambda p: p + 1.0 + jnp.linspace(0.0, 1.0, p.size, dtype=p.dtype).reshape(p.shape), params
    )


def leaf_names(params):
    names = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        parts = [getattr(k, "key", getattr(k, "name", None)) for k in path]
        names["/".join(p for p in parts if p != "value")] = leaf
    return names


DECAYED = {
    "blocks/attn/q_proj",
    "blocks/attn/k_proj",
    "blocks/attn/v_proj",
    "blocks/attn/o_proj",
    "blocks/mlp/gate",
    "blocks/mlp/up",
    "blocks/mlp/down",
}
NOT_DECAYED_UNTIED = {
    "embed",
    "lm_head",
    "final_norm/scale",
    "blocks/attn_norm/scale",
    "blocks/mlp_norm/scale",
    "blocks/attn/q_bias",
    "blocks/attn/k_bias",
    "blocks/attn/v_bias",
    "blocks/attn/o_bias",
    "blocks/mlp/gate_bias",
    "blocks/mlp/up_bias",
    "blocks/mlp/down_bias",
}


def one_zero_grad_update(cfg, params):
    optimizer = make_optimizer(cfg)

    @jax.jit
    def update(params):
        grads = jax.tree.map(jnp.zeros_like, params)
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        return optax.apply_updates(params, updates)

    return update(params)


@pytest.mark.parametrize("tie", [False, True])
def test_adamw_decays_only_masked_leaves(tie):
    # The untied tree comes from a really built Transformer, the tied one from its abstract twin.
    params = tiny_params(real=not tie, use_bias=True, tie_embeddings=tie)
    before = leaf_names(params)
    expected_off = NOT_DECAYED_UNTIED - ({"lm_head"} if tie else set())
    assert set(before) == DECAYED | expected_off  # the test covers every leaf of the tree
    lr, wd = 1e-2, 0.1
    cfg = OptimConfig(
        learning_rate=lr, warmup_steps=0, weight_decay=wd, decay_exclude="norms_and_embeddings"
    )
    after = leaf_names(one_zero_grad_update(cfg, params))
    # With zero gradients Adam's direction is 0, so the update is exactly -lr * wd * p.
    for name in DECAYED:
        np.testing.assert_allclose(after[name], before[name] * (1 - lr * wd), rtol=1e-6)
    for name in expected_off:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)

    everything = one_zero_grad_update(
        OptimConfig(learning_rate=lr, warmup_steps=0, weight_decay=wd), params
    )
    for name, value in leaf_names(everything).items():
        np.testing.assert_allclose(value, before[name] * (1 - lr * wd), rtol=1e-6, err_msg=name)


def test_mask_on_a_plain_nested_dict():
    params = tiny_params(real=True, use_bias=True, tie_embeddings=False)
    mask = weight_decay_mask(nnx.to_pure_dict(params))
    assert mask["embed"] is False and mask["lm_head"] is False
    assert mask["final_norm"]["scale"] is False
    assert mask["blocks"]["attn_norm"]["scale"] is False
    assert mask["blocks"]["mlp"]["down_bias"] is False
    assert mask["blocks"]["mlp"]["down"] is True
    assert mask["blocks"]["attn"]["q_proj"] is True
    assert weight_decay_mask({"layers": [{"w": 1.0, "bias": 0.0}]}) == {
        "layers": [{"w": True, "bias": False}]
    }


def test_mask_runs_inside_jit():
    params = tiny_params(real=True, use_bias=True, tie_embeddings=False)
    cfg = OptimConfig(
        learning_rate=1e-2, warmup_steps=0, weight_decay=0.5, decay_exclude="norms_and_embeddings"
    )
    optimizer = make_optimizer(cfg, total_steps=10)

    @jax.jit
    def step(p, s):
        updates, s = optimizer.update(jax.tree.map(jnp.zeros_like, p), s, p)
        return optax.apply_updates(p, updates), s

    new, _ = step(params, optimizer.init(params))
    before, after = leaf_names(params), leaf_names(new)
    np.testing.assert_array_equal(after["embed"], before["embed"])
    np.testing.assert_allclose(after["blocks/mlp/up"], before["blocks/mlp/up"] * 0.995, rtol=1e-6)


# ------------------------------------------------------------------ clipping


@pytest.mark.parametrize(("grad_value", "clip"), [(1.0, 1.0), (0.01, 1.0), (3.0, 0.5)])
def test_global_norm_clipping_before_adam(grad_value, clip):
    params = tiny_params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, grad_value), params)
    norm = float(optax.tree.norm(grads))
    cfg = OptimConfig(learning_rate=1e-3, warmup_steps=0, grad_clip_norm=clip, b1=0.9)
    optimizer = make_optimizer(cfg)
    _, state = jax.jit(optimizer.update)(grads, optimizer.init(params), params)
    # After one step Adam's first moment is (1 - b1) * (the gradient it was given).
    mu = optax.tree_utils.tree_get(state, "mu")
    clipped_norm = min(norm, clip)
    np.testing.assert_allclose(float(optax.tree.norm(mu)), 0.1 * clipped_norm, rtol=1e-5)
    # The direction is kept: every leaf is scaled by the same factor.
    scale = clipped_norm / norm
    for m, g in zip(jax.tree.leaves(mu), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(m, 0.1 * scale * g, rtol=1e-5)


# ------------------------------------------------------------------ config validation


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"schedule": "linear"}, "schedule='linear' is invalid: allowed values are constant, "),
        ({"decay_exclude": "norms"}, "allowed values are none, norms_and_embeddings"),
        ({"schedule": "cosine", "final_learning_rate": -1e-5}, "final_learning_rate=-1e-05"),
        ({"schedule": "cosine", "final_learning_rate": 2e-3}, "must be <= learning_rate=0.001"),
        ({"schedule": "cosine", "final_learning_rate": "0"}, "final_learning_rate='0'"),
        ({"schedule": "wsd", "decay_steps": -1}, "decay_steps=-1 is invalid: must be an integer"),
        ({"schedule": "wsd", "decay_steps": 1.5}, "decay_steps=1.5 is invalid"),
        ({"schedule": "wsd", "decay_steps": 0}, "schedule=wsd needs the length"),
        ({"schedule": "illada", "decay_start_step": -5}, "decay_start_step=-5"),
        ({"schedule": "wsd", "decay_steps": 5, "wsd_drop_step": -1}, "wsd_drop_step=-1"),
        ({"schedule": "wsd", "decay_steps": 5, "wsd_drop_factor": 0.0}, "must lie in (0, 1]"),
        ({"schedule": "wsd", "decay_steps": 5, "wsd_drop_factor": 1.5}, "wsd_drop_factor=1.5"),
        (
            {"schedule": "wsd", "decay_steps": 5, "wsd_drop_step": 10},
            "wsd_drop_step=10 is invalid: must be 0 (no drop) or >= warmup_steps=20",
        ),
        (
            {
                "schedule": "wsd",
                "decay_steps": 5,
                "wsd_drop_step": 100,
                "final_learning_rate": 5e-4,
            },
            "must be <= learning_rate * wsd_drop_factor = 0.00025",
        ),
        (
            {"schedule": "illada", "decay_start_step": 10},
            "decay_start_step=10 is invalid: must be >= warmup_steps=20",
        ),
        # a field the schedule ignores must stay at 0
        ({"decay_steps": 100}, "decay_steps=100 is invalid: is only used by schedule=wsd"),
        ({"schedule": "cosine", "decay_start_step": 50}, "only used by schedule=illada"),
        ({"schedule": "illada", "decay_start_step": 50, "wsd_drop_step": 60}, "wsd_drop_step=60"),
        ({"final_learning_rate": 1e-5}, "only used by schedule=cosine or wsd or illada"),
    ],
)
def test_invalid_optim_configs_name_the_field(kwargs, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        OptimConfig(**kwargs)


def test_llada_and_illada_settings_through_the_command_line():
    experiment = flags.experiment_from_flags(
        [
            "set:optim.schedule=wsd",
            "set:optim.learning_rate=4e-4",
            "set:optim.wsd_drop_step=520",
            "set:optim.decay_steps=130",
            "set:optim.final_learning_rate=1e-5",
            "set:optim.decay_exclude=norms_and_embeddings",
        ]
    )
    assert experiment.optim.schedule == "wsd"
    assert experiment.optim.wsd_drop_factor == 0.25
    assert experiment.optim.decay_exclude == "norms_and_embeddings"
    with pytest.raises(ConfigError, match="decay_start_step=10"):
        flags.experiment_from_flags(["set:optim.schedule=illada", "set:optim.decay_start_step=10"])
