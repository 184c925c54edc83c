"""Readers that turn raw inputs into a stream of document texts, counting every bad record.

Formats (`illada prepare --format`):
- `text`: plain text files; one document per file (`text_unit="file"`) or per blank-line-separated
  block (`text_unit="block"`);
- `jsonl`: one JSON object per line, the document in `field`;
- `parquet`: the string column `field` (pyarrow);
- `tfds`: a local TFDS dataset directory in ArrayRecord format (`[tfds]` extra, no TensorFlow),
  `PATH` or `PATH:SPLIT` (default split `train`), the document in feature `field`;
- `seqio`: a registered seqio task or mixture (`[seqio]` extra), `NAME` or `NAME:SPLIT`, the
  document in feature `field` (import the module that registers it with `--seqio-module`);
- `embedded`: the embedded default corpus; `PATH` is the split (`train`, `heldout`, `all`).

Rules for bad records (each counted under its key in the manifest, never silent):
- `invalid_utf8_replaced`: bytes that are not UTF-8 are decoded with U+FFFD replacements and the
  document is kept;
- `empty_skipped`: a document that is empty or only whitespace is dropped;
- `bad_json_skipped`: a jsonl line that does not parse as a JSON object is dropped;
- `missing_field_skipped`: a record without a string in `field` is dropped.
(Over-long documents are split after tokenisation; see `prepare.py`.)
"""

from __future__ import annotations

import collections
import json
import os
import re
from collections.abc import Iterator, Sequence

from illada_jax import storage
from illada_jax.errors import IlladaError

FORMATS = ("text", "jsonl", "parquet", "tfds", "seqio", "embedded")
TEXT_UNITS = ("file", "block")
# One or more blank (or whitespace-only) lines separate blocks.
_BLANK_LINES = re.compile(rb"\r?\n(?:[ \t\r]*\r?\n)+")
_BOM = b"\xef\xbb\xbf"


class SourceError(IlladaError, ValueError):
    """An input cannot be read at all (missing file, unknown format, missing extra)."""


def _decode(raw: bytes, stats: collections.Counter) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats["invalid_utf8_replaced"] += 1
        return raw.decode("utf-8", errors="replace")


def _keep(text: str, stats: collections.Counter) -> bool:
    if text.strip():
        return True
    stats["empty_skipped"] += 1
    return False


def _existing_files(inputs: Sequence[str]) -> list[storage.Path]:
    """Input files (local or object storage); a directory stands for every file under it."""
    paths = []
    for item in inputs:
        path = storage.path(item)
        if path.is_dir():
            paths.extend(storage.files_under(path))
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
        raw = path.read_bytes().removeprefix(_BOM)
        pieces = (
            [raw] if text_unit == "file" else [p.strip(b"\r\n") for p in _BLANK_LINES.split(raw)]
        )
        for piece in pieces:
            text = _decode(piece, stats)
            if _keep(text, stats):
                yield text


def _field_text(record, field: str, stats: collections.Counter) -> str | None:
    value = record.get(field) if isinstance(record, dict) else None
    if isinstance(value, bytes):
        value = _decode(value, stats)
    if not isinstance(value, str):
        stats["missing_field_skipped"] += 1
        return None
    return value if _keep(value, stats) else None


def jsonl_documents(inputs, stats, field: str) -> Iterator[str]:
    for path in _existing_files(inputs):
        with path.open("rb") as f:
            for number, raw_line in enumerate(f):
                if number == 0:
                    raw_line = raw_line.removeprefix(_BOM)  # files saved by Windows editors
                if not raw_line.strip():
                    continue  # blank lines separate nothing in jsonl; not a record
                try:
                    record = json.loads(_decode(raw_line, stats))
                except (ValueError, RecursionError):  # JSONDecodeError, huge ints, deep nesting
                    stats["bad_json_skipped"] += 1
                    continue
                if not isinstance(record, dict):
                    stats["bad_json_skipped"] += 1
                    continue
                text = _field_text(record, field, stats)
                if text is not None:
                    yield text


def parquet_documents(inputs, stats, field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    for path in _existing_files(inputs):
        parquet = pq.ParquetFile(path.open("rb") if not storage.is_local(path) else path)
        if field not in parquet.schema_arrow.names:
            raise SourceError(
                f"{path} has no column {field!r}; columns are "
                f"{parquet.schema_arrow.names}; pass --field"
            )
        for batch in parquet.iter_batches(columns=[field], batch_size=4096):
            for value in batch.column(0).to_pylist():
                text = _field_text({field: value}, field, stats)
                if text is not None:
                    yield text


def _name_and_split(spec: str) -> tuple[str, str]:
    name, _, split = spec.partition(":")
    return name, split or "train"


def tfds_documents(inputs, stats, field: str) -> Iterator[str]:
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise SourceError(
            "--format tfds needs the [tfds] extra: pip install 'illada-jax[tfds]'"
        ) from err
    for spec in inputs:
        directory, split = _name_and_split(spec)
        builder = tfds.builder_from_directory(directory)
        for record in builder.as_data_source(split=split):
            text = _field_text(record, field, stats)
            if text is not None:
                yield text


def seqio_documents(inputs, stats, field: str, module: str | None = None) -> Iterator[str]:
    try:
        import seqio
    except ImportError as err:
        raise SourceError(
            "--format seqio needs the [seqio] extra: pip install 'illada-jax[seqio]'"
        ) from err
    if module:
        import importlib

        importlib.import_module(module)
    for spec in inputs:
        name, split = _name_and_split(spec)
        provider = seqio.get_mixture_or_task(name)
        dataset = provider.get_dataset(
            sequence_length=None, split=split, shuffle=False, num_epochs=1
        )
        for record in dataset.as_numpy_iterator():
            text = _field_text(record, field, stats)
            if text is not None:
                yield text


def embedded_documents_text(inputs, stats) -> Iterator[str]:
    from illada_jax.data.corpus import SPLITS, embedded_documents

    for split in inputs or ["train"]:
        if split not in SPLITS:
            raise SourceError(
                f"--format embedded takes a split ({', '.join(SPLITS)}) as --input, got {split!r}"
            )
        for doc in embedded_documents(split):
            if _keep(doc.text, stats):
                yield doc.text


def iter_documents(
    fmt: str,
    inputs: Sequence[str],
    stats: collections.Counter,
    *,
    field: str = "text",
    text_unit: str = "file",
    seqio_module: str | None = None,
) -> Iterator[str]:
    """Document texts from `inputs` in a deterministic order; bad records counted in `stats`."""
    if fmt == "text":
        return text_documents(inputs, stats, text_unit)
    if fmt == "jsonl":
        return jsonl_documents(inputs, stats, field)
    if fmt == "parquet":
        return parquet_documents(inputs, stats, field)
    if fmt == "tfds":
        return tfds_documents(inputs, stats, field)
    if fmt == "seqio":
        return seqio_documents(inputs, stats, field, seqio_module)
    if fmt == "embedded":
        return embedded_documents_text(inputs, stats)
    raise SourceError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
