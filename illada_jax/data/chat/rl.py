"""Prompt records for online RL with verifiable rewards (diffu-GRPO, as in d1: Zhao et al. 2025).

A JSONL file holds one record per line (blank lines are ignored), in one of three forms:

    {"prompt": str, "answer": str[, "system": str], ...}
    {"messages": [... ending with a user turn], "answer": str, ...}
    {"question": str, "answer": str, ...}                      <- GSM8K's layout

The prompt side is checked with `sft.validate_messages(..., final_role="user")` (an optional
system message, then user and assistant turns alternating, ending with the user turn the model
answers). "answer" is the reference the reward compares with (a number is read as its text).
Every other field is kept: the whole record is what a reward receives as `example`
(`illada_jax/rewards.py`), so extra fields such as "format_pattern" reach it.

Bad lines follow the SFT rule: `on_error="raise"` (default) stops at the first one with
`RlFormatError("path:line: problem")`; `on_error="skip"` skips it and records `(line, problem)`.

`arithmetic_task(n, seed)` makes a small verifiable task ("What is 3 + 4?" -> "7") for the CPU
demo; `write_jsonl` writes records as JSONL.
"""

from __future__ import annotations

import json
import pathlib
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from illada_jax import storage
from illada_jax.data.chat.sft import (
    ChatFormatter,
    Message,
    SftFormatError,
    iter_jsonl,
    validate_messages,
)

PROMPT_KEYS = ("messages", "prompt", "question")
ARITHMETIC_OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


class RlFormatError(SftFormatError):
    """An RL prompt record or JSONL line breaks the rules of this module; the message says which."""


class RlExample(NamedTuple):
    """One RL prompt: the dialogue to answer (ending with a user turn), the reference answer,
    and the whole record (with "answer" as text) that rewards receive as `example`."""

    messages: list[Message]
    answer: str
    fields: dict[str, Any]


def parse_rl_record(record: Any) -> RlExample:
    """A record in one of the module docstring's forms as a validated `RlExample`."""
    if not isinstance(record, dict):
        raise RlFormatError("the line is not a JSON object")
    given = [key for key in PROMPT_KEYS if key in record]
    if len(given) != 1:
        found = f"found {', '.join(map(repr, given))}" if given else "found none"
        raise RlFormatError(
            f"each RL record needs exactly one of 'messages', 'prompt' or 'question' ({found})"
        )
    answer = record.get("answer")
    if answer is None:
        raise RlFormatError(
            "each RL record needs an 'answer' (the reference the reward compares with)"
        )
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        raise RlFormatError(f"'answer' is a {type(answer).__name__}; give the reference as text")
    answer = str(answer)
    if not answer.strip():
        raise RlFormatError("'answer' is empty; give the reference the reward compares with")
    if given == ["messages"]:
        if "system" in record:
            raise RlFormatError("'system' goes with 'prompt'; put it in 'messages' instead")
        messages = validate_messages(record["messages"], final_role="user")
    else:
        messages = [{"role": "user", "content": record[given[0]]}]
        if "system" in record:
            messages.insert(0, {"role": "system", "content": record["system"]})
        messages = validate_messages(messages, final_role="user")
    return RlExample(messages, answer, {**record, "answer": answer})


def iter_rl_jsonl(
    path: str | pathlib.Path,
    *,
    on_error: str = "raise",
    skipped: list[tuple[int, str]] | None = None,
) -> Iterator[RlExample]:
    """RL examples of a JSONL file. Bad lines raise `RlFormatError("path:line: problem")`, or
    with `on_error="skip"` are skipped and appended to `skipped` as (line number, problem)."""
    return iter_jsonl(path, parse_rl_record, on_error=on_error, skipped=skipped,
                      error=RlFormatError)  # fmt: skip


def read_rl_jsonl(
    path: str | pathlib.Path, *, on_error: str = "raise"
) -> tuple[list[RlExample], list[tuple[int, str]]]:
    """(examples, skipped lines as (line number, problem)) of a JSONL file."""
    skipped: list[tuple[int, str]] = []
    examples = list(iter_rl_jsonl(path, on_error=on_error, skipped=skipped))
    return examples, skipped


def tokenize_rl_examples(
    examples: Iterable[RlExample], formatter: ChatFormatter
) -> list[list[int]]:
    """Prompt ids per example (`ChatFormatter.prompt`: the dialogue + the assistant header),
    ready for the sampler to complete."""
    return [formatter.prompt(example.messages) for example in examples]


def prompt_text(example: dict) -> str:
    """The text a reward receives as the prompt: the record's last user message, or its
    "prompt" / "question"."""
    if "messages" in example:
        return [m for m in example["messages"] if m.get("role") == "user"][-1]["content"]
    return str(example.get("prompt", example.get("question", "")))


def write_jsonl(records: Iterable[dict[str, Any]], path: str | pathlib.Path) -> int:
    """Write records as JSONL (local or gs://); returns the count."""
    count = 0
    with storage.path(path).open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def arithmetic_task(
    n: int, seed: int = 0, *, max_operand: int = 9, operations: Sequence[str] = ("+", "-")
) -> list[dict[str, str]]:
    """`n` records `{"prompt": "What is A OP B?", "answer": "C"}`, A and B in 0..max_operand,
    the same for the same arguments. Subtraction puts the larger operand first, so answers are
    never negative (less for a tiny demo model to learn)."""
    if n < 0 or max_operand < 0:
        raise ValueError(
            f"arithmetic_task needs n >= 0 and max_operand >= 0 (got {n}, {max_operand})"
        )
    unknown = [op for op in operations if op not in ARITHMETIC_OPERATIONS]
    if unknown or not operations:
        raise ValueError(
            f"arithmetic_task operations {list(operations)!r}: choose from "
            f"{', '.join(ARITHMETIC_OPERATIONS)}"
        )
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        op = rng.choice(list(operations))
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        if op == "-" and a < b:
            a, b = b, a
        records.append(
            {"prompt": f"What is {a} {op} {b}?", "answer": str(ARITHMETIC_OPERATIONS[op](a, b))}
        )
    return records
