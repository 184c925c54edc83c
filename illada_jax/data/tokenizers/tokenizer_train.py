"""`illada tokenizer train`: SentencePiece BPE or HF byte-level BPE with the model's special ids.

Both kinds reserve pad 0, unk 1, bos 2, eos 3, then `<mask>` (4) and the chat markers
`<|start_header_id|>` (5), `<|end_header_id|>` (6), `<|eot_id|>` (7) as control / special tokens,
so no text can ever encode to them. The shipped default (`assets/default_sp8k.model`) was trained
with `illada tokenizer train --embedded --vocab-size 8192`.
"""

from __future__ import annotations

import itertools
import json
import pathlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from illada_jax.data.tokenizers.tokenizer import TOKEN_NAMES, TokenizerError
from illada_jax.errors import MissingInputError

DEFAULT_SPECIAL_TOKENS = (
    "<pad>",
    "<unk>",
    "<s>",
    "</s>",
    "<mask>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
TRAIN_TYPES = ("sentencepiece", "bpe")
_CHUNK_CHARS = 1 << 16  # training texts are cut at line boundaries into pieces of at most this


def _chunks(text: str, max_chars: int = _CHUNK_CHARS) -> Iterator[str]:
    """`text` cut at line boundaries into pieces of at most ~max_chars (newlines kept)."""
    if len(text) <= max_chars:
        if text:
            yield text
        return
    lines, size = [], 0
    pieces = text.splitlines(keepends=True)
    for line in (p[i : i + max_chars] for p in pieces for i in range(0, len(p), max_chars)):
        if size + len(line) > max_chars and lines:
            yield "".join(lines)
            lines, size = [], 0
        lines.append(line)
        size += len(line)
    if lines:
        yield "".join(lines)


def read_training_texts(files: Iterable[str | pathlib.Path]) -> Iterator[str]:
    """Texts of plain-text files (whole files, cut into chunks) and of `.jsonl` files (the
    "text" field of each line)."""
    for file in files:
        path = pathlib.Path(file)
        if not path.is_file():
            raise MissingInputError(f"--input {path}: no such file (give text or .jsonl files)")
        try:
            if path.suffix == ".jsonl":
                with path.open(encoding="utf-8") as f:
                    for number, line in enumerate(f, 1):
                        if line.strip():
                            try:
                                record = json.loads(line)
                            except json.JSONDecodeError as err:
                                raise TokenizerError(
                                    f"--input {path}:{number}: not JSON ({err.msg}); a .jsonl "
                                    "file holds one {'text': str} object per line"
                                ) from None
                            if not isinstance(record, dict) or not isinstance(
                                record.get("text"), str
                            ):
                                raise TokenizerError(f"{path}:{number}: expected {{'text': str}}")
                            yield record["text"]
            else:
                yield path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise TokenizerError(
                f"--input {path} is not UTF-8 text ({err.reason} at byte {err.start}); give text "
                "or .jsonl files in UTF-8"
            ) from None


class _TrainingStream:
    """The training texts cut into chunks, as the trainers consume them, keeping what a trainer
    may not report: SentencePiece's trainer ends its input at an exception raised while reading
    (then fails for lack of text, or trains on part of it), so the exception is kept here and
    raised again after training; and how many characters came (none: an error naming the
    inputs)."""

    def __init__(self, texts: Iterable[str]):
        self.texts = texts
        self.error: Exception | None = None
        self.chars = 0

    def __iter__(self) -> Iterator[str]:
        try:
            for text in self.texts:
                for chunk in _chunks(text):
                    self.chars += len(chunk)
                    yield chunk
        except Exception as err:
            self.error = err
            raise

    def check(self, files: Sequence[str | pathlib.Path]) -> None:
        if self.error is not None:
            raise self.error
        if not self.chars:
            inputs = ", ".join(map(str, files)) or "the given texts"
            raise TokenizerError(f"no text to train on in {inputs} (empty files?)")


def _check_special_tokens(special_tokens: Sequence[str]) -> None:
    if len(special_tokens) < 5 or len(set(special_tokens)) != len(special_tokens):
        raise TokenizerError(
            "special_tokens must be distinct: pad, unk, bos, eos, then at least a mask token "
            f"(got {list(special_tokens)})"
        )
    masks = [t for t in special_tokens[4:] if t in TOKEN_NAMES["mask"]]
    if len(masks) != 1:
        raise TokenizerError(
            f"special_tokens[4:] must hold exactly one mask token named one of "
            f"{', '.join(TOKEN_NAMES['mask'])} (got {list(special_tokens[4:])})"
        )


def train_tokenizer(
    files: Iterable[str | pathlib.Path],
    output: str | pathlib.Path,
    vocab_size: int,
    kind: str = "sentencepiece",
    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
    *,
    texts: Iterable[str] = (),
    num_threads: int = 2,
) -> pathlib.Path:
    """Train a tokenizer on `files` (see `read_training_texts`) followed by `texts`.

    special_tokens: pad, unk, bos, eos, then further specials (one mask token) at ids 0, 1, ...
    kind "sentencepiece": BPE with byte fallback, lossless (identity normalisation, whitespace
    kept, no dummy prefix), digits split; specials after eos are control symbols. Writes
    `<output>.model` and `<output>.vocab`. kind "bpe": HF byte-level BPE; writes
    `<output>/tokenizer.json` + `tokenizer_config.json`, or just `output` if it ends in `.json`.
    Returns the path to load with `Tokenizer.load`.
    """
    if kind not in TRAIN_TYPES:
        raise TokenizerError(f"kind={kind!r}: allowed values are {', '.join(TRAIN_TYPES)}")
    _check_special_tokens(special_tokens)
    output = pathlib.Path(output)
    if kind == "bpe" and output.suffix != ".json" and output.exists() and not output.is_dir():
        raise TokenizerError(
            f"--output {output} is a file; bpe writes the directory OUTPUT/ with tokenizer.json "
            "(or a file if OUTPUT ends in .json)"
        )
    files = list(files)
    stream = _TrainingStream(itertools.chain(read_training_texts(files), texts))
    try:
        if kind == "sentencepiece":
            path = _train_sentencepiece(iter(stream), output, vocab_size, special_tokens,
                                        num_threads)  # fmt: skip
        else:
            path = _train_hf_bpe(iter(stream), output, vocab_size, special_tokens)
    except Exception:
        stream.check(files)  # the cause, when reading the input failed or found no text
        raise
    stream.check(files)
    return path


def _train_sentencepiece(
    texts: Iterator[str],
    output: pathlib.Path,
    vocab_size: int,
    special_tokens: Sequence[str],
    num_threads: int,
) -> pathlib.Path:
    import sentencepiece as spm

    prefix = output.with_suffix("") if output.suffix == ".model" else output
    prefix.parent.mkdir(parents=True, exist_ok=True)
    pad, unk, bos, eos, *control = special_tokens
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=texts,
            model_prefix=str(prefix),
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            character_coverage=1.0,
            pad_id=0, unk_id=1, bos_id=2, eos_id=3,
            pad_piece=pad, unk_piece=unk, bos_piece=bos, eos_piece=eos,
            control_symbols=control,
            # Lossless: decode(encode(text)) == text, and encode(a) + encode(b) decodes to a + b.
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            # Deterministic piece list: every sentence, in order.
            input_sentence_size=0,
            shuffle_input_sentence=False,
            max_sentence_length=4 * _CHUNK_CHARS + 16,
            num_threads=num_threads,
            minloglevel=2,
        )  # fmt: skip
    except RuntimeError as error:
        raise TokenizerError(
            f"SentencePiece training failed: {error}. Fix: adjust --vocab-size to the range the "
            "message gives, or train on more text"
        ) from error
    return prefix.with_name(prefix.name + ".model")


def _train_hf_bpe(
    texts: Iterator[str], output: pathlib.Path, vocab_size: int, special_tokens: Sequence[str]
) -> pathlib.Path:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    file = output if output.suffix == ".json" else output / "tokenizer.json"
    file.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(file))
    if file.name == "tokenizer.json":
        file.with_name("tokenizer_config.json").write_text(
            json.dumps(_hf_tokenizer_config(special_tokens), indent=2) + "\n", encoding="utf-8"
        )
    return file


def _hf_tokenizer_config(special_tokens: Sequence[str]) -> dict[str, Any]:
    pad, unk, bos, eos, *rest = special_tokens
    mask = next(t for t in rest if t in TOKEN_NAMES["mask"])
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": pad,
        "unk_token": unk,
        "bos_token": bos,
        "eos_token": eos,
        "mask_token": mask,
        "additional_special_tokens": [t for t in rest if t != mask],
        "clean_up_tokenization_spaces": False,
    }
