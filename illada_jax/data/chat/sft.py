"""Supervised fine-tuning data (docs/algorithms.md#sft-llada-style): chat formatting, LLaDA-style
batches, iLLaDA streams.

Chat template. A `ChatTemplate` is a few tuples of pieces: a `str` piece is encoded as text, a
`Special` piece is one token id looked up by name in the tokenizer ("bos"/"eos"/"pad"/"eot" or a
piece such as "<|start_header_id|>"). Special tokens can therefore appear in formatted
sequences while user text never produces them (the tokenizer guarantees that for control /
special tokens). Each text piece and each message content is encoded on its own. The default
is LLaDA's Llama-3-style markup (docs/algorithms.md#sft-llada-style), also our iLLaDA default (its
markup is unknown, docs/models.md#unverified-values):

    <BOS>[<|start_header_id|>system<|end_header_id|>\\n\\n{system}<|eot_id|>]
    <|start_header_id|>user<|end_header_id|>\\n\\n{user}<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\\n\\n          <- end of the prompt
    {answer}<EOS>                                                <- the answer

Every earlier turn of a multi-turn dialogue (assistant turns too) is closed by <|eot_id|>; an
n-turn dialogue gives n (prompt, answer) pairs, the prompt holding all previous turns.

Dialogues are lists of `{"role": "system"|"user"|"assistant", "content": str}`: an optional
system message first, then user and assistant strictly alternating, starting with a user turn
and ending with an assistant turn; no content may be empty or whitespace only. JSONL input holds
one `{"messages": [...]}` or `{"prompt": str, "response": str[, "system": str]}` per line (blank
lines are ignored). Rule for bad lines: `on_error="raise"` (default) stops at the first one with
`path:line: problem`; `on_error="skip"` skips it and records `(line, problem)`.

LLaDA style (docs/algorithms.md#sft-llada-style): `llada_sft_batch` right-pads each
prompt+answer+EOS with EOS to the batch's longest example (optionally rounded up to a multiple,
capped at max_len); the padding is part of the answer. Over-long rule: an example longer than
max_len is *dropped and counted* by `filter_long_pairs` before batching (cutting it would lose
either the start of the prompt or the answer's EOS, and dropping inside the batch would change the
batch size); `llada_sft_batch` refuses one that does not fit.

iLLaDA style (docs/algorithms.md#sft-illada-style): each dialogue gives one example, the whole
formatted dialogue ending in one EOS (= the last pair's prompt + answer); examples are concatenated
into one stream cut into fixed windows by `illada_stream_windows`. All tokens are maskable; the last
partial window is padded and marked with segment id 0.

Demo data: `demo_conversations()` reads the chatterbot-corpus English YAML files.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from illada_jax import storage
from illada_jax.errors import IlladaError, MissingInputError

MESSAGE_ROLES = ("system", "user", "assistant")
ON_ERROR = ("raise", "skip")
Message = dict[str, str]


class SftFormatError(IlladaError, ValueError):
    """A dialogue or a JSONL line breaks the SFT data rules; the message names the problem."""


@dataclasses.dataclass(frozen=True)
class Special:
    """A template piece that is one token: "bos", "eos", "pad", "eot" or a piece name."""

    name: str


Piece = str | Special


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """Chat markup as pieces. "{role}" in a text piece of `header` becomes the role name."""

    begin: tuple[Piece, ...] = (Special("bos"),)
    header: tuple[Piece, ...] = (
        Special("<|start_header_id|>"),
        "{role}",
        Special("<|end_header_id|>"),
        "\n\n",
    )
    turn_end: tuple[Piece, ...] = (Special("<|eot_id|>"),)
    answer_end: tuple[Piece, ...] = (Special("eos"),)
    system_prompt: str | None = None  # used when a dialogue has no system message


DEFAULT_TEMPLATE = ChatTemplate()


class SftPair(NamedTuple):
    """One training pair: prompt ids (up to and including the assistant header) and answer ids
    (the assistant content followed by EOS)."""

    prompt: list[int]
    answer: list[int]


# ------------------------------------------------------------------------------ validation


def validate_messages(messages: Any, *, final_role: str = "assistant") -> list[Message]:
    """Check a dialogue against the rules in the module docstring; return it as plain
    `{"role", "content"}` dicts. `final_role="user"` checks a prompt awaiting an answer, where
    an earlier assistant turn may be empty (a model's reply in a chat can be)."""
    if not isinstance(messages, list) or not messages:
        raise SftFormatError("'messages' must be a non-empty list")
    clean = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise SftFormatError(f"message {index} is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in MESSAGE_ROLES:
            raise SftFormatError(
                f"message {index} has role {role!r}; allowed: {', '.join(MESSAGE_ROLES)}"
            )
        empty_ok = final_role == "user" and role == "assistant"
        if not isinstance(content, str) or not (content.strip() or empty_ok):
            raise SftFormatError(f"message {index} ({role}) has empty or non-string content")
        clean.append({"role": role, "content": content})
    turns = clean[1:] if clean[0]["role"] == "system" else clean
    for index, message in enumerate(turns):
        expected = ("user", "assistant")[index % 2]
        if message["role"] != expected:
            raise SftFormatError(
                f"turn {index} is {message['role']!r} but {expected!r} was expected: after an "
                "optional first system message, user and assistant turns must alternate, "
                "starting with user"
            )
    if not turns or turns[-1]["role"] != final_role:
        raise SftFormatError(f"the dialogue must end with a {final_role} turn")
    return clean


def parse_record(record: Any) -> list[Message]:
    """A JSONL record (`{"messages": ...}` or `{"prompt", "response"[, "system"]}`) as a
    validated dialogue."""
    if not isinstance(record, dict):
        raise SftFormatError("the line is not a JSON object")
    has_messages, has_pair = "messages" in record, "prompt" in record or "response" in record
    if has_messages == has_pair:
        raise SftFormatError("expected either 'messages' or 'prompt' + 'response' (not both)")
    if has_messages:
        return validate_messages(record["messages"])
    messages = [
        {"role": "user", "content": record.get("prompt")},
        {"role": "assistant", "content": record.get("response")},
    ]
    if "system" in record:
        messages.insert(0, {"role": "system", "content": record["system"]})
    return validate_messages(messages)


def iter_jsonl(
    path: str | pathlib.Path,
    parse,
    *,
    on_error: str = "raise",
    skipped: list[tuple[int, str]] | None = None,
    error: type[SftFormatError] = SftFormatError,
) -> Iterator[Any]:
    """`parse(record)` of every JSON line of a file (blank lines ignored), by the SFT rules for
    bad lines: `parse` raises `SftFormatError` (or a subclass) naming the problem; a bad line
    raises `error("path:line: problem")`, or with `on_error="skip"` is skipped and appended to
    `skipped` as (line number, problem). Local or gs:// (a pod reads it from the bucket)."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r}: allowed values are {', '.join(ON_ERROR)}")
    with storage.path(path).open("rb") as f:
        for number, raw_line in enumerate(f, 1):
            if not raw_line.strip():
                continue
            try:
                try:
                    line = raw_line.decode("utf-8")
                except UnicodeDecodeError as problem:
                    raise SftFormatError(
                        f"not UTF-8 text ({problem.reason} at byte {problem.start}); is it a "
                        "JSONL file?"
                    ) from None
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as problem:
                    raise SftFormatError(f"invalid JSON ({problem.msg})") from None
                yield parse(record)
            except SftFormatError as problem:
                if on_error == "raise":
                    raise error(f"{path}:{number}: {problem}") from None
                if skipped is not None:
                    skipped.append((number, str(problem)))


def iter_sft_jsonl(
    path: str | pathlib.Path,
    *,
    on_error: str = "raise",
    skipped: list[tuple[int, str]] | None = None,
) -> Iterator[list[Message]]:
    """Dialogues of a JSONL file. Bad lines raise `SftFormatError("path:line: problem")`, or
    with `on_error="skip"` are skipped and appended to `skipped` as (line number, problem)."""
    return iter_jsonl(path, parse_record, on_error=on_error, skipped=skipped)


def read_sft_jsonl(
    path: str | pathlib.Path, *, on_error: str = "raise"
) -> tuple[list[list[Message]], list[tuple[int, str]]]:
    """(dialogues, skipped lines as (line number, problem)) of a JSONL file."""
    skipped: list[tuple[int, str]] = []
    dialogues = list(iter_sft_jsonl(path, on_error=on_error, skipped=skipped))
    return dialogues, skipped


def write_sft_jsonl(dialogues: Iterable[Any], path: str | pathlib.Path) -> int:
    """Write dialogues (message lists or `{"messages": ...}` dicts) as JSONL; returns the count."""
    count = 0
    with storage.path(path).open("w", encoding="utf-8") as f:
        for dialogue in dialogues:
            messages = dialogue["messages"] if isinstance(dialogue, dict) else dialogue
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
            count += 1
    return count


# ------------------------------------------------------------------------------ formatting


class ChatFormatter:
    """Formats validated dialogues into token ids with one tokenizer and one template."""

    def __init__(self, tokenizer, template: ChatTemplate = DEFAULT_TEMPLATE):
        self.tokenizer = tokenizer
        self.template = template
        self._begin = self._ids(template.begin)
        self._headers = {role: self._ids(template.header, role) for role in MESSAGE_ROLES}
        self._turn_end = self._ids(template.turn_end)
        self._answer_end = self._ids(template.answer_end)

    def _special(self, name: str) -> int:
        if name in ("bos", "eos", "pad", "eot"):
            token = getattr(self.tokenizer, f"{name}_id")
        else:
            token = self.tokenizer.token_id(name)
        if token is None or token == self.tokenizer.mask_id:
            raise ValueError(
                f"the chat template needs the special token {name!r}, which the tokenizer "
                f"{self.tokenizer!r} lacks (or maps to the mask id). Fix: use a tokenizer "
                "trained by `illada tokenizer train` (it has the Llama-3 header tokens) or "
                "pass a ChatTemplate that uses only tokens this tokenizer has"
            )
        return token

    def _ids(self, pieces: Sequence[Piece], role: str = "") -> list[int]:
        ids: list[int] = []
        for piece in pieces:
            if isinstance(piece, Special):
                ids.append(self._special(piece.name))
            else:
                ids += self.tokenizer.encode(piece.replace("{role}", role))
        return ids

    def _turns(self, messages: list[Message]) -> Iterator[tuple[str, list[int], list[int]]]:
        """(role, header ids, content ids) per message, a template system turn first."""
        if self.template.system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.template.system_prompt}, *messages]
        contents = self.tokenizer.encode_batch([m["content"] for m in messages])
        for message, content in zip(messages, contents):
            yield message["role"], self._headers[message["role"]], content

    def pairs(self, messages: list[Message]) -> list[SftPair]:
        """One `SftPair` per assistant turn: prompt = BOS + all previous turns (each closed by
        the turn end) + the assistant header; answer = content + EOS."""
        history, pairs = list(self._begin), []
        for role, header, content in self._turns(validate_messages(messages)):
            if role == "assistant":
                pairs.append(SftPair(history + header, content + self._answer_end))
            history += header + content + self._turn_end
        return pairs

    def prompt(self, messages: list[Message]) -> list[int]:
        """Prompt ids for generation: a dialogue ending with a user turn + the assistant header."""
        ids = list(self._begin)
        for _, header, content in self._turns(validate_messages(messages, final_role="user")):
            ids += header + content + self._turn_end
        return ids + self._headers["assistant"]

    def example(self, messages: list[Message]) -> list[int]:
        """The whole dialogue as one iLLaDA stream example, ending with a single EOS."""
        prompt, answer = self.pairs(messages)[-1]
        return prompt + answer


def llada_pairs(
    dialogues: Iterable[list[Message]],
    formatter: ChatFormatter,
    *,
    one_per_dialogue: bool = False,
    seed: int = 0,
) -> Iterator[SftPair]:
    """All pairs of every dialogue, or (docs/algorithms.md#sft-llada-style) one pair per dialogue
    drawn with `seed`."""
    rng = random.Random(seed)
    for messages in dialogues:
        pairs = formatter.pairs(messages)
        yield from [rng.choice(pairs)] if one_per_dialogue else pairs


def illada_examples(
    dialogues: Iterable[list[Message]], formatter: ChatFormatter
) -> Iterator[list[int]]:
    """One stream example ([length] ids ending with EOS) per dialogue."""
    for messages in dialogues:
        yield formatter.example(messages)


# ------------------------------------------------------------------------------ batches


def filter_long_pairs(
    pairs: Iterable[SftPair | tuple[Sequence[int], Sequence[int]]], max_len: int
) -> tuple[list[SftPair], int]:
    """(pairs whose prompt + answer fit in max_len, number of dropped pairs)."""
    kept, dropped = [], 0
    for prompt, answer in pairs:
        if len(prompt) + len(answer) <= max_len:
            kept.append(SftPair(prompt, answer))
        else:
            dropped += 1
    return kept, dropped


def llada_sft_batch(
    pairs: Sequence[SftPair | tuple[Sequence[int], Sequence[int]]],
    tokenizer,
    max_len: int,
    *,
    pad_multiple: int = 1,
) -> dict[str, np.ndarray]:
    """LLaDA SFT batch (docs/algorithms.md#sft-llada-style).

    Returns `tokens` int32 [batch, length] (prompt, answer with its EOS, then EOS padding) and
    `prompt_lengths` int32 [batch]; length = the longest example rounded up to `pad_multiple`,
    capped at max_len (pad_multiple=max_len gives a static [batch, max_len]). Raises ValueError
    for an example longer than max_len (drop those first with `filter_long_pairs`).
    """
    if not pairs:
        raise ValueError("llada_sft_batch needs at least one pair")
    lengths = [len(prompt) + len(answer) for prompt, answer in pairs]
    for index, length in enumerate(lengths):
        if length > max_len:
            raise ValueError(
                f"pair {index} has {length} tokens > max_len={max_len}; drop over-long pairs "
                "with filter_long_pairs() before batching"
            )
    length = min(-(-max(lengths) // pad_multiple) * pad_multiple, max_len)
    tokens = np.full((len(pairs), length), tokenizer.eos_id, np.int32)
    prompt_lengths = np.empty(len(pairs), np.int32)
    for row, (prompt, answer) in enumerate(pairs):
        tokens[row, : len(prompt) + len(answer)] = [*prompt, *answer]
        prompt_lengths[row] = len(prompt)
    return {"tokens": tokens, "prompt_lengths": prompt_lengths}


def illada_stream_windows(
    examples: Iterable[Sequence[int]],
    seq_len: int,
    *,
    pad_id: int,
    drop_remainder: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Cut the concatenation of `examples` into consecutive windows
    (docs/algorithms.md#sft-illada-style).

    Yields `tokens`, `segment_ids` (1 = real token, 0 = padding) and `positions`
    (0..seq_len-1), each int32 [seq_len]. Every token lands in exactly one window, in order;
    the last partial window is padded with `pad_id` (or dropped with `drop_remainder`).
    """
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be >= 1")
    positions = np.arange(seq_len, dtype=np.int32)
    chunks: list[np.ndarray] = []
    buffered = 0
    for example in examples:
        chunks.append(np.asarray(example, dtype=np.int32).reshape(-1))
        buffered += chunks[-1].size
        if buffered < seq_len:
            continue
        stream = np.concatenate(chunks)
        full = stream.size // seq_len * seq_len
        for start in range(0, full, seq_len):
            window = stream[start : start + seq_len]
            yield _window(window, np.ones(seq_len, np.int32), positions)
        chunks, buffered = [stream[full:]], stream.size - full
    if buffered and not drop_remainder:
        rest = np.concatenate(chunks)
        tokens = np.full(seq_len, pad_id, np.int32)
        tokens[: rest.size] = rest
        yield _window(tokens, (positions < rest.size).astype(np.int32), positions)


def _window(tokens: np.ndarray, segment_ids: np.ndarray, positions: np.ndarray) -> dict:
    return {"tokens": tokens.copy(), "segment_ids": segment_ids, "positions": positions.copy()}


# ------------------------------------------------------------------------------ demo data


def _chatterbot_english_dir() -> pathlib.Path:
    # find_spec locates the package without executing its modules.
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise MissingInputError(
            "the demo SFT data needs chatterbot-corpus: pip install chatterbot-corpus==1.3.3"
        )
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "data" / "english"


def demo_conversations() -> Iterator[dict[str, list[Message]]]:
    """`{"messages": [...]}` dialogues from chatterbot-corpus's English YAML files, in file
    order. Each conversation list alternates user/assistant; non-string and empty entries are
    skipped and a trailing unanswered user line is dropped."""
    import yaml

    for path in sorted(_chatterbot_english_dir().glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conversation in data.get("conversations") or []:
            lines = [x for x in conversation or [] if isinstance(x, str) and x.strip()]
            lines = lines[: len(lines) // 2 * 2]
            if lines:
                roles = ("user", "assistant") * (len(lines) // 2)
                yield {"messages": [{"role": r, "content": c} for r, c in zip(roles, lines)]}


def write_demo_jsonl(path: str | pathlib.Path) -> int:
    """Write `demo_conversations()` as SFT JSONL; returns the number of dialogues."""
    return write_sft_jsonl(demo_conversations(), path)


def load_dialogues(source: str) -> list[list[Message]]:
    """Dialogues of an SFT source: `demo` (chatterbot-corpus) or a JSONL file path."""
    if source == "demo":
        return [d["messages"] for d in demo_conversations()]
    path = storage.path(source)  # local or gs://
    if not path.is_file():
        raise SftFormatError(f"SFT data {source} does not exist (a JSONL file, or `demo`)")
    return read_sft_jsonl(path)[0]
