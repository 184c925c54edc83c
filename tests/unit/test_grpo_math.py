"""diffu-GRPO's pure math (`diffusion/grpo.py`, docs/algorithms.md#reinforcement-learning-diffu-grpo)
against float64 NumPy written here from d1's objective: group advantages, the clipped surrogate
with the k3 KL, the one-forward masking; equal rewards leave only the KL term's gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from illada_jax.diffusion import grpo

pytestmark = pytest.mark.core


def test_group_advantages_centre_and_scale_each_group():
    rewards = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 2.0, 0.0, 1.0, 3.0])
    got = np.asarray(grpo.group_advantages(jnp.asarray(rewards, jnp.float32), 4))
    groups = rewards.reshape(3, 4)
    centred = groups - groups.mean(1, keepdims=True)
    expected = centred / (groups.std(1, ddof=1, keepdims=True) + 1e-4)  # d1: torch.std
    np.testing.assert_allclose(got, expected.reshape(-1), rtol=1e-5, atol=1e-6)
    assert (got[4:8] == 0).all()  # a group of equal rewards has no advantage
    unscaled = grpo.group_advantages(jnp.asarray(rewards, jnp.float32), 4, scale_by_std=False)
    np.testing.assert_allclose(np.asarray(unscaled), centred.reshape(-1), rtol=1e-6, atol=1e-6)


def _reference_loss(logp, old, ref, adv, completion, eps, beta):
    """d1's per-group objective, negated, from its definition (float64)."""
    total = 0.0
    for i in range(logp.shape[0]):
        terms = []
        for k in np.flatnonzero(completion[i]):
            rho = np.exp(logp[i, k] - old[i, k])
            surrogate = min(rho * adv[i], np.clip(rho, 1 - eps, 1 + eps) * adv[i])
            r = np.exp(ref[i, k] - logp[i, k])  # π_ref / π_θ
            terms.append(surrogate - beta * (r - np.log(r) - 1))
        total += np.mean(terms)
    return -total / logp.shape[0]


def test_policy_loss_equals_the_hand_computed_objective():
    rng = np.random.default_rng(0)
    rows, length = 6, 10
    logp = np.log(rng.uniform(0.05, 0.9, (rows, length)))
    old = logp + rng.normal(0, 0.3, (rows, length))  # ratios on both sides of the clip range
    ref = logp + rng.normal(0, 0.5, (rows, length))
    adv = rng.normal(0, 1, rows)
    completion = np.zeros((rows, length), bool)
    for i, (start, n) in enumerate([(2, 5), (3, 7), (1, 1), (4, 6), (0, 10), (5, 3)]):
        completion[i, start : start + n] = True
    args = [jnp.asarray(x, jnp.float32) for x in (logp, old, ref, adv)]
    out = grpo.policy_loss(*args, jnp.asarray(completion), clip_eps=0.2, beta=0.04)
    expected = _reference_loss(logp, old, ref, adv, completion, 0.2, 0.04)
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)
    ratio, a = np.exp(logp - old), adv[:, None]
    active = ((ratio > 1.2) & (a > 0)) | ((ratio < 0.8) & (a < 0))
    assert float(out.clipped) == pytest.approx(np.mean(active[completion]))
    assert 0 < float(out.clipped) < 1  # the fixture exercises both sides of the clip
    r = np.exp(ref - logp)[completion]
    assert float(out.kl) == pytest.approx(np.mean(r - np.log(r) - 1), rel=1e-5)


def test_equal_rewards_leave_only_the_kl_gradient():
    rng = np.random.default_rng(1)
    rows, length = 4, 6
    old = jnp.asarray(np.log(rng.uniform(0.1, 0.9, (rows, length))), jnp.float32)
    ref = old + jnp.asarray(rng.normal(0, 0.3, (rows, length)), jnp.float32)
    completion = jnp.ones((rows, length), bool)
    advantages = grpo.group_advantages(jnp.full((rows,), 0.7), 4)
    assert (np.asarray(advantages) == 0).all()

    def loss(logp, beta):
        return grpo.policy_loss(logp, old, ref, advantages, completion, clip_eps=0.2,
                                beta=beta).loss  # fmt: skip

    grad = np.asarray(jax.grad(loss)(old + 0.1, 0.04))
    # The KL term alone: d/dlogp of β·mean(exp(ref-logp) - (ref-logp) - 1) = β(1 - exp(ref-logp))/L/R
    expected = 0.04 * (1 - np.exp(np.asarray(ref) - np.asarray(old + 0.1))) / (length * rows)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)
    assert np.asarray(jax.grad(loss)(old + 0.1, 0.0)).max() == 0.0  # and without KL, nothing


def test_the_forward_input_masks_the_whole_completion_and_part_of_the_prompt():
    # Two rows of W = 10: prompts of 4 and 6 tokens left-padded into 7 columns, 3 generated.
    tokens = jnp.arange(10, 30, dtype=jnp.int32).reshape(2, 10)
    prompt_mask = jnp.asarray([[0, 0, 0, 1, 1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1, 1, 0, 0, 0]],
                              bool)  # fmt: skip
    hidden = grpo.hide_prompt(jax.random.key(0), prompt_mask, 0.5)
    noisy, key_mask = grpo.log_prob_input(tokens, prompt_mask, hidden, 3, 4)
    noisy, key_mask, hidden = map(np.asarray, (noisy, key_mask, hidden))
    np.testing.assert_array_equal(key_mask[0], [0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    assert (noisy[:, 7:] == 4).all()  # the completion: all masked
    assert not hidden[~np.asarray(prompt_mask)].any()  # only real prompt tokens are hidden
    np.testing.assert_array_equal(noisy[:, :7] == 4, hidden[:, :7])
    # p = 0.5 over many prompt tokens: some hidden, some not; p = 0 hides none.
    many = np.asarray(grpo.hide_prompt(jax.random.key(1), jnp.ones((1, 400), bool), 0.5))
    assert 0.4 < many.mean() < 0.6
    assert not np.asarray(grpo.hide_prompt(jax.random.key(1), jnp.ones((1, 400), bool), 0.0)).any()


def test_the_completion_is_scored_up_to_and_including_its_first_stop():
    eos, eot = 2, 3
    tokens = jnp.asarray([[9, 9, 5, 6, 2, 2, 2], [9, 9, 5, 3, 6, 2, 7], [9, 9, 5, 6, 7, 8, 8]])
    scored = np.asarray(grpo.completion_mask(tokens, 5, (eos, eot)))
    np.testing.assert_array_equal(scored, [[0, 0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0, 0],
                                           [0, 0, 1, 1, 1, 1, 1]])  # fmt: skip
