"""The lm-evaluation-harness model `illada` (SPEC §6.4): a `Model` behind lm-eval's `LM` API.

    from illada_jax.eval import run_tasks
    results = run_tasks("runs/tiny", ["kjv_next_word", "kjv_verse_end"], limit=20, mc_num=32)
    results["results"]["kjv_next_word"]["acc,none"]

or, with the lm-eval command line (this module registers the model, then runs lm-eval's CLI with
the shipped tasks on the include path unless `--include_path` is given):

    python -m illada_jax.eval.harness run --model illada \
        --model_args checkpoint=runs/tiny,loglikelihood_method=confidence --tasks illada_offline

Requests (all processed on this one process; lm-eval's rank / world size stay 0 / 1):
- `loglikelihood`: each (context, continuation) is tokenised by `_encode_pair` (SPEC §6.4) and
  scored with the Monte-Carlo ELBO (SPEC §6.1, `loglikelihood_method="elbo"`) one request at a
  time, or with iLLaDA's confidence score (SPEC §6.2, `"confidence"`), where all continuations of
  one context are scored in one batch. `is_greedy` (SPEC §6.3) is computed only with
  `check_greedy=True` (else False, as in the reference evaluations).
- `loglikelihood_rolling`: **a lower bound**, not an exact log-likelihood: the text (no BOS/EOS
  added) is cut into lm-eval's disjoint rolling windows (each window conditioned on the tokens
  before it, the first on BOS) and the windows' ELBOs (SPEC §6.1) are summed, whatever
  `loglikelihood_method` says.
- `generate_until`: one unpadded prompt at a time, as iLLaDA's evaluation does: fixed canvas
  (SPEC §5.1) or variable length (SPEC §5.3), temperature 0 by default; the reply is cut at the
  first of the request's `until` strings, the EOS string and EoT. The request's `max_gen_toks` is
  ignored: `gen_length` (model args) is the budget, as in the reference harnesses.

Seeds: every ELBO request uses the same `seed`, so a request's score does not depend on its
position in the batch (and candidates of one question share their random streams).
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

try:
    import lm_eval
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'illada_jax.eval.harness needs lm-eval; install it with: pip install "illada-jax[eval]"'
    ) from err

from illada_jax.api import Model
from illada_jax.diffusion import likelihood
from illada_jax.diffusion.likelihood import ScoringError
from illada_jax.eval import tasks as shipped_tasks

METHODS = ("elbo", "confidence")


class HarnessConfigError(ValueError):
    """A model argument the harness cannot use (the message names it and the fix)."""


# ---------------------------------------------------------------- argument parsing


def _as_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise HarnessConfigError(f"{name}={value!r} is not a boolean; use true or false")


def _as_optional(kind, name: str, value):
    """None for None / "none" / ""; else kind(value), with an error naming the argument."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise HarnessConfigError(f"{name}={value!r} is not a {kind.__name__}") from None


def _batch_size(value, mc_num: int) -> int:
    """lm-eval's batch size is the MC batch; "auto" (lm-eval's option) means min(mc_num, 32)."""
    if value is None or str(value).startswith("auto"):
        return min(mc_num, 32)
    size = _as_optional(int, "batch_size", value)
    if size < 1 or mc_num % size:
        raise HarnessConfigError(
            f"batch_size={size} must divide mc_num={mc_num} (SPEC §6.1); e.g. batch_size="
            f"{min(mc_num, 32)}"
        )
    return size


# ---------------------------------------------------------------- EOS-padded scoring
# SPEC §6.2 `padd_eos`: one EOS after the whole input in every forward, its logits unused. The
# public scorers lay sequences out as [prompt, answer, pad...] with the pads hidden from
# attention; here the EOS is a visible, never-masked, never-scored key after the answer, fed to
# the same jitted kernels (`_elbo_batch`, `_reveal_loop`) that `likelihood.mc_elbo` and
# `likelihood.confidence_score` / `greedy_check` run.


def padded_layout(prompt: Sequence[int], answers: Sequence[Sequence[int]],
                  suffix: Sequence[int], mask_id: int):  # fmt: skip
    """Rows `[prompt, answer_r, suffix, pad...]`, one per answer.

    Returns tokens int32 [R, L], key mask bool [R, L] (True on prompt, answer and suffix),
    answer positions int32 [Ab] and answer validity bool [R, Ab]; L and Ab are rounded up to
    `likelihood.BUCKET` exactly as the public scorers round them (so `suffix=()` reproduces
    their layout and their numbers).
    """
    prompt, suffix = [int(t) for t in prompt], [int(t) for t in suffix]
    answers = [[int(t) for t in answer] for answer in answers]
    if not answers or any(not answer for answer in answers):
        raise ScoringError("a continuation has no tokens; nothing to score")
    if any(mask_id in seq for seq in (prompt, suffix, *answers)):
        raise ScoringError(f"the mask id {mask_id} appears in the text to score; remove it")
    p, longest = len(prompt), max(len(a) for a in answers)
    a_bucket = likelihood._bucket(longest)
    length = max(likelihood._bucket(p + longest + len(suffix)), p + a_bucket)
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


def padded_elbo(model: Model, prompt, answer, suffix, *, mc_num: int, batch_size: int,
                cfg_scale: float, seed: int) -> float:  # fmt: skip
    """`likelihood.mc_elbo` with `suffix` tokens after the answer (visible, never scored)."""
    batch_size = min(batch_size, mc_num)
    if mc_num < 1 or mc_num % batch_size:
        raise ScoringError(f"mc_num={mc_num} must be a positive multiple of batch={batch_size}")
    mask_id = model.special_ids.mask
    tokens, key_mask, positions, valid = padded_layout(prompt, [answer], suffix, mask_id)
    tokens, key_mask = np.repeat(tokens, batch_size, 0), np.repeat(key_mask, batch_size, 0)
    a = len(answer)
    rng = np.random.default_rng(seed)  # the same streams as likelihood.mc_elbo
    key = jax.random.key(seed)
    losses = []
    for _ in range(mc_num // batch_size):
        key, sub = jax.random.split(key)
        offset = float(rng.integers(1, a + 1))
        loss = likelihood._elbo_batch(model.graphdef, mask_id, float(cfg_scale), model.params,
                                      tokens, key_mask, positions, valid[0], len(prompt), a,
                                      offset, sub)  # fmt: skip
        losses.append(float(loss))
    return -float(np.mean(losses))


def padded_reveal(model: Model, prompt, answers, suffix, *, greedy: bool) -> np.ndarray:
    """`likelihood.confidence_score` (greedy=False, float [R]) or `greedy_check` (greedy=True,
    bool [R]) with `suffix` tokens after each answer."""
    mask_id = model.special_ids.mask
    tokens, key_mask, positions, valid = padded_layout(prompt, answers, suffix, mask_id)
    return np.asarray(likelihood._reveal_loop(model.graphdef, mask_id, greedy, model.params,
                                              tokens, key_mask, positions, valid))  # fmt: skip


# ---------------------------------------------------------------- the lm-eval model


def _load_model(checkpoint, model, tokenizer) -> Model:
    if (checkpoint is None) == (model is None):
        raise HarnessConfigError(
            "give exactly one of checkpoint=PATH (a run or checkpoint directory) or model= "
            "(an illada_jax.Model)"
        )
    if model is None:
        import illada_jax

        model = illada_jax.load(checkpoint)
    if not isinstance(model, Model):
        raise HarnessConfigError(f"model= must be an illada_jax.Model, got {type(model)}")
    if tokenizer is not None:
        from illada_jax.data.tokenizer import Tokenizer

        model.tokenizer = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.load(
            tokenizer
        )  # fmt: skip
    if model.tokenizer is None:
        raise HarnessConfigError(
            "the model has no tokenizer (its run config names none that fits); pass "
            "tokenizer=PATH (a SentencePiece .model or HF tokenizer.json)"
        )
    return model


@register_model("illada")
class IlladaLM(LM):
    """lm-eval model wrapping an `illada_jax.Model` (see the module docstring).

    Args (lm-eval `--model_args` strings are accepted for every one):
        checkpoint: run / checkpoint directory for `illada_jax.load`; or `model`: a `Model`.
        tokenizer: a tokenizer path (or `Tokenizer`) when the checkpoint names none.
        loglikelihood_method: "elbo" (SPEC §6.1) or "confidence" (SPEC §6.2).
        mc_num, batch_size: MC samples and samples per forward batch for the ELBO (mc_num=1 is
            exact for single-token continuations). lm-eval's `--batch_size` lands here.
        cfg_scale: unsupervised CFG for the ELBO and for generation (0 = off).
        add_bos_token: prepend BOS to every context (iLLaDA's `add_bos_token`).
        pad_eos: append one EOS after the whole input in every scoring forward, never scored
            (iLLaDA's `padd_eos`, SPEC §6.2).
        check_greedy: compute `is_greedy` (SPEC §6.3; slow: one forward per answer token).
        max_length: longest sequence (context + continuation, or prompt + generation);
            default the model's `max_seq_len`.
        gen_length, steps, block_length, variable_length, threshold, cache, temperature,
            remasking: generation (SPEC §5.1 / §5.3 / §5.5). `block_length` defaults to
            gen_length on a fixed canvas and to 32 for variable length; `steps` to gen_length
            (fixed: one token per step) or block_length (variable: steps per block).
        seed: seed of the ELBO's MC draws and of sampling.
        device, max_batch_size: accepted for lm-eval's sake and unused (JAX places the model).
    """

    def __init__(self, checkpoint: str | None = None, model: Model | None = None, *,
                 tokenizer=None, loglikelihood_method: str = "elbo", mc_num: int = 128,
                 batch_size: int | str | None = None, cfg_scale: float = 0.0,
                 add_bos_token: bool = False, pad_eos: bool = False, check_greedy: bool = False,
                 max_length: int | None = None, gen_length: int = 256, steps: int | None = None,
                 block_length: int | None = None, variable_length: bool = False,
                 threshold: float | None = None, cache: str = "none", temperature: float = 0.0,
                 remasking: str = "low_confidence", seed: int = 1234, device: str | None = None,
                 max_batch_size: int | None = None):  # fmt: skip
        super().__init__()
        self.model = _load_model(checkpoint, model, tokenizer)
        self.tokenizer = self.model.tokenizer
        if loglikelihood_method not in METHODS:
            raise HarnessConfigError(
                f"loglikelihood_method={loglikelihood_method!r}: choose one of {METHODS}"
            )
        self.method = loglikelihood_method
        self.mc_num = int(mc_num)
        if self.mc_num < 1:
            raise HarnessConfigError(f"mc_num={mc_num} must be >= 1")
        self.batch_size = _batch_size(batch_size, self.mc_num)
        self.cfg_scale = float(cfg_scale)
        if self.cfg_scale and self.method == "confidence":
            raise HarnessConfigError(
                "cfg_scale > 0 needs loglikelihood_method=elbo: the confidence scorer "
                "(likelihood.confidence_score) has no CFG; iLLaDA's confidence results use none"
            )
        self.add_bos_token = _as_bool("add_bos_token", add_bos_token)
        self.pad_eos = _as_bool("pad_eos", pad_eos)
        self.check_greedy = _as_bool("check_greedy", check_greedy)
        self.max_length = _as_optional(int, "max_length", max_length) or (
            self.model.config.max_seq_len
        )  # fmt: skip
        self.gen_length = int(gen_length)
        self.variable_length = _as_bool("variable_length", variable_length)
        default_block = 32 if self.variable_length else None
        self.block_length = _as_optional(int, "block_length", block_length) or default_block
        self.steps = _as_optional(int, "steps", steps)
        self.threshold = _as_optional(float, "threshold", threshold)
        self.cache = str(cache)
        self.temperature = float(temperature)
        self.remasking = str(remasking)
        self.seed = int(seed)
        self._suffix = (self.model.special_ids.eos,) if self.pad_eos else ()

    def __repr__(self) -> str:
        return f"IlladaLM({self.model!r}, {self.method})"

    @property
    def tokenizer_name(self) -> str:
        """Fingerprint for lm-eval's request caches: the tokenizer's kind and file hash."""
        return f"illada-{getattr(self.tokenizer, 'identity', 'unknown')}".replace("/", "__")

    # ------------------------------------------------------------ tokenisation

    def _bos(self) -> list[int]:
        return [self.tokenizer.bos_id] if self.add_bos_token else []

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """SPEC §6.4: move the context's trailing whitespace onto the continuation, encode
        context + continuation and context; the continuation ids are the joint encoding's
        suffix beyond the context's length. Returns (context ids [P], continuation ids [A]);
        the context gets BOS with `add_bos_token` (or when it is empty: nothing to condition on
        otherwise)."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.tokenizer.encode(context + continuation)
        context_ids = self.tokenizer.encode(context)
        continuation_ids = whole[len(context_ids) :]
        prefix = self._bos() or ([] if context_ids else [self.tokenizer.bos_id])
        return prefix + context_ids, continuation_ids

    def _check_length(self, prompt: Sequence[int], answer: Sequence[int], what: str) -> None:
        total = len(prompt) + len(answer) + len(self._suffix)
        if total > self.max_length:
            raise ScoringError(
                f"{what}: {len(prompt)} context + {len(answer)} continuation tokens"
                f"{' + 1 EOS' if self._suffix else ''} = {total} > max_length={self.max_length};"
                " shorten the task's context (fewer shots) or pass a larger max_length"
            )

    # ------------------------------------------------------------ scorers

    def _elbo(self, prompt, answer) -> float:
        if self._suffix:
            return padded_elbo(self.model, prompt, answer, self._suffix, mc_num=self.mc_num,
                               batch_size=self.batch_size, cfg_scale=self.cfg_scale,
                               seed=self.seed)  # fmt: skip
        return self.model.log_likelihood(prompt, answer, mc_num=self.mc_num,
                                         batch_size=self.batch_size, cfg_scale=self.cfg_scale,
                                         seed=self.seed)  # fmt: skip

    def _confidence(self, prompt, answers) -> np.ndarray:
        if self._suffix:
            return padded_reveal(self.model, prompt, answers, self._suffix, greedy=False)
        return np.asarray(self.model.score_confidence(prompt, list(answers)))

    def _greedy(self, prompt, answers) -> np.ndarray:
        """SPEC §6.3 per answer (no CFG: `likelihood.greedy_check` has none)."""
        if self._suffix:
            return padded_reveal(self.model, prompt, answers, self._suffix, greedy=True)
        model = self.model
        return likelihood.greedy_check(model.graphdef, model.params, prompt, answers,
                                       mask_id=model.special_ids.mask)  # fmt: skip

    # ------------------------------------------------------------ lm-eval API

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """Per request (context, continuation): (score in nats, is_greedy)."""
        pairs = [self._encode_pair(*request.args) for request in requests]
        for index, (prompt, answer) in enumerate(pairs):
            if not answer:
                raise ScoringError(
                    f"request {index}: the continuation {requests[index].args[1]!r} adds no "
                    "tokens to the context's encoding (it merges into the context's last token); "
                    "give the task a target_delimiter (e.g. a space) before the continuation"
                )
            self._check_length(prompt, answer, f"request {index}")
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, (prompt, _) in enumerate(pairs):
            groups.setdefault(tuple(prompt), []).append(index)
        scores = np.zeros(len(pairs), np.float64)
        greedy = np.zeros(len(pairs), bool)
        with tqdm(total=len(pairs), desc=f"illada loglikelihood ({self.method})") as bar:
            for prompt, members in groups.items():
                answers = [pairs[i][1] for i in members]
                scores[members] = self._group_scores(list(prompt), answers)
                if self.check_greedy:
                    greedy[members] = self._greedy(list(prompt), answers)
                bar.update(len(members))
        return [(float(s), bool(g)) for s, g in zip(scores, greedy)]

    def _group_scores(self, prompt: list[int], answers: list[list[int]]) -> np.ndarray:
        """Scores of the continuations of one context: float [len(answers)]."""
        if self.method == "confidence":
            return self._confidence(prompt, answers)
        return np.array([self._elbo(prompt, answer) for answer in answers])

    def loglikelihood_rolling(self, requests) -> list[float]:
        """A lower bound on each text's log-likelihood (nats): summed window ELBOs."""
        bos = self.tokenizer.bos_id
        # Context + predicted tokens (+ the EOS pad) of a window fit in max_length.
        window = self.max_length - len(self._suffix) - 1
        results = []
        for request in tqdm(requests, desc="illada loglikelihood_rolling (ELBO bound)"):
            (text,) = request.args
            ids = self.tokenizer.encode(text)
            windows = get_rolling_token_windows(ids, prefix_token=bos, max_seq_len=window,
                                                context_len=1)  # fmt: skip
            total = 0.0
            for context, predicted in map(make_disjoint_window, windows):
                total += self._elbo(context, predicted)
            results.append(total)
        return results

    def generate_until(self, requests) -> list[str]:
        """Per request (context, gen_kwargs): the reply, cut at the first stop string."""
        eos_text = self.tokenizer.decode([self.model.special_ids.eos], skip_special=False)
        replies = []
        for request in tqdm(requests, desc="illada generate_until"):
            context, gen_kwargs = request.args
            until = (gen_kwargs or {}).get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            stops = [*until, eos_text] if eos_text and eos_text not in until else until
            prompt = self._bos() + self.tokenizer.encode(context)
            replies.append(self._generate(prompt or [self.tokenizer.bos_id], stops))
        return replies

    def _generate(self, prompt: list[int], stop_strings: list[str]) -> str:
        gen_length, block_length, steps = self._generation_plan(len(prompt))
        reply = self.model.complete_ids(
            [prompt], gen_length, stop_strings=stop_strings, steps=steps,
            block_length=block_length, variable_length=self.variable_length,
            temperature=self.temperature, remasking=self.remasking, cfg_scale=self.cfg_scale,
            threshold=self.threshold, cache=self.cache, seed=self.seed,
        )[0]  # fmt: skip
        for stop in stop_strings:  # complete_ids cuts too; keep the contract local and explicit
            if stop and stop in reply:
                reply = reply[: reply.index(stop)]
        return reply

    def _generation_plan(self, prompt_len: int) -> tuple[int, int, int]:
        """(gen_length, block_length, steps) for one prompt: the budget is cut to fit
        max_length and rounded down to whole blocks (SPEC §5.3); a fixed canvas keeps its
        tokens-per-step ratio."""
        block = self.block_length or self.gen_length
        available = min(self.gen_length, self.max_length - prompt_len)
        gen_length = available // block * block
        if gen_length <= 0:
            raise ScoringError(
                f"a {prompt_len}-token prompt leaves no room for one {block}-token block within "
                f"max_length={self.max_length}; shorten the prompt or lower block_length"
            )
        if self.variable_length:
            return gen_length, block, min(self.steps or block, block)
        blocks = gen_length // block
        steps = min(self.steps or gen_length, gen_length)
        return gen_length, block, max(blocks, steps // blocks * blocks)


# ---------------------------------------------------------------- running tasks


def run_tasks(model_or_checkpoint, tasks: Sequence[str], *, limit: int | float | None = None,
              include_path: str | pathlib.Path | Sequence[str | pathlib.Path] | None = None,
              num_fewshot: int | None = None, evaluate_kwargs: dict[str, Any] | None = None,
              **model_args) -> dict:  # fmt: skip
    """Run lm-eval `tasks` (names, tags or groups) on a model and return lm-eval's results
    dict (`results["results"][task]["acc,none"]`, ...).

    `model_or_checkpoint`: an `IlladaLM`, a `Model` or a checkpoint path; `model_args` go to
    `IlladaLM` (ignored for an `IlladaLM`). The shipped tasks (`illada_jax.eval.tasks`) are
    always on the include path, after `include_path` entries; lm-eval's built-in tasks are too.
    `evaluate_kwargs` go to `lm_eval.simple_evaluate` (e.g. `bootstrap_iters=0`).
    """
    if isinstance(model_or_checkpoint, IlladaLM):
        lm = model_or_checkpoint
    elif isinstance(model_or_checkpoint, Model):
        lm = IlladaLM(model=model_or_checkpoint, **model_args)
    else:
        lm = IlladaLM(checkpoint=str(model_or_checkpoint), **model_args)
    if isinstance(include_path, str | pathlib.Path):
        include_path = [include_path]
    with tempfile.TemporaryDirectory(prefix="illada-tasks-") as tmp:
        paths = [str(shipped_tasks.materialize(tmp)), *map(str, include_path or [])]
        return lm_eval.simple_evaluate(
            model=lm, tasks=list(tasks), limit=limit, num_fewshot=num_fewshot,
            task_manager=TaskManager(include_path=paths), **(evaluate_kwargs or {}),
        )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's command line with the `illada` model registered and the shipped tasks on the
    include path (unless `--include_path` is given)."""
    from lm_eval.__main__ import cli_evaluate

    argv = list(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="illada-tasks-") as tmp:
        if not any(arg.startswith("--include_path") for arg in argv):
            argv += ["--include_path", str(shipped_tasks.materialize(tmp))]
        sys.argv = [sys.argv[0], *argv]
        cli_evaluate()


if __name__ == "__main__":
    main()
