"""Wires the forward process, the network and the loss into one scalar objective
(docs/algorithms.md#the-pre-training-loss).

This is the only place where diffusion meets the model. A batch is a dict of arrays:
- `tokens [batch, length] int32` (always);
- `segment_ids`, `positions [batch, length] int32` (optional; segment id 0 = padding, other ids
  separate documents, see `illada_jax.data.pipeline.packing`);
- `prompt_lengths [batch] int32` (objective `sft_llada` only).

`diffusion_loss` serves the masked-diffusion objectives and block diffusion (`block_size` < L:
one time per block, the noisy+clean canvas of `diffusion/blocks.py`); `ar_loss` is the
autoregressive baseline (causal attention, next-token cross-entropy) on the same batches.

A preference batch (objective `vrpo`, `preference_loss`) instead holds `chosen`, `rejected
[batch, length] int32` (`[prompt, answer, pad...]` rows sharing the prompt) with `prompt_lengths`,
`chosen_lengths`, `rejected_lengths [batch] int32`.

An RL batch (objective `grpo`, `grpo_loss`) is a rollout: the sampler's completions with their
rewards, advantages and the old and reference log-probabilities (`train/rollout.py`).

iLLaDA's two-segment split cuts every chosen row once, splitting whichever segment (document) holds
the cut point; other segments are untouched.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from illada_jax.config.post_training import VrpoConfig
from illada_jax.config.schema import DiffusionConfig
from illada_jax.diffusion import blocks, grpo, losses, masking, preference
from illada_jax.model.masks import CAUSAL, AttentionPattern


def _random_length(batch: dict, length_key: jax.Array, cfg: DiffusionConfig):
    """The batch's (valid [B, L] bool | None, segment_ids, positions [B, L] int32 | None) after
    the configured random-length mode (docs/algorithms.md#random-length)."""
    batch_size, length = batch["tokens"].shape
    segment_ids, positions = batch.get("segment_ids"), batch.get("positions")
    # Segment id 0 marks padding: outside attention, masking and the loss normaliser.
    valid = None if segment_ids is None else segment_ids != 0
    if cfg.random_length_mode == "llada_truncate":
        truncated = masking.random_length_valid(
            length_key, batch_size, length, cfg.random_length_prob
        )
        valid = truncated if valid is None else valid & truncated
    elif cfg.random_length_mode == "illada_split":
        if segment_ids is None:
            segment_ids = jnp.ones((batch_size, length), jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch_size, length))
        segment_ids, positions = masking.two_segment_split(
            length_key, segment_ids, positions, cfg.two_segment_prob
        )
    return valid, segment_ids, positions


def noisy_hidden(model, noisy, tokens, positions, valid, segment_ids, block_size: int):
    """Final hidden states [B, L, d] of the noisy canvas `noisy [B, L]`: bidirectional over the
    whole sequence (block_size = L), else the noisy half of block diffusion's [x_t ; x] canvas.
    With `shifted_logits`, a block's first position reads the *clean* copy of the position
    before it (the committed token the sampler predicts it from), the others their noisy
    neighbour."""
    length = tokens.shape[1]
    if block_size >= length:
        return model.hidden_states(noisy, positions, key_mask=valid, segment_ids=segment_ids)
    canvas = blocks.noisy_clean_canvas(noisy, tokens, positions, valid, segment_ids)
    pattern = AttentionPattern("noisy_clean", block_size, length)
    hidden = model.hidden_states(*canvas, pattern=pattern)  # [B, 2L, d]
    if not model.cfg.shifted_logits:
        return hidden[:, :length]
    index = jnp.arange(length)
    block_start = ((index % block_size == 0) & (index > 0))[None, :, None]
    return jnp.where(block_start, hidden[:, length:], hidden[:, :length])


def _block_size(cfg: DiffusionConfig, length: int) -> int:
    return cfg.block_size if cfg.objective == "block_diffusion" else length


def diffusion_loss(
    model, batch: dict, key: jax.Array, cfg: DiffusionConfig
) -> tuple[jax.Array, dict]:
    """Sample t (one per row, or per block for block diffusion), mask, run the network, return
    (loss, metrics). `model` is a `Transformer`."""
    tokens = batch["tokens"]
    batch_size, length = tokens.shape
    block_size = _block_size(cfg, length)
    time_key, mask_key, length_key = jax.random.split(key, 3)
    times = blocks.block_times(time_key, batch_size, length // block_size, cfg.time_sampling)
    mask_prob = masking.mask_probability(times, cfg.mask_eps)  # [B, K]
    # [B] for one block (masked diffusion's shapes), else each token's block's: [B, L].
    one_block = block_size == length
    mask_prob = mask_prob[:, 0] if one_block else blocks.per_token(mask_prob, block_size)
    valid, segment_ids, positions = _random_length(batch, length_key, cfg)

    maskable = valid
    if model.cfg.shifted_logits:  # a first token has no previous position to be predicted from
        first = _segment_starts(segment_ids, batch_size, length)
        maskable = ~first if maskable is None else maskable & ~first
    if cfg.objective == "sft_llada":
        if "prompt_lengths" not in batch:
            raise ValueError("objective=sft_llada needs batch['prompt_lengths'] [batch] int32")
        is_answer = jnp.arange(length)[None, :] >= batch["prompt_lengths"][:, None]
        maskable = is_answer if maskable is None else maskable & is_answer

    noisy, is_masked = masking.apply_mask(
        mask_key, tokens, mask_prob, model.cfg.mask_token_id, maskable
    )
    hidden = noisy_hidden(model, noisy, tokens, positions, valid, segment_ids, block_size)
    ce = losses.token_cross_entropy(hidden, tokens, model.project, cfg.loss_chunk_size)
    if cfg.objective == "sft_llada":
        out = losses.sft_llada_loss(ce, is_masked, mask_prob, batch["prompt_lengths"])
    else:  # pretrain and sft_illada share the pre-training loss (docs/algorithms.md#sft-illada-style)
        out = losses.pretrain_loss(ce, is_masked, mask_prob, valid)
    metrics = {
        "loss": out.loss,
        "masked_ce": out.masked_ce,
        "num_masked": out.num_masked,
        "mask_prob": jnp.mean(mask_prob),
    }
    return out.loss, metrics


def _segment_starts(segment_ids, batch_size: int, length: int):
    """[B, L] bool: position 0 and every position whose segment differs from the previous."""
    starts = jnp.zeros((batch_size, length), bool).at[:, 0].set(True)
    if segment_ids is not None:
        starts = starts.at[:, 1:].set(segment_ids[:, 1:] != segment_ids[:, :-1])
    return starts


def _next_token_pairs(tokens, valid, segment_ids):
    """[B, L-1] bool: position i predicts token i+1 (both real, one segment)."""
    pairs = jnp.ones((tokens.shape[0], tokens.shape[1] - 1), bool)
    if valid is not None:
        pairs = valid[:, :-1] & valid[:, 1:]
    if segment_ids is not None:
        pairs = pairs & (segment_ids[:, :-1] == segment_ids[:, 1:])
    return pairs


def _next_token_ce(model, tokens, positions, valid, segment_ids, chunk_size: int):
    """(ce [B, L-1] of token i+1 from the causal prefix 0..i, the pairs that count [B, L-1]).
    With `shifted_logits` the hidden state of position i+1 is already position i's."""
    hidden = model.hidden_states(tokens, positions, key_mask=valid, segment_ids=segment_ids,
                                 pattern=CAUSAL)  # fmt: skip
    hidden = hidden[:, 1:] if model.cfg.shifted_logits else hidden[:, :-1]
    ce = losses.token_cross_entropy(hidden, tokens[:, 1:], model.project, chunk_size)
    return ce, _next_token_pairs(tokens, valid, segment_ids)


def ar_loss(model, batch: dict, key: jax.Array, cfg: DiffusionConfig) -> tuple[jax.Array, dict]:
    """The autoregressive baseline (docs/algorithms.md#the-autoregressive-baseline): causal
    attention, the mean next-token cross-entropy over the pairs inside a segment (the key only
    drives the random-length mode). Returns (loss, metrics) with the diffusion losses' keys:
    `masked_ce` is the loss itself, `num_masked` the number of predicted tokens."""
    valid, segment_ids, positions = _random_length(batch, jax.random.split(key, 3)[2], cfg)
    ce, pairs = _next_token_ce(model, batch["tokens"], positions, valid, segment_ids,
                               cfg.loss_chunk_size)  # fmt: skip
    num = jnp.sum(pairs, dtype=jnp.int32)
    loss = jnp.sum(jnp.where(pairs, ce, 0.0)) / jnp.maximum(num, 1)
    return loss, {"loss": loss, "masked_ce": loss, "num_masked": num}


def ar_nll(model, batch: dict, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Held-out autoregressive NLL: (Σ next-token CE in nats, number of predicted tokens); the
    first token of each segment has no prefix and is not scored. `key` is unused (the NLL is
    exact), kept for the eval step's signature."""
    del key
    tokens, segment_ids = batch["tokens"], batch.get("segment_ids")
    valid = None if segment_ids is None else segment_ids != 0
    ce, pairs = _next_token_ce(model, tokens, batch.get("positions"), valid, segment_ids, 512)
    return jnp.sum(jnp.where(pairs, ce, 0.0)), jnp.sum(pairs)


def elbo_bound(model, batch: dict, key: jax.Array,
               block_size: int | None = None) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """Held-out negative ELBO (an upper bound on the NLL), summed over the batch.

    Uses the `l`-form (exactly l of n real tokens masked, weight n/l) with the caller's fixed key,
    so numbers are comparable across runs and checkpoints; with `block_size` (block diffusion)
    the l-form inside every block, each block given the clean blocks before it. Returns (sum of
    the bound in nats, number of real tokens); their ratio is nats per token.
    """
    tokens = batch["tokens"]
    block_size = block_size or tokens.shape[1]
    segment_ids, positions = batch.get("segment_ids"), batch.get("positions")
    valid = None if segment_ids is None else segment_ids != 0
    noisy, is_masked, weight = blocks.mask_exact_count_per_block(
        key, tokens, model.cfg.mask_token_id, block_size, valid
    )
    hidden = noisy_hidden(model, noisy, tokens, positions, valid, segment_ids, block_size)
    ce = losses.token_cross_entropy(hidden, tokens, model.project, chunk_size=512)
    n_tokens = tokens.size if valid is None else jnp.sum(valid)
    return jnp.sum(jnp.where(is_masked, ce * weight, 0.0)), n_tokens


def heldout_nll(model, batch: dict, key: jax.Array,
                cfg: DiffusionConfig) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """The objective's held-out measure, (Σ nats, tokens scored): the exact next-token NLL for
    objective=ar, else the negative ELBO bound (inside blocks for block diffusion)."""
    if cfg.objective == "ar":
        return ar_nll(model, batch, key)
    return elbo_bound(model, batch, key, _block_size(cfg, batch["tokens"].shape[1]))


def heldout_name(objective: str) -> str:
    """The record key of `heldout_nll`'s ratio: `eval_ar_nll` (exact) or `eval_nll_bound`."""
    return "eval_ar_nll" if objective == "ar" else "eval_nll_bound"


PREFERENCE_SIDES = ("chosen", "rejected")


def _answer_elbo(model, tokens, draws: preference.AnswerDraws, chunk_size: int):
    """(the ELBO estimate `B [rows]` of each row's answer under `model` from its draws, the sum
    of the cross-entropy over the masked tokens: a scalar)."""
    rows, samples, length = draws.noisy.shape
    flat = lambda x: x.reshape(rows * samples, length)  # noqa: E731
    key_mask = flat(jnp.broadcast_to(draws.key_mask[:, None, :], draws.noisy.shape))
    targets = flat(jnp.broadcast_to(tokens[:, None, :], draws.noisy.shape))
    hidden = model.hidden_states(flat(draws.noisy), key_mask=key_mask)
    ce = losses.token_cross_entropy(hidden, targets, model.project, chunk_size)
    ce = ce.reshape(rows, samples, length)
    masked_sum = jnp.sum(jnp.where(draws.masked, ce, 0.0))
    return preference.elbo_from_cross_entropy(ce, draws), masked_sum


def preference_elbos(policy, reference, batch: dict, key: jax.Array, cfg: VrpoConfig,
                     chunk_size: int) -> dict:  # fmt: skip
    """{side: (B_policy [P], B_reference [P], Σ policy CE over masked tokens, policy draws)}
    for side in chosen, rejected (docs/algorithms.md#preference-optimisation-vrpo). With
    `cfg.antithetic` the reference scores the policy's very draws; the reference's ELBOs carry
    no gradient."""
    mask_id = policy.cfg.mask_token_id
    out = {}
    for index, side in enumerate(PREFERENCE_SIDES):
        side_key = jax.random.fold_in(key, index)
        tokens, lengths = batch[side], batch[f"{side}_lengths"]

        def draw(k, tokens=tokens, lengths=lengths):
            return preference.answer_draws(k, tokens, batch["prompt_lengths"], lengths, mask_id,
                                           cfg.samples, cfg.stratified)  # fmt: skip

        draws = draw(side_key)
        reference_draws = draws if cfg.antithetic else draw(jax.random.fold_in(side_key, 1))
        policy_elbo, masked_ce_sum = _answer_elbo(policy, tokens, draws, chunk_size)
        reference_elbo = jax.lax.stop_gradient(
            _answer_elbo(reference, tokens, reference_draws, chunk_size)[0]
        )
        out[side] = (policy_elbo, reference_elbo, masked_ce_sum, draws)
    return out


def preference_loss(policy, reference, batch: dict, key: jax.Array, cfg: VrpoConfig,
                    chunk_size: int) -> tuple[jax.Array, dict]:  # fmt: skip
    """VRPO: DPO's loss with ELBO estimates (docs/algorithms.md#preference-optimisation-vrpo).
    Returns (loss, metrics): the reward margin β·margin, preference accuracy (margin > 0) and
    the chosen answers' drift B_θ - B_ref (nats per answer) are means over the pairs;
    `masked_ce` (the spike test's input) is the policy's mean CE over its masked tokens."""
    elbos = preference_elbos(policy, reference, batch, key, cfg, chunk_size)
    (policy_w, reference_w, ce_w, draws_w), (policy_l, reference_l, ce_l, draws_l) = (
        elbos[side] for side in PREFERENCE_SIDES
    )
    out = preference.dpo_loss(policy_w, reference_w, policy_l, reference_l, cfg.beta)
    num_masked = jnp.sum(draws_w.masked, dtype=jnp.int32) + jnp.sum(draws_l.masked, dtype=jnp.int32)
    masked_ce = (ce_w + ce_l) / jnp.maximum(num_masked, 1)
    metrics = {
        "loss": out.loss,
        "masked_ce": masked_ce,
        "num_masked": num_masked,
        "reward_margin": cfg.beta * jnp.mean(out.margin),
        "pref_accuracy": jnp.mean((out.margin > 0).astype(jnp.float32)),
        "chosen_drift": jnp.mean(out.chosen_drift),
        "rejected_drift": jnp.mean(out.rejected_drift),
    }
    return out.loss, metrics


def preference_eval(policy, reference, batch: dict, key: jax.Array, cfg: VrpoConfig,
                    chunk_size: int) -> dict:  # fmt: skip
    """Held-out preference sums over the batch, with the caller's fixed key: `right`, pairs
    whose margin is positive (a tie, as when the policy is still the reference, counts half);
    `margin`, Σ β·margin; `likelihood_right`, pairs whose chosen answer has the higher ELBO
    under the policy itself (the model's own preference, reference aside); `pairs`."""
    elbos = preference_elbos(policy, reference, batch, key, cfg, chunk_size)
    (policy_w, reference_w, *_), (policy_l, reference_l, *_) = (
        elbos[side] for side in PREFERENCE_SIDES
    )
    margin = (policy_w - reference_w) - (policy_l - reference_l)
    right = jnp.sum(margin > 0) + 0.5 * jnp.sum(margin == 0)
    return {"right": right, "margin": cfg.beta * jnp.sum(margin),
            "likelihood_right": jnp.sum(policy_w > policy_l), "pairs": margin.shape[0]}  # fmt: skip


def completion_log_probs(model, rows: dict, hidden_prompt, gen_length: int,
                         chunk_size: int) -> jax.Array:  # fmt: skip
    """log π(o_k | q', all-mask) [R, W] from one forward (docs/algorithms.md#reinforcement-
    learning-diffu-grpo): `grpo.log_prob_input` of a rollout's `tokens`, `prompt_mask [R, W]`
    with the prompt tokens in `hidden_prompt [R, W]` hidden."""
    noisy, key_mask = grpo.log_prob_input(rows["tokens"], rows["prompt_mask"], hidden_prompt,
                                          gen_length, model.cfg.mask_token_id)  # fmt: skip
    hidden = model.hidden_states(noisy, key_mask=key_mask)
    return -losses.token_cross_entropy(hidden, rows["tokens"], model.project, chunk_size)


def grpo_loss(model, rows: dict, inner: jax.Array, cfg, chunk_size: int
              ) -> tuple[jax.Array, dict]:  # fmt: skip
    """diffu-GRPO's clipped policy loss with the k3 KL (docs/algorithms.md#reinforcement-
    learning-diffu-grpo) at inner update `inner` (0..μ-1) of a rollout. `rows`: the rollout
    (`train/rollout.py`): `tokens`, `prompt_mask`, `completion [R, W]`; `hidden_prompt`,
    `old_log_probs`, `ref_log_probs [R, μ, W]`; `advantages`, `rewards [R]`. `cfg`: GrpoConfig.
    `masked_ce` (the spike test's input) is the policy's mean CE over the completion tokens."""
    pick = lambda x: jnp.take(x, inner, axis=1)  # noqa: E731
    log_probs = completion_log_probs(model, rows, pick(rows["hidden_prompt"]), cfg.gen_length,
                                     chunk_size)  # fmt: skip
    completion = rows["completion"]
    out = grpo.policy_loss(log_probs, pick(rows["old_log_probs"]), pick(rows["ref_log_probs"]),
                           rows["advantages"], completion, clip_eps=cfg.clip_eps,
                           beta=cfg.beta)  # fmt: skip
    num_tokens = jnp.sum(completion, dtype=jnp.int32)
    ce_sum = -jnp.sum(jnp.where(completion, log_probs, 0.0))
    metrics = {
        "loss": out.loss,
        "masked_ce": ce_sum / jnp.maximum(num_tokens, 1),
        "num_masked": num_tokens,
        "kl": out.kl,
        "clip_fraction": out.clipped,
        "ratio": out.ratio,
        "reward_mean": jnp.mean(rows["rewards"]),
        "completion_tokens": jnp.mean(jnp.sum(completion, axis=1).astype(jnp.float32)),
    }
    return out.loss, metrics
