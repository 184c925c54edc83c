"""Generation from a masked-diffusion LM: fixed canvas, semi-autoregressive blocks,
variable length, the `</think>` boost, Fast-dLLM caches and parallel decoding
(docs/algorithms.md#sampling and the sections after it).

The canvas is `[batch, P + G]`: a left-padded prompt (`prompt_mask` marks real prompt tokens,
`key_mask` every real position) followed by G mask tokens. Blocks of K positions are decoded left
to right; inside a block each step runs the model, draws a candidate for every position, and
commits the most confident masked ones of the block (`schedule.py`). A committed token is never
changed again.

- Fixed canvas: one jitted program, `lax.fori_loop` over blocks and steps; shapes depend only on
  (batch, P, G), so prompts padded to the same bucket never recompile.
- Variable length: the same block program with the block index traced, called once per block
  from the host, which checks the stop ids / stop strings after each block. The canvas is
  preallocated at P + G and blocks not yet opened are hidden from attention by the key mask
  (exactly as if absent, docs/algorithms.md#sampling), so the length never recompiles.
- Caches (`cache="prefix" | "dual"`): the block's first step runs the whole canvas and keeps every
  layer's K/V; later steps run only a window (the generated region for `prefix`, the block for
  `dual`) against that cache. Approximate by design
  (docs/algorithms.md#caches-and-parallel-decoding).
- `threshold`: commit the most confident masked token plus all with confidence >= threshold,
  until the block is full (the per-step schedule is then unused).

The mask token's logit is always -inf when drawing candidates (a model predicts clean tokens).
Special ids (mask, EOS, EoT) come from `SpecialIds`, built from the model config, never constants.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from illada_jax.sampling import schedule
from illada_jax.sampling.schedule import SamplingError

CACHES = ("none", "prefix", "dual")


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    mask: int
    eos: int
    eot: int | None = None

    @classmethod
    def from_config(cls, cfg) -> SpecialIds:
        return cls(mask=cfg.mask_token_id, eos=cfg.eos_token_id, eot=cfg.eot_token_id)


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """Everything that shapes one generation program (hashable: it is a jit static argument).

    gen_length G, total `steps` N and `block_length` K as in docs/algorithms.md#sampling (for
    variable length, `steps` is per block, as in docs/algorithms.md#variable-length-decoding).
    `think_ids`/`think_boost`/`think_power`: the `</think>` boost of
    docs/algorithms.md#the-think-boost (off when `think_ids` is empty or the boost is 0).
    """

    gen_length: int = 128
    steps: int = 128
    block_length: int = 128
    temperature: float = 0.0
    remasking: str = "low_confidence"
    cfg_scale: float = 0.0
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    threshold: float | None = None
    cache: str = "none"
    noise: str = "fp32_hires"
    think_ids: tuple[int, ...] = ()
    think_boost: float = 0.0
    think_power: float = 3.0

    def __post_init__(self):
        if self.remasking not in schedule.REMASKING:
            raise SamplingError(f"remasking={self.remasking!r}: choose one of {schedule.REMASKING}")
        if self.cache not in CACHES:
            raise SamplingError(f"cache={self.cache!r}: choose one of {CACHES}")
        if self.noise not in schedule.NOISE:
            raise SamplingError(f"noise={self.noise!r}: choose one of {schedule.NOISE}")
        if self.temperature < 0:
            raise SamplingError(f"temperature={self.temperature} must be >= 0")
        if self.cfg_scale < 0:
            raise SamplingError(f"cfg_scale={self.cfg_scale} must be >= 0 (0 disables CFG)")
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise SamplingError(f"threshold={self.threshold} must be in (0, 1] (or None)")
        object.__setattr__(self, "think_ids", tuple(int(t) for t in self.think_ids))

    def fixed_plan(self) -> tuple[int, int]:
        return schedule.block_plan(self.gen_length, self.block_length, self.steps)


# --------------------------------------------------------------------------- one decoding step


def _guided(opts: SamplingOptions, run, tokens, uncond_tokens):
    """Model logits with unsupervised CFG (docs/algorithms.md#classifier-free-guidance): `run` takes
    a [2B, ...] batch when CFG is on (conditional rows first). Returns (logits [B, ...], run's
    second output)."""
    if opts.cfg_scale == 0.0:
        return run(tokens)
    logits, extra = run(jnp.concatenate([tokens, uncond_tokens], axis=0))
    cond, uncond = jnp.split(logits, 2, axis=0)
    return uncond + (opts.cfg_scale + 1.0) * (cond - uncond), extra


def _think_boost(opts: SamplingOptions, x, logits_blk, masked_blk, start, prompt_len):
    """Add B·progress^p to the next `</think>` token at the block's first masked slot
    (docs/algorithms.md#the-think-boost).

    x: [B, L]; logits_blk: [B, K, V]; masked_blk: [B, K]; start: block start (traced).
    """
    ids = opts.think_ids
    m, gen_length = len(ids), opts.gen_length
    batch, length = x.shape
    gen = x[:, prompt_len:]
    # Is the whole sequence E already present in the generated part?
    span = gen.shape[1] - m + 1
    present = jnp.zeros((batch,), bool)
    if span > 0:
        hit = jnp.ones((batch, span), bool)
        for j, token in enumerate(ids):
            hit &= gen[:, j : j + span] == token
        present = hit.any(axis=1)
    has_mask = masked_blk.any(axis=1)
    offset = jnp.argmax(masked_blk, axis=1)  # first masked slot of the block
    pos = start + offset  # absolute canvas position
    # Longest prefix E[:j] (j < m) ending right before `pos` decides the next token E[j].
    target = jnp.full((batch,), ids[0], jnp.int32)
    matched = jnp.zeros((batch,), bool)
    for j in range(m - 1, 0, -1):
        ok = pos - j >= 0
        for i in range(j):
            idx = jnp.clip(pos - j + i, 0, length - 1)
            ok &= jnp.take_along_axis(x, idx[:, None], axis=1)[:, 0] == ids[i]
        target = jnp.where(ok & ~matched, ids[j], target)
        matched |= ok
    progress = jnp.clip((pos - prompt_len + 1) / gen_length, 0.0, 1.0)
    boost = opts.think_boost * progress**opts.think_power
    boost = jnp.where(has_mask & ~present, boost, 0.0).astype(logits_blk.dtype)
    rows = jnp.arange(batch)
    return logits_blk.at[rows, offset, target].add(boost)


def _commit(opts, ids: SpecialIds, x, logits_blk, key, start, prompt_len, count):
    """One step on the block at `start`: draw candidates, score them, commit `count` of them
    (or, with a threshold, the confident ones). x: [B, L]; logits_blk: [B, K, V] fp32.

    Returns (x [B, L] with the committed tokens, the candidates' confidences [B, K])."""
    k_len = opts.block_length
    x_blk = jax.lax.dynamic_slice_in_dim(x, start, k_len, axis=1)
    masked = x_blk == ids.mask
    # The model's distribution over clean tokens excludes the mask token (MDLM's "zero masking
    # probabilities"); the reference leaves it in, and an untrained model can then "commit" a mask.
    vocab = jnp.arange(logits_blk.shape[-1])
    banned = vocab == ids.mask
    if opts.logits_eos_inf:
        banned |= vocab == ids.eos
    logits_blk = jnp.where(banned, -jnp.inf, logits_blk)  # elementwise: fuses into the readers
    if opts.think_ids and opts.think_boost:
        logits_blk = _think_boost(opts, x, logits_blk, masked, start, prompt_len)
    noise_key, conf_key = jax.random.split(key)
    x0 = schedule.sample_candidates(logits_blk, noise_key, opts.temperature, opts.noise)
    suppressed = ()
    if opts.confidence_eos_eot_inf:
        suppressed = tuple(t for t in (ids.eos, ids.eot) if t is not None)
    conf = schedule.confidences(logits_blk, x0, conf_key, opts.remasking, suppressed)
    if opts.threshold is None:
        chosen = schedule.select_top_k(conf, masked, count)
    else:
        chosen = schedule.select_threshold(conf, masked, opts.threshold)
    x = jax.lax.dynamic_update_slice_in_dim(x, jnp.where(chosen, x0, x_blk), start, axis=1)
    return x, conf


def _visible_keys(opts: SamplingOptions, key_mask, start, variable: bool):
    """The key mask of one model run [B or 2B (CFG), L] while decoding the block at `start`."""
    visible = key_mask
    if variable:  # blocks not yet opened are invisible, as if absent
        length = key_mask.shape[1]
        visible = key_mask & (jnp.arange(length) < start + opts.block_length)[None, :]
    return jnp.concatenate([visible, visible]) if opts.cfg_scale != 0.0 else visible


def _block_head(model, hidden, offset, k_len: int):
    """Logits of the block only [B, K, V] (the head is not run on the rest of the canvas)."""
    return model.project(jax.lax.dynamic_slice_in_dim(hidden, offset, k_len, axis=1))


def _full_logits(model, opts: SamplingOptions, ids: SpecialIds, x, visible_run, prompt_mask,
                 start):  # fmt: skip
    """The whole canvas through the model (with CFG): (block logits [B, K, V], K/V or None).
    The K/V of every layer is kept when a cache is on."""
    uncond = jnp.where(prompt_mask, ids.mask, x)

    def run(tokens):
        if opts.cache == "none":
            hidden, kv = model.hidden_states(tokens, key_mask=visible_run), None
        else:
            hidden, kv = model.hidden_with_kv(tokens, key_mask=visible_run)
        return _block_head(model, hidden, start, opts.block_length), kv

    return _guided(opts, run, x, uncond)


# --------------------------------------------------------------------------- one block


def _decode_block(model, opts: SamplingOptions, ids: SpecialIds, prompt_len: int, variable: bool,
                  x, key_mask, prompt_mask, key, block):  # fmt: skip
    """Decode block `block` (traced) of the canvas x [B, L] until it has no masks left."""
    k_len = opts.block_length
    length = x.shape[1]
    start = prompt_len + block * k_len
    visible_run = _visible_keys(opts, key_mask, start, variable)
    if opts.cache != "none" and model.cfg.shifted_logits:
        raise SamplingError(f"cache={opts.cache!r}: the Fast-dLLM caches run windows whose first "
                            "position a shifted-logits model predicts from outside them; use "
                            "cache='none'")  # fmt: skip

    def block_head(hidden, offset):
        return _block_head(model, hidden, offset, k_len)

    def full_logits(x):
        return _full_logits(model, opts, ids, x, visible_run, prompt_mask, start)

    if opts.cache == "dual":
        win_start, width = start, k_len
    else:  # prefix: the whole generated region (static width), fresh K/V from the block on
        win_start, width = prompt_len, length - prompt_len

    def cached_logits(x, kv):
        window = jax.lax.dynamic_slice_in_dim(x, win_start, width, axis=1)

        def run(tokens):
            hidden, _ = model.hidden_cached(
                tokens, win_start, kv, start, key_mask=visible_run, return_kv=False
            )
            return block_head(hidden, start - win_start), None

        logits, _ = _guided(opts, run, window, window)  # the window never holds the prompt
        return logits

    def later_logits(x, kv):
        return full_logits(x)[0] if opts.cache == "none" else cached_logits(x, kv)

    # The block's first step always runs the whole canvas (and fills the cache, if any).
    counts = jnp.asarray(schedule.transfer_schedule(k_len, _steps_per_block(opts, variable)))
    logits, kv = full_logits(x)
    key, sub = jax.random.split(key)
    x, _ = _commit(opts, ids, x, logits, sub, start, prompt_len, counts[0])

    if opts.threshold is None:

        def step(j, carry):
            x, key = carry
            key, sub = jax.random.split(key)
            x, _ = _commit(opts, ids, x, later_logits(x, kv), sub, start, prompt_len, counts[j])
            return x, key

        return jax.lax.fori_loop(1, counts.shape[0], step, (x, key))

    # Threshold (parallel) decoding: until the block is full (each pass commits >= 1 per row).
    def has_masks(carry):
        x, _, passes = carry
        block_tokens = jax.lax.dynamic_slice_in_dim(x, start, k_len, axis=1)
        return (block_tokens == ids.mask).any() & (passes < k_len)

    def body(carry):
        x, key, passes = carry
        key, sub = jax.random.split(key)
        x, _ = _commit(opts, ids, x, later_logits(x, kv), sub, start, prompt_len, 0)
        return x, key, passes + 1

    x, key, _ = jax.lax.while_loop(has_masks, body, (x, key, jnp.int32(1)))
    return x, key


def _steps_per_block(opts: SamplingOptions, variable: bool) -> int:
    return opts.steps if variable else opts.fixed_plan()[1]


# --------------------------------------------------------------------------- jitted programs


def _canvas(prompt, prompt_mask, gen_length: int, mask_id: int):
    batch = prompt.shape[0]
    x = jnp.concatenate([prompt, jnp.full((batch, gen_length), mask_id, prompt.dtype)], axis=1)
    key_mask = jnp.concatenate([prompt_mask, jnp.ones((batch, gen_length), bool)], axis=1)
    prompt_index = jnp.concatenate([prompt_mask, jnp.zeros((batch, gen_length), bool)], axis=1)
    return x, key_mask, prompt_index


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _generate_fixed(graphdef, opts: SamplingOptions, ids: SpecialIds, params, prompt,
                    prompt_mask, key):  # fmt: skip
    model = nnx.merge(graphdef, params)
    prompt_len = prompt.shape[1]
    x, key_mask, prompt_index = _canvas(prompt, prompt_mask, opts.gen_length, ids.mask)
    num_blocks, _ = opts.fixed_plan()

    def block(b, carry):
        x, key = carry
        return _decode_block(model, opts, ids, prompt_len, False, x, key_mask, prompt_index,
                             key, b)  # fmt: skip

    x, _ = jax.lax.fori_loop(0, num_blocks, block, (x, key))
    return x


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _generate_one_block(graphdef, opts: SamplingOptions, ids: SpecialIds, prompt_len: int,
                        params, x, key_mask, prompt_index, key, block):  # fmt: skip
    model = nnx.merge(graphdef, params)
    return _decode_block(model, opts, ids, prompt_len, True, x, key_mask, prompt_index, key,
                         block)  # fmt: skip


def _with_precision(opts: SamplingOptions, fn, *args):
    if opts.noise == "float64":
        if jax.default_backend() != "cpu":
            raise SamplingError("noise='float64' is the exact CPU mode; use 'fp32_hires' here")
        with jax.enable_x64(True):
            return fn(*args)
    return fn(*args)


def _as_prompt(prompt_ids, prompt_mask):
    prompt = np.asarray(prompt_ids)
    if prompt.ndim != 2 or not np.issubdtype(prompt.dtype, np.integer):
        raise SamplingError(f"prompt ids must be an int array [batch, length], got {prompt.shape}")
    if prompt_mask is None:
        prompt_mask = np.ones(prompt.shape, bool)
    prompt_mask = np.asarray(prompt_mask, bool)
    if prompt_mask.shape != prompt.shape:
        raise SamplingError(f"attention mask {prompt_mask.shape} != prompt {prompt.shape}")
    # Left padding only: once a row's real tokens start, they continue to the end.
    if (np.diff(prompt_mask.astype(np.int8), axis=1) < 0).any():
        raise SamplingError(
            "batch generation needs LEFT padding: each row's attention mask must be 0...0 1...1 "
            "(pad on the left, as the reference generate.py requires)"
        )
    return jnp.asarray(prompt, jnp.int32), jnp.asarray(prompt_mask)


def generate(graphdef, params, ids: SpecialIds, prompt_ids, opts: SamplingOptions, *,
             prompt_mask=None, seed: int = 0, mesh=None) -> np.ndarray:  # fmt: skip
    """Fixed-canvas generation (docs/algorithms.md#sampling). prompt_ids: int [B, P] left-padded;
    prompt_mask: bool [B, P] (1 = real token; default all real). Returns the canvas int32 [B, P +
    G]. `mesh`: the mesh `params` are sharded on (the runner's samples): the program is then
    compiled under it (`compile_on_mesh`), as the train step is."""
    opts.fixed_plan()
    prompt, mask = _as_prompt(prompt_ids, prompt_mask)
    args = (params, prompt, mask, jax.random.key(seed))
    if mesh is not None:
        if opts.noise == "float64":
            raise SamplingError("noise='float64' is the exact single-device CPU mode")
        return np.asarray(
            compile_on_mesh(mesh, _generate_fixed, (graphdef, opts, ids), args)(*args)
        )
    out = _with_precision(opts, _generate_fixed, graphdef, opts, ids, *args)
    return np.asarray(out)


_ON_MESH: dict = {}  # (function, mesh, static args, input types) -> compiled program


def compile_on_mesh(mesh, jitted, static: tuple, args: tuple) -> jax.stages.Compiled:
    """`jitted(*static, *args)` lowered under `mesh` and compiled, once per mesh, static
    arguments and input shapes/dtypes/shardings. A lazy jit traced at a call outside the mesh
    would drop the model's activation layouts and splash attention's `shard_map`
    (train/builder.py); this never traces at a call."""

    def kind(x):
        return (jnp.shape(x), jnp.result_type(x), getattr(x, "sharding", None))

    key = (jitted, mesh, static, jax.tree.structure(args), tuple(map(kind, jax.tree.leaves(args))))
    if key not in _ON_MESH:
        with jax.set_mesh(mesh):
            _ON_MESH[key] = jitted.lower(*static, *args).compile()
    return _ON_MESH[key]


@dataclasses.dataclass
class VariableResult:
    """ids: int32 [B, P + G_opened] (the canvas as far as blocks were opened; later positions are
    not returned); lengths: [B] generated tokens kept per row: before the first stop id, or as
    many as `stop_fn` says (a stop string's tokens included)."""

    ids: np.ndarray
    lengths: np.ndarray
    prompt_length: int

    def generated(self, row: int) -> np.ndarray:
        p = self.prompt_length
        return self.ids[row, p : p + int(self.lengths[row])]


def variable_budget(requested: int, prompt_len: int, max_seq_len: int, block_length: int) -> int:
    """docs/algorithms.md#variable-length-decoding: G = min(requested, max_seq_len − P) rounded down
    to a multiple of K."""
    budget = min(requested, max_seq_len - prompt_len) // block_length * block_length
    if budget < block_length:
        raise SamplingError(
            f"no room to generate: prompt of {prompt_len} tokens, max_seq_len={max_seq_len}, "
            f"block_length={block_length}; shorten the prompt or the block"
        )
    return budget


def first_stop(tokens: np.ndarray, stop_ids: Sequence[int]) -> int | None:
    """Index of the first token in `stop_ids`, or None."""
    hits = np.flatnonzero(np.isin(tokens, list(stop_ids))) if stop_ids else []
    return int(hits[0]) if len(hits) else None


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, width: int):
    """Id lists -> left-padded ids int32 [B, width] and prompt mask bool [B, width]."""
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for r, row in enumerate(rows):
        if len(row):
            ids[r, width - len(row) :] = row
            mask[r, width - len(row) :] = True
    return ids, mask


def generate_variable(graphdef, params, ids: SpecialIds, prompt_ids, opts: SamplingOptions, *,
                      max_seq_len: int, prompt_mask=None, stop_ids: Sequence[int] = (),
                      stop_fn: Callable[[np.ndarray], int | None] | None = None, seed: int = 0,
                      on_block: Callable[[int, np.ndarray], None] | None = None,
                      ) -> VariableResult:  # fmt: skip
    """Variable-length generation (docs/algorithms.md#variable-length-decoding): open one block of K
    masks at a time, decode it with `opts.steps` steps, stop once every row has hit a stop id or
    `stop_fn`.

    `opts.gen_length` is the requested budget (clipped by `variable_budget`). `stop_fn(generated
    ids of one row) -> cut index or None` implements stop strings on decoded text (host side).
    `on_block(block, canvas)` sees the canvas after each block (for progress or tests).
    """
    prompt, mask = _as_prompt(prompt_ids, prompt_mask)
    batch, prompt_len = prompt.shape
    budget = variable_budget(opts.gen_length, prompt_len, max_seq_len, opts.block_length)
    opts = dataclasses.replace(opts, gen_length=budget)
    x, key_mask, prompt_index = _canvas(prompt, mask, budget, ids.mask)
    key = jax.random.key(seed)
    cuts: list[int | None] = [None] * batch
    num_blocks = budget // opts.block_length
    opened = 0
    for block in range(num_blocks):
        x, key = _with_precision(opts, _generate_one_block, graphdef, opts, ids, prompt_len,
                                 params, x, key_mask, prompt_index, key, jnp.int32(block))  # fmt: skip
        opened = block + 1
        canvas = np.asarray(x)
        if on_block is not None:
            on_block(block, canvas)
        end = prompt_len + opened * opts.block_length
        for row in range(batch):
            if cuts[row] is not None:
                continue
            generated = canvas[row, prompt_len:end]
            stops = [c for c in (first_stop(generated, stop_ids),
                                 stop_fn(generated) if stop_fn else None) if c is not None]  # fmt: skip
            if stops:
                cuts[row] = min(stops)
        if all(c is not None for c in cuts):
            break
    end = prompt_len + opened * opts.block_length
    canvas = np.asarray(x)[:, :end]
    lengths = np.array([end - prompt_len if c is None else c for c in cuts], np.int32)
    return VariableResult(ids=canvas, lengths=lengths, prompt_length=prompt_len)
