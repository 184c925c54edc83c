"""Preference pairs for objective=vrpo (docs/data.md#preference-pairs): JSONL records, chat
formatting and the prepared directory `illada prepare --format pref` writes.

A record is one JSON object per line with a prompt and two answers to it, the preferred one
first:
- `{"prompt": str, "chosen": str, "rejected": str[, "system": str]}`, or
- `{"messages": [...], "chosen": str, "rejected": str}` where `messages` is a dialogue as SFT
  reads it (docs/data.md#sft-data: optional system message, then alternating user/assistant
  turns), ending with the user turn being answered.
An answer may also be given as one assistant message `{"role": "assistant", "content": str}`.
The prompt is formatted with the chat template (`ChatFormatter.prompt`: it ends with the
assistant header) and each answer is its content followed by EOS, exactly as an SFT pair.

Bad records (not JSON, a missing or empty field, a broken dialogue, chosen equal to rejected)
are refused by the SFT rules and counted per problem; an input with no usable record is an
error.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, NamedTuple

import numpy as np

from illada_jax import storage
from illada_jax.data.chat.sft import (
    ChatFormatter,
    Message,
    SftFormatError,
    iter_jsonl,
    validate_messages,
)

PAIRS_FILE = "pairs.npz"


class PreferencePair(NamedTuple):
    """Token ids: the formatted prompt and the two answers (each content + EOS)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def _answer_text(record: dict, side: str) -> str:
    if side not in record:
        raise SftFormatError(f"the record has no {side!r} answer; each record needs 'chosen' "
                             "and 'rejected'")  # fmt: skip
    answer = record[side]
    if isinstance(answer, dict):
        if answer.get("role") != "assistant":
            raise SftFormatError(f"{side!r} as a message must have role 'assistant'")
        answer = answer.get("content")
    if not isinstance(answer, str) or not answer.strip():
        raise SftFormatError(f"{side!r} must be a non-empty string (or an assistant message)")
    return answer


def parse_preference(record: Any) -> tuple[list[Message], str, str]:
    """(the prompt dialogue, ending with a user turn; chosen text; rejected text) of a record,
    validated by the rules in the module docstring (`SftFormatError` names the problem)."""
    if not isinstance(record, dict):
        raise SftFormatError("the line is not a JSON object")
    if ("messages" in record) == ("prompt" in record):
        raise SftFormatError("expected either 'prompt' or 'messages' (not both)")
    if "messages" in record:
        messages = record["messages"]
    else:
        messages = [{"role": "user", "content": record["prompt"]}]
        if "system" in record:
            messages.insert(0, {"role": "system", "content": record["system"]})
    messages = validate_messages(messages, final_role="user")
    chosen, rejected = _answer_text(record, "chosen"), _answer_text(record, "rejected")
    if chosen.strip() == rejected.strip():
        raise SftFormatError("'chosen' and 'rejected' are the same answer: nothing to prefer")
    return messages, chosen, rejected


def read_preference_jsonl(path: storage.PathLike, formatter: ChatFormatter
                          ) -> tuple[list[PreferencePair], Counter, list[str]]:  # fmt: skip
    """(tokenised pairs, bad records counted by problem, the first 10 problems as
    `path:line: problem`) of a JSONL file."""
    skipped: list[tuple[int, str]] = []
    records = list(iter_jsonl(path, parse_preference, on_error="skip", skipped=skipped))
    eos = formatter.tokenizer.eos_id
    pairs = []
    for messages, chosen, rejected in records:
        chosen_ids, rejected_ids = formatter.tokenizer.encode_batch([chosen, rejected])
        pairs.append(PreferencePair(formatter.prompt(messages), [*chosen_ids, eos],
                                    [*rejected_ids, eos]))  # fmt: skip
    bad = Counter(problem for _, problem in skipped)
    return pairs, bad, [f"{path}:{number}: {problem}" for number, problem in skipped[:10]]


def pack_pairs(pairs: list[PreferencePair]) -> dict[str, np.ndarray]:
    """Flat storage: `tokens [T] int32` and `offsets [N, 4] int64` (prompt, chosen and rejected
    starts, end) per pair."""
    offsets = np.zeros((len(pairs), 4), np.int64)
    position = 0
    for index, pair in enumerate(pairs):
        lengths = np.cumsum([0, len(pair.prompt), len(pair.chosen), len(pair.rejected)])
        offsets[index] = position + lengths
        position += int(lengths[-1])
    tokens = np.fromiter((t for pair in pairs for part in pair for t in part), np.int32, position)
    return {"tokens": tokens, "offsets": offsets}


def unpack_pairs(tokens: np.ndarray, offsets: np.ndarray) -> list[PreferencePair]:
    """The inverse of `pack_pairs`."""
    return [
        PreferencePair(*(tokens[a:b].tolist() for a, b in zip(row[:-1], row[1:])))
        for row in offsets
    ]
