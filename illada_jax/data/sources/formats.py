"""Readers that turn raw inputs into a stream of document texts, counting every bad record.

Formats (`illada prepare --format`):
- `text`: plain text files; one document per file (`text_unit="file"`) or per blank-line-separated
  block (`text_unit="block"`); a file that is not text (NUL bytes, or not one UTF-8 character) is
  an error naming it, not a document;
- `jsonl`: one JSON object per line, the document in `field`;
- `parquet`: the string column `field` (pyarrow);
- `tfds` (`[tfds]` extra): a TFDS dataset by name (`NAME[/CONFIG][:VERSION][:SPLIT]`, prepared
  under `--data-dir`) or directory (`DIR[:SPLIT]`); see `tfds_source.py`;
- `seqio` (`[seqio]` extra): a registered task or mixture `NAME[:SPLIT]`, token-id features read
  as ids or re-tokenised, text features tokenised; see `seqio_source.py`;
- `embedded`: the embedded default corpus; `PATH` is the split (`train`, `heldout`, `all`).

A document is a `str`, or for seqio `ids` (and multi-feature) documents an int32 array of token
ids without EOS; `prepare.tokenize_documents` takes both.

Rules for bad records: `records.py` (each counted in the manifest, never silent).
(Over-long documents are split after tokenisation; see `prepare.py`.)
"""

from __future__ import annotations

import collections
import json
import os
import re
from collections.abc import Iterator, Sequence

import numpy as np

from illada_jax import storage
from illada_jax.data.sources import seqio_source, tfds_source
from illada_jax.data.sources.records import BOM, SourceError, decode, field_text, keep

FORMATS = ("text", "jsonl", "parquet", "tfds", "seqio", "embedded")
TEXT_UNITS = ("file", "block")
# One or more blank (or whitespace-only) lines separate blocks.
_BLANK_LINES = re.compile(rb"\r?\n(?:[ \t\r]*\r?\n)+")


def _existing_files(inputs: Sequence[str]) -> list[storage.Path]:
    """Input files (local or object storage); a directory stands for every file under it."""
    paths = []
    for item in inputs:
        path = storage.path(item)
        if path.is_dir():
            under = storage.files_under(path)
            if not under:
                raise SourceError(f"input directory {item} holds no files")
            paths.extend(under)
        elif path.is_file():
            paths.append(path)
        else:
            raise SourceError(f"input {item} does not exist")
    return paths


def _size_and_mtime(path: storage.Path) -> tuple[int, int]:
    if storage.is_local(path):
        stat = os.stat(path)
        return stat.st_size, stat.st_mtime_ns
    stat = path.stat()  # epath's StatResult on object storage
    return int(stat.length), int(stat.mtime)


def file_signature(fmt: str, inputs: Sequence[str]) -> list:
    """(path, size, mtime) of every input file for file formats, so a re-run notices edited
    inputs; raises SourceError early for a missing input. Empty for tfds/seqio/embedded."""
    if fmt not in ("text", "jsonl", "parquet"):
        return []
    return [(str(p), *_size_and_mtime(p)) for p in _existing_files(inputs)]


def text_documents(inputs, stats, text_unit: str = "file") -> Iterator[str]:
    if text_unit not in TEXT_UNITS:
        raise SourceError(f"text_unit={text_unit!r} is not one of {', '.join(TEXT_UNITS)}")
    for path in _existing_files(inputs):
        raw = path.read_bytes().removeprefix(BOM)
        if b"\0" in raw:
            raise SourceError(
                f"{path} is not a text file: it holds NUL bytes (binary data, or UTF-16 text); "
                "--format text reads UTF-8 text. Check --input and --format"
            )
        pieces = (
            [raw] if text_unit == "file" else [p.strip(b"\r\n") for p in _BLANK_LINES.split(raw)]
        )
        texts = [decode(piece, stats) for piece in pieces]
        if raw.strip() and not any(map(_has_text, texts)):
            raise SourceError(
                f"{path} holds no UTF-8 text (none of its bytes decode as UTF-8 characters); "
                "convert it to UTF-8, or check --input and --format"
            )
        for text in texts:
            if keep(text, stats):
                yield text


def _has_text(text: str) -> bool:
    """Whether `text` holds a character other than whitespace and U+FFFD (the replacement of
    bytes that are not UTF-8)."""
    return any(char != "\ufffd" and not char.isspace() for char in text)


def jsonl_documents(inputs, stats, field: str) -> Iterator[str]:
    for path in _existing_files(inputs):
        with path.open("rb") as f:
            for number, raw_line in enumerate(f):
                if number == 0:
                    raw_line = raw_line.removeprefix(BOM)  # files saved by Windows editors
                if not raw_line.strip():
                    continue  # blank lines separate nothing in jsonl; not a record
                try:
                    record = json.loads(decode(raw_line, stats))
                except (ValueError, RecursionError):  # JSONDecodeError, huge ints, deep nesting
                    stats["bad_json_skipped"] += 1
                    continue
                if not isinstance(record, dict):
                    stats["bad_json_skipped"] += 1
                    continue
                text = field_text(record, field, stats)
                if text is not None:
                    yield text


def parquet_documents(inputs, stats, field: str) -> Iterator[str]:
    import pyarrow
    import pyarrow.parquet as pq

    for path in _existing_files(inputs):
        try:
            parquet = pq.ParquetFile(path.open("rb") if not storage.is_local(path) else path)
            if field not in parquet.schema_arrow.names:
                raise SourceError(
                    f"{path} has no column {field!r}; columns are "
                    f"{parquet.schema_arrow.names}; pass --field"
                )
            for batch in parquet.iter_batches(columns=[field], batch_size=4096):
                for value in batch.column(0).to_pylist():
                    text = field_text({field: value}, field, stats)
                    if text is not None:
                        yield text
        except (pyarrow.ArrowException, OSError) as err:  # not parquet, truncated, damaged
            raise SourceError(
                f"{path} is not a readable parquet file ({err}); check the file or --format"
            ) from err


def describe(
    fmt: str,
    inputs: Sequence[str],
    *,
    field: str = "text",
    tokenizer=None,
    seqio_module: str | None = None,
    data_dir: str | None = None,
) -> dict:
    """What tfds and seqio inputs resolve to, for the manifest's `source` (and so the run's
    fingerprint); raises SourceError for an input that cannot be read, before anything is
    written. Empty for the other formats."""
    if fmt == "tfds":
        return tfds_source.describe(inputs, field, data_dir)
    if fmt == "seqio":
        return seqio_source.describe(inputs, field, tokenizer, seqio_module, data_dir)
    return {}


def embedded_documents_text(inputs, stats) -> Iterator[str]:
    from illada_jax.data.sources.corpus import SPLITS, embedded_documents

    for split in inputs or ["train"]:
        if split not in SPLITS:
            raise SourceError(
                f"--format embedded takes a split ({', '.join(SPLITS)}) as --input, got {split!r}"
            )
        for doc in embedded_documents(split):
            if keep(doc.text, stats):
                yield doc.text


def iter_documents(
    fmt: str,
    inputs: Sequence[str],
    stats: collections.Counter,
    *,
    field: str = "text",
    text_unit: str = "file",
    seqio_module: str | None = None,
    tokenizer=None,
    data_dir: str | None = None,
) -> Iterator[str | np.ndarray]:
    """Documents from `inputs` in a deterministic order; bad records counted in `stats`.

    A document is a text, or (seqio token ids) an int32 array without EOS. `tokenizer`: ours,
    which seqio token ids are compared with (needed for token-id features); `data_dir`: the TFDS
    data dir (tfds names; seqio tasks that read TFDS)."""
    if fmt == "text":
        return text_documents(inputs, stats, text_unit)
    if fmt == "jsonl":
        return jsonl_documents(inputs, stats, field)
    if fmt == "parquet":
        return parquet_documents(inputs, stats, field)
    if fmt == "tfds":
        return tfds_source.tfds_documents(inputs, stats, field, data_dir)
    if fmt == "seqio":
        return seqio_source.seqio_documents(
            inputs, stats, field, seqio_module, tokenizer=tokenizer, data_dir=data_dir
        )
    if fmt == "embedded":
        return embedded_documents_text(inputs, stats)
    raise SourceError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
