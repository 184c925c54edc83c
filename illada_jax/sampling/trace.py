"""The reverse process, recorded: which token was committed at which step, and how confident the
sampler was (for figures of a sample being unmasked, and for teaching).

`trace_fixed` replays the fixed-canvas sampler of `generate.py` (docs/algorithms.md#sampling) one
step at a time from the host with the same per-step rule (`generate._commit`) and the same key
sequence, so its final canvas equals `generate(...)` for the same options and seed (tested). It runs
the whole canvas every step (no Fast-dLLM cache: a cache changes the logits, and the trace is meant
to show the exact process); threshold decoding and CFG are supported. One jitted step program per
(batch, length, options); the host loop costs one dispatch per step, fine for figures.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from illada_jax.sampling import schedule
from illada_jax.sampling.generate import (
    SamplingOptions,
    SpecialIds,
    _as_prompt,
    _canvas,
    _commit,
    _full_logits,
    _visible_keys,
    _with_precision,
)
from illada_jax.sampling.schedule import SamplingError


@dataclasses.dataclass
class GenerationTrace:
    """The recorded reverse process of a batch.

    ids: int32 [B, P + G], the final canvas (equal to `generate`'s output).
    canvases: int32 [S + 1, B, P + G], the canvas before the first step and after each of the S
      steps (mask ids where still masked).
    commit_step: int32 [B, P + G], the step (0-based, over the whole generation) at which each
      position was committed; -1 for prompt positions.
    confidence: float32 [B, P + G], the score the sampler ranked the committed token by (its
      probability under `low_confidence` remasking, a uniform draw under `random`); NaN for
      prompt positions.
    prompt_length: P (the left-padded prompt width).
    block_length: K; block b covers positions P + b·K ... P + (b + 1)·K - 1.
    mask_id: the mask token id (what the canvases hold where nothing is committed yet).
    """

    ids: np.ndarray
    canvases: np.ndarray
    commit_step: np.ndarray
    confidence: np.ndarray
    prompt_length: int
    block_length: int
    mask_id: int

    @property
    def num_steps(self) -> int:
        return self.canvases.shape[0] - 1


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _trace_step(graphdef, opts: SamplingOptions, ids: SpecialIds, params, x, key_mask,
                prompt_index, key, start, count):  # fmt: skip
    """One sampler step on the block at `start` (traced): (new canvas [B, L], confidences
    [B, K]). `count` < 0 means threshold decoding."""
    model = nnx.merge(graphdef, params)
    visible_run = _visible_keys(opts, key_mask, start, variable=False)
    logits, _ = _full_logits(model, opts, ids, x, visible_run, prompt_index, start)
    prompt_len = x.shape[1] - opts.gen_length
    return _commit(opts, ids, x, logits, key, start, prompt_len, count)


def trace_fixed(graphdef, params, ids: SpecialIds, prompt_ids, opts: SamplingOptions, *,
                prompt_mask=None, seed: int = 0) -> GenerationTrace:  # fmt: skip
    """Fixed-canvas generation (as `generate.generate`), recording every step.

    prompt_ids: int [B, P] left-padded; prompt_mask: bool [B, P] (default all real).
    """
    if opts.cache != "none":
        raise SamplingError(
            f"cache={opts.cache!r}: the trace records the exact process; use cache='none'"
        )
    num_blocks, steps_per_block = opts.fixed_plan()
    prompt, mask = _as_prompt(prompt_ids, prompt_mask)
    prompt_len, k_len = prompt.shape[1], opts.block_length
    x, key_mask, prompt_index = _canvas(prompt, mask, opts.gen_length, ids.mask)
    counts = schedule.transfer_schedule(k_len, steps_per_block)

    def step(x, key, start, count):
        return _with_precision(opts, _trace_step, graphdef, opts, ids, params, x, key_mask,
                               prompt_index, key, jnp.int32(start), jnp.int32(count))  # fmt: skip

    canvases = [np.asarray(x)]
    commit_step = np.full(x.shape, -1, np.int32)
    confidence = np.full(x.shape, np.nan, np.float32)
    key = jax.random.key(seed)
    for block in range(num_blocks):
        start = prompt_len + block * k_len
        # The same key sequence as `generate._decode_block`: one split per step, carried across
        # blocks. Threshold decoding: until the block is full, at most K passes.
        passes = 0
        while True:
            count = counts[passes] if opts.threshold is None else 0
            key, sub = jax.random.split(key)
            new_x, conf = step(x, sub, start, count)
            new_x, conf = np.asarray(new_x), np.asarray(conf)
            committed = new_x != canvases[-1]
            commit_step[committed] = len(canvases) - 1
            block_conf = confidence[:, start : start + k_len]
            block_conf[committed[:, start : start + k_len]] = conf[
                committed[:, start : start + k_len]
            ]
            canvases.append(new_x)
            x = jnp.asarray(new_x)
            passes += 1
            block_tokens = new_x[:, start : start + k_len]
            if opts.threshold is None:
                if passes == len(counts):
                    break
            elif not (block_tokens == ids.mask).any() or passes >= k_len:
                break
    return GenerationTrace(
        ids=canvases[-1],
        canvases=np.stack(canvases),
        commit_step=commit_step,
        confidence=confidence,
        prompt_length=prompt_len,
        block_length=k_len,
        mask_id=ids.mask,
    )
