"""Verifiable rewards as code, for online RL (diffu-GRPO, as in d1: Zhao et al. 2025).

A reward is a plain Python function `reward(prompt: str, completion: str, example: dict) ->
float`: `prompt` is the prompt text, `completion` the decoded answer of the model, `example`
the whole data record (`data/chat/rl.py`'s `RlExample.fields`, which always holds "answer").
`register(name)` adds one to the registry; `get(spec)` resolves a spec into one function and
`score(...)` runs it over a batch, refusing anything that is not a finite number.

Spec syntax (`get`): terms joined by `+`, each optionally weighted as `WEIGHT*TERM` (WEIGHT a
plain decimal, maybe negative: `2`, `0.5`, `-0.1`); the reward is the weighted sum of its terms,
e.g. `final_number+0.5*format_regex`. A term is
- a registered name: the built-ins `exact_match`, `final_number`, `format_regex`, or any
  `@register`-ed function;
- `regex:PATTERN`: `format_regex(PATTERN)`. The pattern runs to the end of the spec (it may
  hold `+` and `*`), so a regex term comes last: `final_number+0.5*regex:^\\d+$`;
- `module.sub:function` (imported) or `path/to/file.py:function` (the file is loaded; a relative
  path is relative to the current directory), as with `config:path.py:function`.

Built-ins:
- `exact_match`: 1.0 when the stripped completion equals the stripped example["answer"];
- `final_number`: 1.0 when the completion's final number equals the reference number (the
  GSM8K convention, see `final_number`'s docstring);
- `format_regex`: 1.0 when `re.search(pattern, completion, re.DOTALL)` matches, the pattern
  being example["format_pattern"] when the record has one, else the configured pattern, else
  d1's `<reasoning>...</reasoning> <answer>...</answer>` layout (`DEFAULT_FORMAT_PATTERN`).
"""

from __future__ import annotations

import decimal
import importlib
import importlib.util
import math
import numbers
import pathlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from illada_jax.errors import IlladaError
from illada_jax.pyfiles import load_module_file

RewardFn = Callable[[str, str, dict], float]

REGEX_PREFIX = "regex:"
# d1's format reward for GSM8K: reasoning in <reasoning> tags, then the answer in <answer> tags.
DEFAULT_FORMAT_PATTERN = r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>"
_SPEC_HELP = (
    "a registered name, regex:PATTERN, module.path:function or path/to/file.py:function; "
    "join terms with + and weight them as 0.5*name (e.g. final_number+0.5*format_regex)"
)
_USER_MODULE_PREFIX = "illada_rewards"
_REGISTRY: dict[str, RewardFn] = {}


class RewardError(IlladaError, ValueError):
    """A reward spec that does not resolve, or a reward that fails or returns a non-number."""


# ------------------------------------------------------------------------------ registry


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: register a reward function under `name` (usable in any spec).

    Registering the same function again (a module imported twice, a notebook cell run again)
    replaces it; a different function under a taken name is refused.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w.-]*", name):
        raise RewardError(
            f"reward name {name!r} is not valid; use letters, digits, _, . or - "
            "(starting with a letter or _), without : + * or spaces"
        )

    def decorator(function: RewardFn) -> RewardFn:
        old = _REGISTRY.get(name)
        if old is not None and _identity(old) != _identity(function):
            raise RewardError(
                f"reward name {name!r} is already registered by {_identity(old)}; register "
                f"{_identity(function)} under another name"
            )
        _REGISTRY[name] = function
        return function

    return decorator


def _identity(function: Callable) -> str:
    module = getattr(function, "__module__", None)
    return f"{module}.{getattr(function, '__qualname__', repr(function))}"


def names() -> list[str]:
    """The registered reward names, sorted."""
    return sorted(_REGISTRY)


def get(spec: str | RewardFn) -> RewardFn:
    """The reward function a spec names (syntax in the module docstring); a callable is
    returned as it is. Raises `RewardError` for a spec that does not resolve."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise RewardError(f"reward spec {spec!r} is empty or not a string; give {_SPEC_HELP}")
    terms = list(_parse_terms(spec))
    if len(terms) == 1 and terms[0][0] is None:  # a single unweighted term keeps its function
        return _resolve(terms[0][1])
    return _weighted([(ref, _resolve(ref), 1.0 if w is None else w) for w, ref in terms], spec)


_WEIGHT = re.compile(r"\s*(-?(?:\d+(?:\.\d*)?|\.\d+))\s*\*")


def _parse_terms(spec: str) -> Iterator[tuple[float | None, str]]:
    """(weight or None, reference) per `+`-joined term; a `regex:` term takes the rest."""
    rest = spec
    while True:
        match = _WEIGHT.match(rest)
        weight = float(match.group(1)) if match else None
        body = (rest[match.end() :] if match else rest).lstrip()
        if body.startswith(REGEX_PREFIX):
            yield weight, body
            return
        reference, plus, rest = body.partition("+")
        if not reference.strip():
            raise RewardError(f"reward spec {spec!r} has an empty term; give {_SPEC_HELP}")
        yield weight, reference.strip()
        if not plus:
            return


def _resolve(reference: str) -> RewardFn:
    """One term: a registered name, regex:PATTERN, or a user function reference."""
    if reference in _REGISTRY:
        return _REGISTRY[reference]
    if reference.startswith(REGEX_PREFIX):
        return format_regex(reference[len(REGEX_PREFIX) :])
    if ":" in reference:
        return _user_function(reference)
    raise RewardError(
        f"unknown reward {reference!r}; registered: {', '.join(names())}; or give {_SPEC_HELP}"
    )


def _user_function(reference: str) -> RewardFn:
    """`module.sub:function` or `path/to/file.py:function` (the attribute may be dotted)."""
    where, _, attribute = reference.rpartition(":")
    if not where or not attribute:
        raise RewardError(f"reward reference {reference!r} is incomplete; give {_SPEC_HELP}")
    if where.endswith(".py") or "/" in where:
        module = _load_file(pathlib.Path(where).expanduser())
    else:
        try:
            module = importlib.import_module(where)
        except Exception as error:
            raise RewardError(
                f"reward module {where!r} does not import ({type(error).__name__}: {error}); "
                "make it importable (installed or on PYTHONPATH) or give path/to/file.py:function"
            ) from error
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            public = sorted(
                n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
            )
            raise RewardError(
                f"{where} has no {attribute!r}; its public functions are "
                f"{', '.join(public) or 'none'}: name one of them after the ':'"
            )
        target = getattr(target, part)
    if not callable(target):
        raise RewardError(
            f"{reference} is a {type(target).__name__}, not a function; point at a function "
            "reward(prompt, completion, example) -> float"
        )
    return target


def _load_file(path: pathlib.Path):
    if not path.is_file():
        raise RewardError(
            f"reward file {path} does not exist; give path/to/file.py:function relative to the "
            f"current directory ({pathlib.Path.cwd()}) or an absolute path"
        )
    return load_module_file(
        path,
        f"{_USER_MODULE_PREFIX}.{path.stem}",
        lambda error: RewardError(
            f"reward file {path} does not import ({type(error).__name__}: {error}); fix the file"
        ),
    )


# ------------------------------------------------------------------------------ sums


def weighted_sum(rewards: Mapping[str | RewardFn, float]) -> RewardFn:
    """The reward sum(weight * reward) over `{spec or function: weight}`; each spec resolves
    as in `get`. A failing or non-finite term raises `RewardError` naming that term."""
    if not rewards:
        raise RewardError("weighted_sum needs at least one reward; give {name: weight, ...}")
    terms = []
    for key, weight in rewards.items():
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            raise RewardError(f"the weight of reward {key!r} is {weight!r}; give a number")
        name = key if isinstance(key, str) else getattr(key, "__name__", repr(key))
        terms.append((name, get(key), float(weight)))
    return _weighted(terms, "+".join(f"{w:g}*{name}" for name, _, w in terms))


def _weighted(terms: list[tuple[str, RewardFn, float]], name: str) -> RewardFn:
    def reward(prompt: str, completion: str, example: dict) -> float:
        return sum(
            weight * _checked(fn, term, prompt, completion, example) for term, fn, weight in terms
        )

    reward.__name__ = reward.__qualname__ = name
    reward.terms = tuple(terms)  # (name, function, weight): what a log can break down
    return reward


# ------------------------------------------------------------------------------ scoring


def _checked(fn: RewardFn, name: str, prompt: str, completion: str, example: dict) -> float:
    """fn(...) as a finite float, or `RewardError` naming `name` and what went wrong."""
    fix = f"make {name} return a finite float for every completion"
    try:
        value = fn(prompt, completion, example)
    except RewardError:
        raise  # already says what is wrong and how to fix it
    except Exception as error:
        raise RewardError(
            f"reward {name!r} raised {type(error).__name__}: {error}; {fix}"
        ) from error
    if isinstance(value, numbers.Real) and math.isfinite(float(value)):
        return float(value)
    raise RewardError(f"reward {name!r} returned {value!r} ({type(value).__name__}); {fix}")


def score(
    reward_fn: RewardFn,
    name: str,
    prompts: Sequence[str],
    completions: Sequence[str],
    examples: Sequence[dict],
) -> np.ndarray:
    """float32 [n] rewards, one per (prompt, completion, example), all the same length n.

    Raises `RewardError("reward NAME on example I: ...")` when the function raises or returns a
    non-number, NaN or inf (a bad reward would otherwise poison the advantages silently).
    """
    if not len(prompts) == len(completions) == len(examples):
        raise RewardError(
            f"score got {len(prompts)} prompts, {len(completions)} completions and "
            f"{len(examples)} examples; pass one prompt and one example per completion"
        )
    out = np.empty(len(completions), np.float32)
    for index, (prompt, completion, example) in enumerate(zip(prompts, completions, examples)):
        try:
            out[index] = _checked(reward_fn, name, prompt, completion, example)
        except RewardError as error:
            raise RewardError(f"reward {name!r} on example {index}: {error}") from error
    return out


# ------------------------------------------------------------------------------ built-ins


def _reference(example: dict, reward: str) -> str:
    answer = example.get("answer") if isinstance(example, Mapping) else None
    if answer is None:
        raise RewardError(
            f"{reward} needs the example's 'answer' (the reference); give each RL record an "
            "'answer' field"
        )
    return str(answer)


@register("exact_match")
def exact_match(prompt: str, completion: str, example: dict) -> float:
    """1.0 when the stripped completion equals the stripped example["answer"], else 0.0."""
    return float(completion.strip() == _reference(example, "exact_match").strip())


# A number: an optional sign (not after a word character: "3-4" is 3 and 4), digits with
# optional thousands separators, an optional decimal part.
_NUMBER = re.compile(r"(?:(?<![\w.])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+")
_FINAL_MARK = re.compile(r"####")


def parse_number(text: str) -> decimal.Decimal | None:
    """`text` as an exact number after removing spaces, `,`, `$`, `%` and a trailing `.`
    ("$1,234.50" -> 1234.50, "3.0" == "3"); None when it is not one."""
    clean = re.sub(r"[\s,$%]", "", text).rstrip(".")
    if not re.fullmatch(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", clean):
        return None
    return decimal.Decimal(clean)


def _numbers(text: str) -> list[decimal.Decimal]:
    return [parse_number(m.group()) for m in _NUMBER.finditer(text)]


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (braces inside it balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for position in range(begin, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            if depth == 0:
                return text[begin:position]
            depth -= 1
    return text[begin:]  # unclosed: what the model wrote after the brace


def completion_number(completion: str) -> decimal.Decimal | None:
    """The completion's answer: the last number in its last `\\boxed{}`, else the first number
    after its last `####`, else its last number; None when that place holds no number."""
    boxed = last_boxed(completion)
    if boxed is not None:
        found = _numbers(boxed)
        return found[-1] if found else None
    marks = list(_FINAL_MARK.finditer(completion))
    if marks:
        found = _numbers(completion[marks[-1].end() :])
        return found[0] if found else None
    found = _numbers(completion)
    return found[-1] if found else None


def reference_number(answer: str) -> decimal.Decimal:
    """The reference: the text after the last `####` (GSM8K), else the whole answer, as a
    number; `RewardError` when it is not one."""
    text = answer.rsplit("####", 1)[1] if "####" in answer else answer
    number = parse_number(text)
    if number is None:
        raise RewardError(
            f"final_number's reference {text.strip()!r} is not a number; give numeric answers "
            "('... #### 42' or '42'), or use exact_match for text answers"
        )
    return number


@register("final_number")
def final_number(prompt: str, completion: str, example: dict) -> float:
    """1.0 when the completion's number (`completion_number`) equals the reference number
    (`reference_number` of example["answer"]) exactly: "3.0" == "3", "$5.00" == "5",
    "1,234" == "1234"; 0.0 otherwise, also when the completion has no number."""
    reference = reference_number(_reference(example, "final_number"))
    return float(completion_number(completion) == reference)


def format_regex(pattern: str | None = None) -> RewardFn:
    """A reward: 1.0 when `re.search(pattern, completion, re.DOTALL)` matches, else 0.0.

    The pattern is example["format_pattern"] when the record has one (a per-example format),
    else `pattern`, else `DEFAULT_FORMAT_PATTERN`. Spec form: `regex:PATTERN`.
    """
    configured = DEFAULT_FORMAT_PATTERN if pattern is None else pattern
    if not configured:
        raise RewardError("format_regex got an empty pattern; give regex:PATTERN")
    _compile(configured)  # a bad pattern fails when the spec is resolved, not mid-run

    def reward(prompt: str, completion: str, example: dict) -> float:
        own = example.get("format_pattern") if isinstance(example, Mapping) else None
        return float(_compile(own or configured).search(completion) is not None)

    reward.__name__ = reward.__qualname__ = (
        "format_regex" if pattern is None else f"{REGEX_PREFIX}{pattern}"
    )
    return reward


def _compile(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern, re.DOTALL)  # re caches compiled patterns
    except (re.error, TypeError) as error:
        raise RewardError(
            f"format pattern {pattern!r} is not a valid regular expression ({error}); fix it"
        ) from error


register("format_regex")(format_regex())
