"""Generation for models trained block-causally: block diffusion and the autoregressive baseline
(docs/algorithms.md#sampling-a-block-diffusion-model).

Block diffusion (`generate_blocks`). The canvas `[batch, T]` holds the left-padded prompt (width
P) and then mask tokens; its blocks are the training grid, `block_size` positions each from
canvas index 0, so the prompt's last block may be partly prompt and partly to generate (its prompt
tokens stay fixed, as unmasked tokens of a noisy block did in training). Blocks before it are
clean prompt blocks: one forward under the block-causal pattern computes their K/V once (the
prefill). Then each block is decoded with any masked-diffusion sampler inside it (`steps` per
block, low-confidence or random remasking, temperature, a confidence threshold): every step runs
only the block's positions against the cache of the committed blocks; when the block has no
masks left, one more forward of the now clean block writes its K/V into the cache. That K/V is
exactly what training conditioned on (a clean block attends to the clean blocks up to its own),
so the cache is no approximation: `cached=False` recomputes every step over the whole canvas
under the block-causal pattern and gives the same tokens. Generation stops at the first stop id
(EOS / EoT) or stop string of every row, so its length is not fixed in advance; `gen_length`
only bounds it.

Autoregressive (`generate_ar`): causal attention, one token per forward from a K/V cache,
greedy or at a temperature, in chunks of `block_length` tokens between stop checks.

Both compile one program per (batch, canvas width): the block index is traced, and blocks not
yet reached are hidden from attention by the key mask.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from illada_jax.model.masks import CAUSAL, AttentionPattern
from illada_jax.sampling import schedule
from illada_jax.sampling.generate import (
    SamplingOptions,
    SpecialIds,
    VariableResult,
    _as_prompt,
    _commit,
    first_stop,
)
from illada_jax.sampling.schedule import SamplingError


@dataclasses.dataclass(frozen=True)
class Decoding:
    """How a model generates, from the objective it was trained with: `diffusion` (the masked-
    diffusion samplers of `sampling/generate.py`), `block_diffusion` (blocks of `block_size`,
    `generate_blocks`) or `ar` (`generate_ar`)."""

    kind: str = "diffusion"
    block_size: int = 0

    @classmethod
    def of(cls, experiment) -> Decoding:
        """The decoding of a run's `Experiment` (None: a bare model, masked diffusion)."""
        if experiment is None:
            return cls()
        diffusion = experiment.diffusion
        if diffusion.objective == "ar":
            return cls("ar")
        blocks = diffusion.block_size < experiment.train.seq_len  # one block: masked diffusion
        if diffusion.objective == "block_diffusion" and blocks:
            return cls("block_diffusion", diffusion.block_size)
        return cls()


def _canvas(prompt, prompt_mask, width: int, mask_id: int):
    """[B, P] prompt -> (canvas [B, width]: prompt then masks, key_mask [B, width])."""
    batch, prompt_len = prompt.shape
    fill = jnp.full((batch, width - prompt_len), mask_id, prompt.dtype)
    key_mask = jnp.concatenate([prompt_mask, jnp.ones(fill.shape, bool)], axis=1)
    return jnp.concatenate([prompt, fill], axis=1), key_mask


def _opened(key_mask, end):
    """The key mask with every position from `end` (traced) on hidden: blocks not yet reached."""
    return key_mask & (jnp.arange(key_mask.shape[1]) < end)[None, :]


# --------------------------------------------------------------------------- block diffusion


@functools.partial(jax.jit, static_argnums=(0, 1))
def _prefill(graphdef, block_size: int, params, x, key_mask, first_block):
    """K/V of every layer over the canvas under the block-causal pattern, the prompt's complete
    blocks (before `first_block`) visible: theirs are final, the rest is overwritten later."""
    model = nnx.merge(graphdef, params)
    visible = _opened(key_mask, first_block * block_size)
    pattern = AttentionPattern("block_causal", block_size)
    return model.hidden_with_kv(x, key_mask=visible, pattern=pattern)[1]


def _block_logits(model, x, key_mask, kv, start, block_size: int):
    """Logits [B, block_size, V] of the block at `start`: its positions against the cache (kv)
    or, with kv None, the whole canvas recomputed under the block-causal pattern. A
    `shifted_logits` model predicts position i from the hidden state of i-1: its cached window
    starts one position early, on the committed (cached) token before the block."""
    visible = _opened(key_mask, start + block_size)
    if kv is None:
        pattern = AttentionPattern("block_causal", block_size)
        hidden = model.hidden_states(x, key_mask=visible, pattern=pattern)
        return model.project(jax.lax.dynamic_slice_in_dim(hidden, start, block_size, axis=1))
    if not model.cfg.shifted_logits:
        window = jax.lax.dynamic_slice_in_dim(x, start, block_size, axis=1)
        hidden, _ = model.hidden_cached(window, start, kv, start, key_mask=visible,
                                        return_kv=False)  # fmt: skip
        return model.project(hidden)
    width = min(block_size + 1, x.shape[1])
    first = jnp.clip(start - 1, 0, x.shape[1] - width)  # the window's first canvas position
    window = jax.lax.dynamic_slice_in_dim(x, first, width, axis=1)
    # Block-causal per query: the committed position before the block does not see the block.
    pattern = AttentionPattern("block_causal", block_size)
    hidden, _ = model.hidden_cached(window, first, kv, start, key_mask=visible, return_kv=False,
                                    pattern=pattern)  # fmt: skip
    rows = jnp.maximum(start + jnp.arange(block_size) - 1, 0) - first  # position i: row of i-1
    return model.project(jnp.take(hidden, rows, axis=1))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _decode_block(graphdef, opts: SamplingOptions, ids: SpecialIds, params, x, key_mask, kv,
                  key, block):  # fmt: skip
    """Decode block `block` (traced) of x [B, T] until it has no masks; then, with a cache,
    write the clean block's K/V. Returns (x, kv, key)."""
    model = nnx.merge(graphdef, params)
    size = opts.block_length
    start = block * size

    def logits(x):
        return _block_logits(model, x, key_mask, kv, start, size)

    def masked_left(x):
        return (jax.lax.dynamic_slice_in_dim(x, start, size, axis=1) == ids.mask).any()

    if opts.threshold is None:
        counts = jnp.asarray(schedule.transfer_schedule(size, opts.steps))

        def step(j, carry):
            x, key = carry
            key, sub = jax.random.split(key)
            return _commit(opts, ids, x, logits(x), sub, start, 0, counts[j])[0], key

        x, key = jax.lax.fori_loop(0, opts.steps, step, (x, key))
    else:  # Fast-dLLM's parallel decoding: each pass commits >= 1 token per row

        def body(carry):
            x, key = carry
            key, sub = jax.random.split(key)
            return _commit(opts, ids, x, logits(x), sub, start, 0, 0)[0], key

        x, key = jax.lax.while_loop(lambda c: masked_left(c[0]), body, (x, key))
    if kv is not None:  # the clean block's K/V, as training computed it
        window = jax.lax.dynamic_slice_in_dim(x, start, size, axis=1)
        visible = _opened(key_mask, start + size)
        _, kv = model.hidden_cached(window, start, kv, start, key_mask=visible)
    return x, kv, key


def canvas_width(prompt_len: int, gen_length: int, max_seq_len: int, block_size: int) -> int:
    """The canvas: prompt + up to `gen_length` tokens, ending on a block boundary, within
    `max_seq_len`; a one-line SamplingError when not one token fits."""
    width = min(prompt_len + gen_length, max_seq_len) // block_size * block_size
    if width <= prompt_len:
        raise SamplingError(
            f"no room to generate: prompt of {prompt_len} tokens, max_seq_len={max_seq_len}, "
            f"gen_length={gen_length}, blocks of {block_size} (the canvas ends on a block "
            "boundary); shorten the prompt or raise gen_length"
        )
    return width


class _Stops:
    """Per-row stop detection over the generated region, checked after every block/chunk."""

    def __init__(self, batch: int, prompt_len: int, stop_ids, stop_fn):
        self.cuts: list[int | None] = [None] * batch
        self.prompt_len, self.stop_ids, self.stop_fn = prompt_len, tuple(stop_ids), stop_fn

    def update(self, canvas: np.ndarray, end: int) -> bool:
        """Record each row's first stop in canvas[:, P:end]; True once every row has one."""
        for row, cut in enumerate(self.cuts):
            if cut is None:
                generated = canvas[row, self.prompt_len : end]
                found = [c for c in (first_stop(generated, self.stop_ids),
                                     self.stop_fn(generated) if self.stop_fn else None)
                         if c is not None]  # fmt: skip
                self.cuts[row] = min(found) if found else None
        return all(c is not None for c in self.cuts)

    def result(self, canvas: np.ndarray, end: int) -> VariableResult:
        lengths = [end - self.prompt_len if c is None else c for c in self.cuts]
        return VariableResult(ids=canvas[:, :end], lengths=np.array(lengths, np.int32),
                              prompt_length=self.prompt_len)  # fmt: skip


def generate_blocks(graphdef, params, ids: SpecialIds, prompt_ids, opts: SamplingOptions, *,
                    block_size: int, max_seq_len: int, prompt_mask=None,
                    stop_ids: Sequence[int] = (), stop_fn: Callable | None = None, seed: int = 0,
                    cached: bool = True) -> VariableResult:  # fmt: skip
    """Block-diffusion generation (module doc). `opts.steps` is per block and `opts.gen_length`
    the most tokens to generate; `opts.block_length` is replaced by the model's `block_size`.
    prompt_ids: int [B, P] left-padded (prompt_mask bool [B, P]). Returns the canvas as far as
    it was decoded with each row's generated length (up to its first stop)."""
    if opts.cfg_scale or opts.cache != "none" or opts.think_ids:
        raise SamplingError("block-diffusion sampling has its own exact cache and takes no "
                            "cfg_scale, cache or think_ids: remove them")  # fmt: skip
    opts = dataclasses.replace(opts, block_length=block_size)
    schedule.transfer_schedule(block_size, opts.steps)  # validates steps
    prompt, mask = _as_prompt(prompt_ids, prompt_mask)
    prompt_len = prompt.shape[1]
    width = canvas_width(prompt_len, opts.gen_length, max_seq_len, block_size)
    x, key_mask = _canvas(prompt, mask, width, ids.mask)
    first = prompt_len // block_size
    kv = _prefill(graphdef, block_size, params, x, key_mask, first) if cached else None
    key, stops = jax.random.key(seed), _Stops(prompt.shape[0], prompt_len, stop_ids, stop_fn)
    end = prompt_len
    for block in range(first, width // block_size):
        x, kv, key = _decode_block(graphdef, opts, ids, params, x, key_mask, kv, key,
                                   jnp.int32(block))  # fmt: skip
        end = (block + 1) * block_size
        if stops.update(np.asarray(x), end):
            break
    return stops.result(np.asarray(x), end)


# --------------------------------------------------------------------------- autoregressive


def _next_token(opts: SamplingOptions, ids: SpecialIds, logits, key):
    """One token per row from logits [B, V] (the mask id never drawn)."""
    logits = jnp.where(jnp.arange(logits.shape[-1]) == ids.mask, -jnp.inf, logits)
    return schedule.sample_candidates(logits, key, opts.temperature, opts.noise)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _ar_prefill(graphdef, params, x, key_mask, prompt_len: int):
    """(K/V of the canvas under causal attention, the logits [B, V] of the first position after
    the prompt: the last prompt position's hidden state, at P - 1, or at P when shifted)."""
    model = nnx.merge(graphdef, params)
    hidden, kv = model.hidden_with_kv(x, key_mask=_opened(key_mask, prompt_len), pattern=CAUSAL)
    return kv, model.project(hidden[:, prompt_len if model.cfg.shifted_logits else prompt_len - 1])


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _ar_chunk(graphdef, opts: SamplingOptions, ids: SpecialIds, params, x, key_mask, kv, logits,
              key, start):  # fmt: skip
    """Generate positions start..start+block_length-1 (start traced), one forward each."""
    model = nnx.merge(graphdef, params)

    def step(j, carry):
        x, kv, logits, key = carry
        key, sub = jax.random.split(key)
        position = start + j
        token = _next_token(opts, ids, logits, sub)
        x = jax.lax.dynamic_update_slice_in_dim(x, token[:, None].astype(x.dtype), position, 1)
        window = jax.lax.dynamic_slice_in_dim(x, position, 1, axis=1)
        visible = _opened(key_mask, position + 1)
        hidden, kv = model.hidden_cached(window, position, kv, position, key_mask=visible)
        return x, kv, model.project(hidden[:, 0]), key

    return jax.lax.fori_loop(0, opts.block_length, step, (x, kv, logits, key))


def generate_ar(graphdef, params, ids: SpecialIds, prompt_ids, opts: SamplingOptions, *,
                max_seq_len: int, prompt_mask=None, stop_ids: Sequence[int] = (),
                stop_fn: Callable | None = None, seed: int = 0) -> VariableResult:  # fmt: skip
    """Autoregressive generation from a model trained with objective=ar: up to `opts.gen_length`
    tokens, greedy (temperature 0) or sampled, stop checks every `opts.block_length` tokens."""
    prompt, mask = _as_prompt(prompt_ids, prompt_mask)
    prompt_len = prompt.shape[1]
    chunk = opts.block_length
    width = prompt_len + (min(opts.gen_length, max_seq_len - prompt_len) // chunk) * chunk
    if width <= prompt_len:
        raise SamplingError(f"no room to generate: prompt of {prompt_len} tokens, max_seq_len="
                            f"{max_seq_len}, chunks of {chunk}; shorten the prompt")  # fmt: skip
    x, key_mask = _canvas(prompt, mask, width, ids.mask)
    kv, logits = _ar_prefill(graphdef, params, x, key_mask, prompt_len)
    key, stops = jax.random.key(seed), _Stops(prompt.shape[0], prompt_len, stop_ids, stop_fn)
    end = prompt_len
    for start in range(prompt_len, width, chunk):
        x, kv, logits, key = _ar_chunk(graphdef, opts, ids, params, x, key_mask, kv, logits, key,
                                       jnp.int32(start))  # fmt: skip
        end = start + chunk
        if stops.update(np.asarray(x), end):
            break
    return stops.result(np.asarray(x), end)
