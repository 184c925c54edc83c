"""The lm-evaluation-harness model `illada` (docs/algorithms.md#lm-evaluation-harness): a `Model`
behind lm-eval's `LM` API.

    from illada_jax.eval import run_tasks
    results = run_tasks("runs/tiny", ["kjv_next_word", "kjv_verse_end"], limit=20, mc_num=32)
    results["results"]["kjv_next_word"]["acc,none"]

or, with the lm-eval command line (`illada_jax/cli/lm_eval.py` registers the model, then runs
lm-eval's CLI with the shipped tasks on the include path unless `--include_path` is given):

    python -m illada_jax.cli.lm_eval run --model illada --batch_size 32 \
        --model_args checkpoint=runs/tiny,loglikelihood_method=confidence --tasks illada_offline

(lm-eval's `--batch_size`, default 1, is the ELBO's MC batch; do not repeat it in model_args.)

Requests (all processed on this one process; lm-eval's rank / world size stay 0 / 1):
- `loglikelihood`: each (context, continuation) is tokenised by `_encode_pair`
  (docs/algorithms.md#lm-evaluation-harness) and scored with the Monte-Carlo ELBO
  (docs/algorithms.md#the-monte-carlo-elbo, `loglikelihood_method="elbo"`) one request at a time, or
  with iLLaDA's confidence score (docs/algorithms.md#confidence-scoring, `"confidence"`), where all
  continuations of one context are scored in one batch. `is_greedy`
  (docs/algorithms.md#greedy-check) is computed only with `check_greedy=True` (else False, as in the
  reference evaluations).
- `loglikelihood_rolling`: **a lower bound**, not an exact log-likelihood: the text (no BOS/EOS
  added) is cut into lm-eval's disjoint rolling windows (each window conditioned on the tokens
  before it, the first on BOS) and the windows' ELBOs (docs/algorithms.md#the-monte-carlo-elbo) are
  summed, whatever `loglikelihood_method` says.
- `generate_until`: one unpadded prompt at a time, as iLLaDA's evaluation does: fixed canvas
  (docs/algorithms.md#sampling) or variable length (docs/algorithms.md#variable-length-decoding),
  temperature 0 by default; the reply is cut at the first of the request's `until` strings, the EOS
  string and EoT. The request's `max_gen_toks` is
  ignored: `gen_length` (model args) is the budget, as in the reference harnesses.

Seeds: every ELBO request uses the same `seed`, so a request's score does not depend on its
position in the batch (and candidates of one question share their random streams).
"""

from __future__ import annotations

import copy
import pathlib
import tempfile
from collections.abc import Sequence
from typing import Any

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

from illada_jax.diffusion.likelihood import ScoringError
from illada_jax.errors import IlladaError
from illada_jax.eval import tasks as shipped_tasks
from illada_jax.inference import Model, load
from illada_jax.sampling.generate import SamplingOptions
from illada_jax.sampling.schedule import SamplingError

METHODS = ("elbo", "confidence")


def _quiet_git_commit_hash() -> str | None:
    """lm-eval records the git commit of the working directory in its results by running
    `git describe` with git's stderr on the terminal, so every evaluation outside a git checkout
    printed "fatal: not a git repository". The same lookup, with git's stderr discarded."""
    import subprocess

    try:
        out = subprocess.run(["git", "describe", "--always"], capture_output=True, check=True)
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None
    return out.stdout.decode().strip() or None


import lm_eval.evaluator  # noqa: E402  (after the guarded import above)

lm_eval.evaluator.get_git_commit_hash = _quiet_git_commit_hash


class HarnessConfigError(IlladaError, ValueError):
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


def _as(kind, name: str, value):
    """kind(value), with an error naming the argument."""
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise HarnessConfigError(f"{name}={value!r} is not a {kind.__name__}") from None


def _as_optional(kind, name: str, value):
    """None for None / "none" / ""; else kind(value), with an error naming the argument."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    return _as(kind, name, value)


def _batch_size(value, mc_num: int) -> int:
    """lm-eval's batch size is the MC batch; unset or "auto" (lm-eval's option) means
    min(mc_num, 32)."""
    size = None if str(value).startswith("auto") else _as_optional(int, "batch_size", value)
    if size is None:
        return min(mc_num, 32)
    if size < 1 or mc_num % size:
        raise HarnessConfigError(
            f"batch_size={size} must divide mc_num={mc_num} (docs/algorithms.md#the-monte-carlo-elbo); e.g. batch_size="
            f"{min(mc_num, 32)}"
        )
    return size


# ---------------------------------------------------------------- the lm-eval model


def _load_model(checkpoint, model, tokenizer) -> Model:
    if (checkpoint is None) == (model is None):
        raise HarnessConfigError(
            "give exactly one of checkpoint=PATH (a run or checkpoint directory) or model= "
            "(an illada_jax.Model)"
        )
    if model is None:
        model = load(checkpoint)
    if not isinstance(model, Model):
        raise HarnessConfigError(f"model= must be an illada_jax.Model, got {type(model)}")
    if tokenizer is not None:
        from illada_jax.data.tokenizers.tokenizer import Tokenizer

        model = copy.copy(model)  # the caller's Model keeps its own tokenizer
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
        loglikelihood_method: "elbo" (docs/algorithms.md#the-monte-carlo-elbo) or "confidence"
            (docs/algorithms.md#confidence-scoring).
        mc_num, batch_size: MC samples and samples per forward batch for the ELBO (mc_num=1 is
            exact for single-token continuations). lm-eval's `--batch_size` lands here.
        cfg_scale: unsupervised CFG for the ELBO, the confidence score, the greedy check and
            generation (0 = off).
        add_bos_token: prepend BOS to every context (iLLaDA's `add_bos_token`).
        pad_eos: append one EOS after the whole input in every scoring forward, never scored
            (iLLaDA's `padd_eos`, docs/algorithms.md#confidence-scoring).
        check_greedy: compute `is_greedy` (docs/algorithms.md#greedy-check; slow: one forward per
            answer token).
        max_length: longest sequence (context + continuation, or prompt + generation);
            default the model's `max_seq_len`.
        gen_length, steps, block_length, variable_length, threshold, cache, temperature,
            remasking: generation (docs/algorithms.md#sampling and the sections after it).
                `block_length` defaults to
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
        self.mc_num = _as(int, "mc_num", mc_num)
        if self.mc_num < 1:
            raise HarnessConfigError(f"mc_num={mc_num} must be >= 1")
        self.batch_size = _batch_size(batch_size, self.mc_num)
        self.cfg_scale = _as(float, "cfg_scale", cfg_scale)
        self.add_bos_token = _as_bool("add_bos_token", add_bos_token)
        self.pad_eos = _as_bool("pad_eos", pad_eos)
        self.check_greedy = _as_bool("check_greedy", check_greedy)
        self.max_length = _as_optional(int, "max_length", max_length) or (
            self.model.config.max_seq_len
        )  # fmt: skip
        self.gen_length = _as(int, "gen_length", gen_length)
        self.variable_length = _as_bool("variable_length", variable_length)
        default_block = 32 if self.variable_length else None
        self.block_length = _as_optional(int, "block_length", block_length) or default_block
        self.steps = _as_optional(int, "steps", steps)
        self.threshold = _as_optional(float, "threshold", threshold)
        self.cache = str(cache)
        self.temperature = _as(float, "temperature", temperature)
        self.remasking = str(remasking)
        self.seed = _as(int, "seed", seed)
        self._suffix = (self.model.special_ids.eos,) if self.pad_eos else ()
        self._check_sampling_options()

    def _check_sampling_options(self) -> None:
        """Bad generation settings fail here, before any request runs."""
        try:
            SamplingOptions(temperature=self.temperature, remasking=self.remasking,
                            cfg_scale=self.cfg_scale, threshold=self.threshold,
                            cache=self.cache)  # fmt: skip
        except SamplingError as err:
            raise HarnessConfigError(f"generation settings: {err}") from None
        if self.gen_length < 1 or min(self.block_length or 1, self.steps or 1) < 1:
            raise HarnessConfigError(
                f"gen_length={self.gen_length}, block_length={self.block_length} and "
                f"steps={self.steps} must be positive"
            )

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
        """docs/algorithms.md#lm-evaluation-harness: move the context's trailing whitespace onto the
        continuation, encode context + continuation and context; the continuation ids are the joint
        encoding's suffix beyond the context's length. Returns (context ids [P], continuation ids
        [A]); the context gets BOS with `add_bos_token` (or when it is empty: nothing to condition
        on otherwise)."""
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
        return self.model.log_likelihood(prompt, answer, mc_num=self.mc_num,
                                         batch_size=self.batch_size, cfg_scale=self.cfg_scale,
                                         seed=self.seed, suffix=self._suffix)  # fmt: skip

    def _confidence(self, prompt, answers) -> np.ndarray:
        return np.asarray(self.model.score_confidence(prompt, list(answers),
                                                      cfg_scale=self.cfg_scale,
                                                      suffix=self._suffix))  # fmt: skip

    def _greedy(self, prompt, answers) -> np.ndarray:
        """docs/algorithms.md#greedy-check per answer."""
        return np.asarray(self.model.is_greedy(prompt, list(answers), cfg_scale=self.cfg_scale,
                                               suffix=self._suffix))  # fmt: skip

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
        max_length and rounded down to whole blocks (docs/algorithms.md#variable-length-decoding); a
        fixed canvas keeps its tokens-per-step ratio."""
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
              include_defaults: bool = True, num_fewshot: int | None = None,
              task_data: dict[str, str] | None = None,
              evaluate_kwargs: dict[str, Any] | None = None, **model_args) -> dict:  # fmt: skip
    """Run lm-eval `tasks` (names, tags or groups) on a model and return lm-eval's results
    dict (`results["results"][task]["acc,none"]`, ...).

    `model_or_checkpoint`: an `IlladaLM`, a `Model`, a checkpoint path, or a function returning
    a `Model` (called after the task names are checked: a wrong name costs no load);
    `model_args` go to `IlladaLM` (an `IlladaLM` comes with its own). The shipped tasks (`illada_jax.eval.tasks`) are
    always on the include path, with the `include_path` entries; lm-eval's built-in tasks are
    too unless `include_defaults=False` (indexing them takes a few seconds; their data must be
    in the local datasets cache when offline). `evaluate_kwargs` go to `lm_eval.simple_evaluate`
    (e.g. `bootstrap_iters=0`, `log_samples=False`). `task_data`: {task: local data file} runs a
    task (lm-eval's own, e.g. gsm8k) on a local copy of its data, offline (`local_task_file`).
    """
    if isinstance(include_path, str | pathlib.Path):
        include_path = [include_path]
    with tempfile.TemporaryDirectory(prefix="illada-tasks-") as tmp:
        manager = task_manager_for(include_path, tmp, include_defaults)
        check_task_names(manager, tasks)  # before a checkpoint is loaded
        unknown = sorted(set(task_data or {}) - set(tasks))
        if unknown:
            raise HarnessConfigError(f"task data given for {unknown}, which --tasks does not name")
        specs = [local_task_file(manager, t, task_data[t], tmp) if t in (task_data or {}) else t
                 for t in tasks]  # fmt: skip
        lm = _as_lm(model_or_checkpoint, model_args)
        return lm_eval.simple_evaluate(
            model=lm, tasks=specs, limit=limit, num_fewshot=num_fewshot,
            task_manager=manager, **(evaluate_kwargs or {}),
        )  # fmt: skip


def task_manager_for(include_path: Sequence[str] | None, tmp: str, include_defaults: bool = True):
    """lm-eval's TaskManager over the shipped tasks (materialised under `tmp`), `include_path`
    and (unless `include_defaults=False`) lm-eval's own tasks."""
    paths = [str(shipped_tasks.materialize(tmp)), *map(str, include_path or [])]
    return TaskManager(include_path=paths, include_defaults=include_defaults)


DATA_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def local_task_file(manager, task: str, data_file: str, tmp: str) -> str:
    """A task YAML (in `tmp`) that includes `task`'s own and reads every split it names (test,
    validation, training, few-shot) from `data_file` through the `datasets` builder of its
    suffix, so a standard task runs offline on a local copy of its data. Few-shot examples then
    come from the same file: pass `num_fewshot=0` to keep them out of the prompts."""
    import yaml

    entry = manager.task_index.get(task)
    if entry is None or entry.yaml_path is None or entry.cfg is None:
        raise HarnessConfigError(f"--task-data {task}=...: {task} is not a task defined by a YAML "
                                 "file (a group or a tag?); name one of its tasks")  # fmt: skip
    path = pathlib.Path(data_file).expanduser().resolve()
    builder = DATA_BUILDERS.get(path.suffix)
    if not path.is_file() or builder is None:
        raise HarnessConfigError(f"--task-data {task}={data_file}: expected an existing "
                                 f"{'/'.join(DATA_BUILDERS)} file with the task's fields")  # fmt: skip
    splits = {entry.cfg[key] for key in ("test_split", "validation_split", "training_split",
                                         "fewshot_split") if entry.cfg.get(key)}  # fmt: skip
    config = {"include": str(entry.yaml_path), "task": task, "dataset_path": builder,
              "dataset_name": None, "dataset_kwargs": {"data_files": dict.fromkeys(splits, str(path))}}  # fmt: skip
    target = pathlib.Path(tmp) / f"local_{task}.yaml"
    target.write_text(yaml.safe_dump(config))
    return str(target)


def check_task_names(manager, tasks: Sequence[str]) -> None:
    """Raise HarnessConfigError naming every task that is neither a task, group or tag the
    manager knows (glob patterns allowed, as in lm-eval) nor a task YAML file."""
    import difflib

    unknown = [t for t in tasks if not manager.match_tasks([t]) and not pathlib.Path(t).is_file()]
    if not tasks or unknown:
        close = sorted(
            {m for t in unknown for m in difflib.get_close_matches(t, manager.all_tasks)}
        )
        raise HarnessConfigError(
            (f"unknown lm-eval task(s) {', '.join(unknown)}" if unknown else "no task given")
            + (f"; close matches: {', '.join(close)}" if close else "")
            + f"; the shipped tasks are {', '.join(shipped_tasks.TASK_NAMES)} (tag "
            + f"{shipped_tasks.TAG})"
            + " (lm-eval's own: `lm-eval ls tasks`; more with --include-path DIR)"
        )


def _as_lm(model_or_checkpoint, model_args: dict) -> IlladaLM:
    if isinstance(model_or_checkpoint, IlladaLM):
        if model_args:
            raise HarnessConfigError(
                f"model arguments {sorted(model_args)} given with a ready IlladaLM; pass a "
                "Model or a checkpoint path instead, or build the IlladaLM with them"
            )
        lm = model_or_checkpoint
    elif isinstance(model_or_checkpoint, Model):
        lm = IlladaLM(model=model_or_checkpoint, **model_args)
    elif callable(model_or_checkpoint):
        lm = IlladaLM(model=model_or_checkpoint(), **model_args)
    else:
        lm = IlladaLM(checkpoint=str(model_or_checkpoint), **model_args)
    return lm
