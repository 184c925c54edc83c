"""Scoring a continuation under a masked-diffusion LM (docs/algorithms.md#likelihood-and-scoring).

- `mc_elbo`: LLaDA's Monte-Carlo conditional ELBO (a lower bound on log p(answer | prompt), nats):
  stratified masking counts `l_r` with a random offset, exactly `l_r` answer tokens masked per row,
  row loss = Σ masked CE / (l_r / A), optional unsupervised CFG.
- `confidence_score`: iLLaDA's greedy best-order chain-rule score: reveal the candidate's own
  tokens one at a time where the model is most sure of them, summing their log-probabilities.
- `greedy_check`: does confidence-ordered greedy decoding of the answer span reproduce it?

Sequences are laid out right-padded: `[prompt, answer, pad...]` with a key mask hiding the pads
(bidirectional attention: the model then sees exactly `[prompt, answer]`), and lengths rounded up
to buckets so different requests share compiled programs. Logits are only computed at answer
positions (a [rows, A, vocab] slab, never [rows, L, vocab]).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from illada_jax.errors import IlladaError

BUCKET = 32


class ScoringError(IlladaError, ValueError):
    """A scoring request that cannot be evaluated (names the problem and the fix)."""


def _bucket(n: int, bucket: int = BUCKET) -> int:
    return max(bucket, -(-n // bucket) * bucket)


def layout(prompt, answers, mask_id: int, suffix=()):
    """Rows `[prompt, answer_r, suffix, pad...]`, one per candidate answer.

    `suffix` tokens (e.g. iLLaDA's `padd_eos`: one EOS after the whole input,
    docs/algorithms.md#confidence-scoring) are visible to attention but never masked or scored.
    Returns tokens int32 [R, L], key mask bool [R, L] (True on prompt, answer and suffix), answer
    positions int32 [Ab] and answer validity bool [R, Ab]; L and Ab are rounded up to `BUCKET` so
    requests share compiled programs.
    """
    prompt, suffix = [int(t) for t in prompt], [int(t) for t in suffix]
    answers = [[int(t) for t in np.asarray(answer).reshape(-1)] for answer in answers]
    if not answers:
        raise ScoringError("no answers (continuations) given; nothing to score")
    if any(not answer for answer in answers):
        raise ScoringError("an answer (continuation) has no tokens; nothing to score")
    if any(mask_id in seq for seq in (prompt, suffix, *answers)):
        raise ScoringError(f"the mask id {mask_id} appears in the text to score; remove it")
    p, longest = len(prompt), max(len(a) for a in answers)
    a_bucket = _bucket(longest)
    length = max(_bucket(p + longest + len(suffix)), p + a_bucket)
    tokens = np.zeros((len(answers), length), np.int32)
    key_mask = np.zeros((len(answers), length), bool)
    valid = np.zeros((len(answers), a_bucket), bool)
    for row, answer in enumerate(answers):
        sequence = prompt + answer + suffix
        tokens[row, : len(sequence)] = sequence
        key_mask[row, : len(sequence)] = True
        valid[row, : len(answer)] = True
    positions = (p + np.arange(a_bucket)).astype(np.int32)
    return tokens, key_mask, positions, valid


def _answer_logits(model, tokens, key_mask, positions):
    """fp32 logits at the answer positions: [rows, Ab, vocab]."""
    hidden = model.hidden_states(tokens, key_mask=key_mask)
    return model.project(hidden[:, positions])


def _answer_log_probs(model, tokens, key_mask, positions, targets, cfg_scale, uncond_tokens):
    """log p(target) at the answer positions, [rows, Ab], with optional CFG on the logits."""
    logits = _answer_logits(model, tokens, key_mask, positions)
    if cfg_scale:
        uncond = _answer_logits(model, uncond_tokens, key_mask, positions)
        logits = uncond + (cfg_scale + 1.0) * (logits - uncond)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(log_probs, targets[None, :, None], axis=-1)[..., 0]


def stratified_counts(offset, rows: int, answer_len):
    """docs/algorithms.md#the-monte-carlo-elbo masking counts of one MC batch: l_r =
    round(linspace(k, k + (b-1)·A/b, b)) (round half to even, as torch), wrapped into [1, A] by
    ((l-1) mod A) + 1. -> int32 [rows]."""
    a = jnp.asarray(answer_len, jnp.float32)
    counts = jnp.round(offset + jnp.arange(rows) * (a / rows)).astype(jnp.int32)
    return (counts - 1) % jnp.asarray(answer_len, jnp.int32) + 1


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _elbo_batch(graphdef, mask_id: int, cfg_scale: float, params, tokens, key_mask, positions,
                valid, prompt_len, answer_len, offset, key):  # fmt: skip
    """Loss of one MC batch of `rows` copies (docs/algorithms.md#the-monte-carlo-elbo). Returns a
    scalar (nats)."""
    model = nnx.merge(graphdef, params)
    rows = tokens.shape[0]
    a = answer_len.astype(jnp.float32)
    counts = stratified_counts(offset, rows, answer_len)
    # Exactly l_r answer positions per row, uniformly at random (rank of random scores).
    scores = jax.random.uniform(key, (rows, positions.shape[0]))
    scores = jnp.where(valid[None, :], scores, 2.0)  # padding slots rank last
    ranks = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
    masked = (ranks < counts[:, None]) & valid[None, :]
    rows_idx = jnp.arange(rows)[:, None]
    noisy = tokens.at[rows_idx, positions[None, :]].set(
        jnp.where(masked, mask_id, tokens[rows_idx, positions[None, :]])
    )
    uncond = jnp.where(jnp.arange(tokens.shape[1])[None, :] < prompt_len, mask_id, noisy)
    log_p = _answer_log_probs(
        model, noisy, key_mask, positions, tokens[0, positions], cfg_scale, uncond
    )
    row_loss = -(log_p * masked).sum(axis=1) / (counts / a)
    return row_loss.sum() / rows


def mc_elbo(graphdef, params, prompt, answer, *, mask_id: int, mc_num: int = 128,
            batch_size: int = 32, cfg_scale: float = 0.0, seed: int = 0,
            suffix=()) -> float:  # fmt: skip
    """Monte-Carlo ELBO of `answer` given `prompt` (token id lists), in nats
    (docs/algorithms.md#the-monte-carlo-elbo).

    `mc_num` samples in batches of `batch_size` (mc_num % batch_size == 0; a smaller mc_num is
    one batch of mc_num rows). `suffix`: visible, never-scored tokens after the answer.
    """
    batch_size = min(batch_size, mc_num)
    if batch_size < 1 or mc_num < 1 or mc_num % batch_size:
        raise ScoringError(
            f"mc_num={mc_num} must be a positive multiple of batch_size={batch_size}"
        )
    tokens, key_mask, positions, valid = layout(prompt, [answer], mask_id, suffix)
    tokens, key_mask, valid = (
        np.repeat(tokens, batch_size, 0), np.repeat(key_mask, batch_size, 0), valid[0]
    )  # fmt: skip
    a = int(valid.sum())
    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    losses = []
    for _ in range(mc_num // batch_size):
        key, sub = jax.random.split(key)
        offset = float(rng.integers(1, a + 1))  # k ~ U{1..A}
        loss = _elbo_batch(graphdef, mask_id, float(cfg_scale), params, tokens, key_mask,
                           positions, valid, len(prompt), a, offset, sub)  # fmt: skip
        losses.append(float(loss))
    return -float(np.mean(losses))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _reveal_loop(graphdef, mask_id: int, greedy: bool, cfg_scale: float, params, tokens,
                 key_mask, positions, valid, prompt_len):  # fmt: skip
    """Reveal the answer one token per pass (docs/algorithms.md#confidence-scoring, #greedy-check)
    for every row (candidate).

    Confidence (greedy=False): the position with the highest probability of the candidate's own
    token is revealed with that token; returns the sum of those log-probs [rows].
    Greedy (greedy=True): the position whose argmax is most probable is revealed with the argmax;
    returns whether the revealed answer equals the target [rows].
    """
    model = nnx.merge(graphdef, params)
    rows = tokens.shape[0]
    rows_idx = jnp.arange(rows)[:, None]
    targets = tokens[rows_idx, positions[None, :]]  # [rows, Ab]
    canvas = tokens.at[rows_idx, positions[None, :]].set(jnp.where(valid, mask_id, targets))
    n_answer = valid.sum(axis=1)

    before_answer = jnp.arange(tokens.shape[1])[None, :] < prompt_len

    def body(i, carry):
        canvas, total = carry
        logits = _answer_logits(model, canvas, key_mask, positions)
        if (
            cfg_scale
        ):  # docs/algorithms.md#classifier-free-guidance: prompt positions replaced by the mask id
            uncond_canvas = jnp.where(before_answer, mask_id, canvas)
            uncond = _answer_logits(model, uncond_canvas, key_mask, positions)
            logits = uncond + (cfg_scale + 1.0) * (logits - uncond)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        still = (canvas[rows_idx, positions[None, :]] == mask_id) & valid  # not the padding
        if greedy:
            token = jnp.argmax(logits, axis=-1).astype(tokens.dtype)
            score = jnp.max(log_probs, axis=-1)
        else:
            token = targets
            score = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
        pick = jnp.argmax(jnp.where(still, score, -jnp.inf), axis=1)  # first best index
        active = i < n_answer
        chosen = jax.nn.one_hot(pick, positions.shape[0], dtype=bool) & active[:, None]
        answer_now = canvas[rows_idx, positions[None, :]]
        canvas = canvas.at[rows_idx, positions[None, :]].set(jnp.where(chosen, token, answer_now))
        total = total + jnp.where(active, jnp.take_along_axis(score, pick[:, None], 1)[:, 0], 0.0)
        return canvas, total

    canvas, total = jax.lax.fori_loop(
        0, positions.shape[0], body, (canvas, jnp.zeros((rows,), jnp.float32))
    )
    if greedy:
        same = (canvas[rows_idx, positions[None, :]] == targets) | ~valid
        return same.all(axis=1)
    return total


def _reveal(graphdef, params, prompt, answers, *, mask_id, greedy, cfg_scale, suffix):
    tokens, key_mask, positions, valid = layout(prompt, answers, mask_id, suffix)
    return np.asarray(
        _reveal_loop(
            graphdef,
            mask_id,
            greedy,
            float(cfg_scale),
            params,
            tokens,
            key_mask,
            positions,
            valid,
            len(prompt),
        )  # fmt: skip
    )


def confidence_score(graphdef, params, prompt, answers, *, mask_id: int,
                     cfg_scale: float = 0.0, suffix=()) -> np.ndarray:  # fmt: skip
    """iLLaDA's confidence-based score S_conf (docs/algorithms.md#confidence-scoring) of each
    candidate: float [len(answers)].

    Costs len(answer) forward passes (twice with CFG), all candidates in one batch. `suffix`:
    visible, never-scored tokens after each answer (iLLaDA's `padd_eos`).
    """
    return _reveal(graphdef, params, prompt, answers, mask_id=mask_id, greedy=False,
                   cfg_scale=cfg_scale, suffix=suffix)  # fmt: skip


def greedy_check(graphdef, params, prompt, answers, *, mask_id: int, cfg_scale: float = 0.0,
                 suffix=()) -> np.ndarray:  # fmt: skip
    """docs/algorithms.md#greedy-check `is_greedy` for each candidate: bool [len(answers)]."""
    return _reveal(graphdef, params, prompt, answers, mask_id=mask_id, greedy=True,
                   cfg_scale=cfg_scale, suffix=suffix)  # fmt: skip
