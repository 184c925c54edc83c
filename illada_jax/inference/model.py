"""`Model`: a masked-diffusion LM ready for inference — logits, sampling, likelihoods.

`Model` wraps a network's graph definition, its parameters (on the default device), its
`ModelConfig` and, when one is known, its `Tokenizer`. Token ids in and out are numpy arrays; the
text helpers need the tokenizer. `illada_jax.inference.loading.load` makes one from a checkpoint;
`Model.from_module` wraps a network in memory.

Sampling follows LLaDA's reverse process and iLLaDA's variable-length decoding
(docs/algorithms.md#sampling); `log_likelihood` is LLaDA's Monte-Carlo ELBO and
`score_confidence` iLLaDA's confidence score (docs/algorithms.md#likelihood-and-scoring).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from illada_jax.ckpt.rundir import LoadError
from illada_jax.config.schema import ModelConfig
from illada_jax.diffusion import likelihood
from illada_jax.sampling.blockwise import Decoding, generate_ar, generate_blocks
from illada_jax.sampling.generate import (
    SamplingOptions,
    SpecialIds,
    VariableResult,
    first_stop,
    generate,
    generate_variable,
    left_pad,
)
from illada_jax.sampling.schedule import SamplingError
from illada_jax.sampling.trace import GenerationTrace, trace_fixed

PROMPT_BUCKET = 32  # prompts are left-padded to a multiple of this: one program per bucket


class Model:
    """A masked-diffusion LM ready for inference (see the module docstring)."""

    def __init__(self, config: ModelConfig, graphdef, params, tokenizer=None, step: int = 0):
        self.config = config
        self.graphdef = graphdef
        self.params = params
        self.tokenizer = tokenizer  # checked against the config (the property below)
        self.step = step
        self.experiment = None  # the run's resolved `Experiment` when loaded from a checkpoint
        self.special_ids = SpecialIds.from_config(config)

    @property
    def tokenizer(self):
        """The model's `Tokenizer` (None when none is known: pass token ids)."""
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer) -> None:
        # A tokenizer with another vocabulary or other special ids would feed the model ids it
        # has no embedding for (NaN logits) or masks it does not know: refuse it here.
        if tokenizer is not None:
            tokenizer.check_model_config(self.config, allow_larger_model_vocab=True)
        self._tokenizer = tokenizer

    @classmethod
    def from_module(cls, module: nnx.Module, tokenizer=None) -> Model:
        """Wrap an in-memory `Transformer` (e.g. freshly initialised, or in a notebook)."""
        graphdef, params = nnx.split(module)
        return cls(module.cfg, graphdef, params, tokenizer)

    @property
    def decoding(self) -> Decoding:
        """How this model generates, from its run's objective (`sampling/blockwise.py`):
        masked diffusion, block diffusion (cached blocks) or autoregressive."""
        return Decoding.of(self.experiment)

    def __repr__(self) -> str:
        tok = "with tokenizer" if self.tokenizer else "no tokenizer"
        return f"Model({self.config.name!r}, step {self.step}, {tok})"

    # ------------------------------------------------------------------ ids

    def need_tokenizer(self):
        if self.tokenizer is None:
            raise LoadError(
                "this model has no tokenizer (its run config names none that matches the "
                "model); pass token ids, or set model.tokenizer = Tokenizer.load(PATH)"
            )
        return self.tokenizer

    def _ids(self, value) -> list[int]:
        if isinstance(value, str):
            return self.need_tokenizer().encode(value)
        return [int(t) for t in np.asarray(value).reshape(-1)]

    def logits(self, ids, attention_mask=None) -> np.ndarray:
        """ids: int [B, L] -> float32 logits [B, L, vocab] (attention_mask: [B, L], 1 = real)."""
        ids = np.asarray(ids, np.int32)
        if ids.ndim != 2:
            raise SamplingError(f"ids must be [batch, length], got shape {ids.shape}")
        mask = None if attention_mask is None else jnp.asarray(attention_mask, bool)
        return np.asarray(_logits(self.graphdef, self.params, jnp.asarray(ids), mask))

    # ------------------------------------------------------------------ generation

    def _prompt_batch(self, prompt_ids, attention_mask):
        """Left-padded [B, P'] ids and mask, P' a multiple of PROMPT_BUCKET, and the caller's P."""
        if attention_mask is not None or isinstance(prompt_ids, np.ndarray | jax.Array):
            try:  # a padded [B, P] array (and its mask)
                ids = np.atleast_2d(np.asarray(prompt_ids, np.int32))
                mask = np.ones(ids.shape, bool)
                if attention_mask is not None:
                    mask = np.atleast_2d(np.asarray(attention_mask, bool))
            except ValueError as err:
                raise SamplingError(
                    f"prompt ids / attention mask are not rectangular: {err}"
                ) from None
            if ids.ndim != 2 or mask.shape != ids.shape:
                raise SamplingError(
                    f"prompt ids {ids.shape} and attention mask {mask.shape} must both be [B, P]"
                )
            rows = [row[m].tolist() for row, m in zip(ids, mask)]
            width = ids.shape[1]
        else:  # one id list, or a list of id lists of any lengths
            rows = list(prompt_ids)
            if rows and isinstance(rows[0], int | np.integer):
                rows = [rows]
            width = max((len(r) for r in rows), default=0)
        if not rows or width == 0:
            raise SamplingError("empty prompt: give at least one prompt token")
        bucket = -(-width // PROMPT_BUCKET) * PROMPT_BUCKET
        ids, mask = left_pad(rows, self.config.pad_token_id, bucket)
        return ids, mask, width

    def generate(self, prompt_ids, gen_length: int = 128, steps: int | None = None,
                 block_length: int | None = None, temperature: float = 0.0,
                 remasking: str = "low_confidence", cfg_scale: float = 0.0, *,
                 attention_mask=None, variable_length: bool = False,
                 stop_ids: Sequence[int] | None = None, stop_strings: Sequence[str] = (),
                 seed: int = 0, **options) -> np.ndarray:  # fmt: skip
        """Sample continuations of `prompt_ids` (int [B, P] with `attention_mask` for left
        padding, or a list of id lists of any lengths). Returns int32 [B, P + G].

        steps / block_length default to gen_length (one token per step, pure diffusion).
        A model trained with block diffusion or autoregressively (`decoding`) generates block by
        block (steps per block, its own block size) or token by token from an exact K/V cache and
        always stops as `variable_length` does.
        `variable_length=True` runs docs/algorithms.md#variable-length-decoding (steps per block)
        and returns the canvas as far as it was opened, with everything after each row's first stop
        set to EOS; stop ids default to EOS and EoT; a stop string keeps the tokens through the one
        that completes it (cut the text at the string, as `generate_text` does). Further `options`:
        see `SamplingOptions` (threshold, cache, noise, logits_eos_inf, confidence_eos_eot_inf,
        think_ids, think_boost, think_power).
        """
        result = self._generate(prompt_ids, gen_length, steps, block_length, temperature,
                                remasking, cfg_scale, attention_mask, variable_length,
                                stop_ids, stop_strings, seed, options)  # fmt: skip
        return result[0]

    def _generate(self, prompt_ids, gen_length, steps, block_length, temperature, remasking,
                  cfg_scale, attention_mask, variable_length, stop_ids, stop_strings, seed,
                  options):  # fmt: skip
        """(ids [B, P+G'] for the caller's P, generated lengths [B])."""
        ids, mask, width = self._prompt_batch(prompt_ids, attention_mask)
        opts = _sampling_options(gen_length, steps, block_length, variable_length,
                                 temperature=temperature, remasking=remasking,
                                 cfg_scale=cfg_scale, **options)  # fmt: skip
        cut = ids.shape[1] - width  # the bucket padding added on the left
        decoding = self.decoding
        if decoding.kind != "diffusion":  # block-causal models always stop at a stop id
            variable_length = True
        if decoding.kind == "block_diffusion" and block_length not in (None, decoding.block_size):
            raise SamplingError(
                f"block_length={block_length}: this model was trained with blocks of "
                f"{decoding.block_size} (diffusion.block_size) and decodes blocks of that size; "
                "leave block_length out"
            )
        if not variable_length:
            out = generate(self.graphdef, self.params, self.special_ids, ids, opts,
                           prompt_mask=mask, seed=seed)  # fmt: skip
            return out[:, cut:], np.full(out.shape[0], gen_length, np.int32)
        special = self.special_ids
        if stop_ids is None:
            stop_ids = tuple(t for t in (special.eos, special.eot) if t is not None)
        stop_fn = self._stop_string_fn(stop_strings) if stop_strings else None
        common = dict(max_seq_len=self.config.max_seq_len, prompt_mask=mask, stop_ids=stop_ids,
                      stop_fn=stop_fn, seed=seed)  # fmt: skip
        if decoding.kind == "block_diffusion":
            opts = dataclasses.replace(opts, steps=steps or decoding.block_size)
            result: VariableResult = generate_blocks(
                self.graphdef, self.params, special, ids, opts, block_size=decoding.block_size,
                **common)  # fmt: skip
        elif decoding.kind == "ar":  # stop checks every 16 tokens unless block_length says
            opts = dataclasses.replace(opts, block_length=block_length or min(gen_length, 16))
            result = generate_ar(self.graphdef, self.params, special, ids, opts, **common)
        else:
            result = generate_variable(self.graphdef, self.params, special, ids, opts, **common)
        out = result.ids.copy()
        for row, length in enumerate(result.lengths):
            out[row, result.prompt_length + length :] = special.eos
        return out[:, cut:], result.lengths

    def trace(self, prompt, gen_length: int = 64, steps: int | None = None,
              block_length: int | None = None, temperature: float = 0.0,
              remasking: str = "low_confidence", cfg_scale: float = 0.0, *, seed: int = 0,
              **options) -> GenerationTrace:  # fmt: skip
        """The reverse process of a fixed-canvas generation, step by step (`GenerationTrace`:
        the canvas after every step, the step each token was committed at and its confidence).

        `prompt`: a text (needs the tokenizer), an id list, or a list of either. The final
        canvas equals `generate(...)`'s with the same arguments. Options as `generate` (no cache).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if prompts and isinstance(prompts[0], int | np.integer):
            prompts = [prompts]
        rows = [self._ids(p) for p in prompts]
        ids, mask, width = self._prompt_batch(rows, None)
        opts = _sampling_options(gen_length, steps, block_length, False,
                                 temperature=temperature, remasking=remasking,
                                 cfg_scale=cfg_scale, **options)  # fmt: skip
        result = trace_fixed(self.graphdef, self.params, self.special_ids, ids, opts,
                             prompt_mask=mask, seed=seed)  # fmt: skip
        cut = ids.shape[1] - width  # drop the bucket padding, as `generate` does
        return dataclasses.replace(
            result,
            ids=result.ids[:, cut:],
            canvases=result.canvases[:, :, cut:],
            commit_step=result.commit_step[:, cut:],
            confidence=result.confidence[:, cut:],
            prompt_length=width,
        )

    def _stop_string_fn(self, stop_strings: Sequence[str]):
        tokenizer = self.need_tokenizer()
        mask_id = self.special_ids.mask

        def first_stop(generated: np.ndarray) -> int | None:
            """Tokens to keep: the shortest prefix whose text contains a stop string (a token
            may hold text before the stop; the text helpers cut at the string itself)."""
            done = generated[generated != mask_id]
            text = tokenizer.decode(done.tolist(), skip_special=False)
            if not any(s and s in text for s in stop_strings):
                return None
            for n in range(1, len(done) + 1):
                prefix = tokenizer.decode(done[:n].tolist(), skip_special=False)
                if any(s and s in prefix for s in stop_strings):
                    return n
            return len(done)

        return first_stop

    def generate_text(self, prompt: str | Sequence[str], gen_length: int = 128, *,
                      chat: bool = False, add_bos: bool = False,
                      stop_strings: Sequence[str] = (), **kwargs) -> str | list[str]:  # fmt: skip
        """Text in, text out. `chat=True` wraps each prompt as one user turn with the chat
        template (docs/algorithms.md#sampling notes); the reply is cut at the first EOS / EoT / stop
        string and decoded without special tokens. Other arguments as `generate`."""
        tokenizer = self.need_tokenizer()
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        if chat:
            from illada_jax.data.chat.sft import ChatFormatter

            formatter = ChatFormatter(tokenizer)
            rows = [formatter.prompt([{"role": "user", "content": p}]) for p in prompts]
        else:
            bos = [tokenizer.bos_id] if add_bos else []
            rows = [bos + tokenizer.encode(p) for p in prompts]
        texts = self.complete_ids(rows, gen_length, stop_strings=stop_strings, **kwargs)
        return texts[0] if single else texts

    def chat(self, messages: Sequence[dict], gen_length: int = 64, *,
             stop_strings: Sequence[str] = (), **kwargs) -> str:  # fmt: skip
        """The assistant's next reply to a dialogue (`[{"role": "user" | "assistant" |
        "system", "content": str}, ...]`, ending with a user turn), generated from the whole
        dialogue in the chat template. Other arguments as `generate`."""
        from illada_jax.data.chat.sft import ChatFormatter

        prompt = ChatFormatter(self.need_tokenizer()).prompt(list(messages))
        reply = self.complete_ids([prompt], gen_length, stop_strings=stop_strings, **kwargs)[0]
        return reply.strip()

    def complete_ids(self, rows: Sequence[Sequence[int]], gen_length: int, *,
                     stop_strings: Sequence[str] = (), **kwargs) -> list[str]:  # fmt: skip
        """Generate after each prompt (id lists) and return the decoded replies, each cut at the
        first EOS / EoT / stop string."""
        tokenizer = self.need_tokenizer()
        width = max(len(r) for r in rows)
        out, lengths = self._generate(
            rows, gen_length, kwargs.pop("steps", None), kwargs.pop("block_length", None),
            kwargs.pop("temperature", 0.0), kwargs.pop("remasking", "low_confidence"),
            kwargs.pop("cfg_scale", 0.0), None, kwargs.pop("variable_length", False),
            kwargs.pop("stop_ids", None), stop_strings, kwargs.pop("seed", 0), kwargs,
        )  # fmt: skip
        special = self.special_ids
        stops = [t for t in (special.eos, special.eot) if t is not None]
        texts = []
        for row, length in zip(out, lengths):
            generated = row[width : width + int(length)]
            cut = first_stop(generated, stops)
            generated = [t for t in generated[:cut].tolist() if t != special.mask]
            text = tokenizer.decode(generated, skip_special=True)
            for stop in stop_strings:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            texts.append(text)
        return texts

    # ------------------------------------------------------------------ scoring

    def log_likelihood(self, prompt, answer, mc_num: int = 128, batch_size: int = 32,
                       cfg_scale: float = 0.0, seed: int = 0, suffix=()) -> float:  # fmt: skip
        """Monte-Carlo ELBO of `answer` given `prompt` (text or ids), nats
        (docs/algorithms.md#the-monte-carlo-elbo).
        `suffix`: ids after the answer that are seen but never scored (iLLaDA's EOS padding)."""
        return likelihood.mc_elbo(
            self.graphdef, self.params, self._ids(prompt), self._ids(answer),
            mask_id=self.special_ids.mask, mc_num=mc_num, batch_size=batch_size,
            cfg_scale=cfg_scale, seed=seed, suffix=self._ids(suffix),
        )  # fmt: skip

    def score_confidence(self, prompt, answer, cfg_scale: float = 0.0, suffix=()):
        """iLLaDA's confidence score (docs/algorithms.md#confidence-scoring) of one answer (float)
        or of a list of candidate answers (float array), each text or ids; `suffix` as in
        `log_likelihood`."""
        single = isinstance(answer, str) or (
            len(answer) > 0 and isinstance(answer[0], int | np.integer)
        )
        answers = [answer] if single else list(answer)
        scores = likelihood.confidence_score(
            self.graphdef, self.params, self._ids(prompt), [self._ids(a) for a in answers],
            mask_id=self.special_ids.mask, cfg_scale=cfg_scale, suffix=self._ids(suffix),
        )  # fmt: skip
        return float(scores[0]) if single else scores

    def is_greedy(self, prompt, answer, cfg_scale: float = 0.0, suffix=()):
        """docs/algorithms.md#greedy-check: does confidence-ordered greedy decoding of the answer
        span reproduce it? One answer -> bool; a list of candidate answers -> bool array."""
        single = isinstance(answer, str) or (
            len(answer) > 0 and isinstance(answer[0], int | np.integer)
        )
        answers = [answer] if single else list(answer)
        result = likelihood.greedy_check(
            self.graphdef, self.params, self._ids(prompt), [self._ids(a) for a in answers],
            mask_id=self.special_ids.mask, cfg_scale=cfg_scale, suffix=self._ids(suffix),
        )  # fmt: skip
        return bool(result[0]) if single else result


def _sampling_options(gen_length: int, steps: int | None, block_length: int | None,
                      variable_length: bool, **fields) -> SamplingOptions:  # fmt: skip
    """Defaults: one block (pure diffusion); one token per step (for variable length, `steps`
    is per block)."""
    block_length = block_length or gen_length
    steps = steps or (block_length if variable_length else gen_length)
    return SamplingOptions(gen_length=gen_length, steps=steps, block_length=block_length,
                           **fields)  # fmt: skip


def _logits_fn(graphdef, params, ids, mask):
    return nnx.merge(graphdef, params)(ids, key_mask=mask)


_logits = jax.jit(_logits_fn, static_argnums=0)
