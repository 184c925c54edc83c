"""On-the-fly datasets: raw shards read, tokenised and packed while training (no `illada prepare`).

A training dataset named `raw:FORMAT:PATHS` is read straight from raw files:
- FORMAT: `jsonl` (the document in `data.raw_field` of each line), `text` (a document per file, or
  per blank-line block with `data.raw_text_unit=block`), `parquet` (the string column
  `data.raw_field`), `arrayrecord` (each record is one UTF-8 document);
- PATHS: one or more comma-separated files, directories (every file under them) or globs
  (`gs://bucket/c4/*.jsonl`), local or on object storage.
The same bad-record rules as `illada prepare` apply (docs/data.md): undecodable bytes replaced,
empty documents, bad JSON lines and records without the field dropped.
`raw:seqio:TASK_OR_MIXTURE[:SPLIT][,...]` reads registered seqio tasks instead of files
(`seqio_stream.py`); everything after the documents is shared.

The grain pipeline per process (docs/data.md#on-the-fly-tokenisation):
`files[p::P]` (process p of P reads every P-th file of the sorted list), in a per-epoch shuffled
order → each file's documents in file order (a checkpointable reader: its position is a byte
offset, row or record index) → tokenised (EOS appended) in `workers` grain worker processes
(`mp_prefetch`; worker w reads files w, w+W, … of the process's order and grain interleaves
their outputs round-robin) → packed by grain's `ConcatThenSplitIterDataset` into windows of
`seq_len` tokens (one segment per document piece; positions restart in every segment) → the
same window format as prepared data (`packing.py`).

Determinism: at a fixed (seed, process count, worker count) the k-th window of a process is a
pure function of k; the pipeline's position is grain's iterator state (files, offsets in them,
the packer's remainder), saved in every checkpoint, so a resume is bit-exact. With another process
or worker count, other files (a glob matching new ones) or other window settings no saved position
applies (`Pipeline.stream_identity`): the stream then starts over at a fresh shuffle of its files (seeded by the step of the change), so documents
seen before the change may be seen again; prepared datasets are unaffected (`pipeline.py`).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import threading
import time
from collections.abc import Iterator

import grain
import grain.experimental as grain_exp
import numpy as np

from illada_jax import storage
from illada_jax.data.pipeline.packing import DataError
from illada_jax.data.sources import formats, records

RAW_PREFIX = "raw:"
RAW_FORMATS = ("jsonl", "text", "parquet", "arrayrecord", "seqio")
_GLOB = re.compile(r"[*?\[]")


def is_raw(name: str) -> bool:
    return name.startswith(RAW_PREFIX)


@dataclasses.dataclass(frozen=True)
class RawSpec:
    """A parsed `raw:FORMAT:PATHS` dataset name."""

    fmt: str
    patterns: tuple[str, ...]

    @classmethod
    def parse(cls, name: str) -> RawSpec:
        fmt, _, paths = name.removeprefix(RAW_PREFIX).partition(":")
        if fmt not in RAW_FORMATS or not paths:
            raise DataError(
                f"dataset {name!r}: an on-the-fly dataset is raw:FORMAT:PATHS with FORMAT one of "
                f"{', '.join(RAW_FORMATS)} and PATHS comma-separated files, directories or globs "
                "(e.g. raw:jsonl:gs://bucket/c4/*.jsonl), or for seqio comma-separated "
                "TASK_OR_MIXTURE[:SPLIT] (e.g. raw:seqio:my_task:train)"
            )
        return cls(fmt, tuple(p for p in paths.split(",") if p))

    def files(self) -> list[str]:
        """Every input file, sorted (the order processes deal files out in); for seqio, the
        task specs as given."""
        if self.fmt == "seqio":
            return list(self.patterns)
        found: list[str] = []
        for pattern in self.patterns:
            matches = _expand(pattern)
            if not matches:
                raise DataError(f"on-the-fly dataset: {pattern} matches no file")
            found.extend(matches)
        return sorted(set(found))


def _expand(pattern: str) -> list[str]:
    if _GLOB.search(pattern):
        head, _, tail = pattern.rpartition("/")
        if _GLOB.search(head):
            raise DataError(f"{pattern}: only the last path component may hold a wildcard")
        return [str(p) for p in storage.path(head or ".").glob(tail) if p.is_file()]
    path = storage.path(pattern)
    if path.is_dir():  # every data file under it: not markers such as _SUCCESS, .crc
        return [str(p) for p in storage.files_under(path) if not p.name.startswith(("_", "."))]
    return [str(path)] if path.is_file() else []


# --- Reading one file: documents with a resumable position ----------------------------------


def _jsonl_texts(path: str, position: int, field: str) -> Iterator[tuple[str | None, int]]:
    """(text or None for a skipped line, byte offset after it) from byte offset `position`."""
    stats = collections.Counter()  # bad records are dropped as in `illada prepare`
    with storage.path(path).open("rb") as f:
        f.seek(position)
        for raw_line in f:
            position += len(raw_line)
            yield _jsonl_line_text(raw_line, field, stats), position


def _jsonl_line_text(raw_line: bytes, field: str, stats: collections.Counter) -> str | None:
    """A jsonl line's document, or None for a blank or bad line (same rules as prepare)."""
    raw_line = raw_line.removeprefix(records.BOM)
    if not raw_line.strip():
        return None
    try:
        record = json.loads(records.decode(raw_line, stats))
    except (ValueError, RecursionError):
        return None
    return records.field_text(record, field, stats) if isinstance(record, dict) else None


def _text_texts(path: str, position: int, text_unit: str) -> Iterator[tuple[str | None, int]]:
    pieces = list(formats.text_documents([path], collections.Counter(), text_unit))
    for index in range(position, len(pieces)):
        yield pieces[index], index + 1


def _parquet_texts(path: str, position: int, field: str) -> Iterator[tuple[str | None, int]]:
    import pyarrow.parquet as pq

    stats = collections.Counter()
    with storage.path(path).open("rb") as handle:
        parquet = pq.ParquetFile(handle)
        if field not in parquet.schema_arrow.names:
            raise DataError(
                f"{path} has no column {field!r} (columns {parquet.schema_arrow.names}); set "
                "data.raw_field"
            )
        first = 0
        for group in range(parquet.num_row_groups):
            rows = parquet.metadata.row_group(group).num_rows
            if first + rows > position:
                values = parquet.read_row_group(group, columns=[field]).column(0).to_pylist()
                for row in range(max(position - first, 0), rows):
                    yield records.field_text({field: values[row]}, field, stats), first + row + 1
            first += rows


def _arrayrecord_texts(path: str, position: int) -> Iterator[tuple[str | None, int]]:
    from array_record.python import array_record_module

    from illada_jax.data.pipeline.remote import readable_path

    stats = collections.Counter()
    reader = array_record_module.ArrayRecordReader(readable_path(storage.path(path)))
    try:
        total = reader.num_records()
        for start in range(position, total, 256):
            stop = min(start + 256, total)
            for offset, raw in enumerate(reader.read(list(range(start, stop)))):
                text = records.decode(raw, stats)
                yield (text if text.strip() else None), start + offset + 1
    finally:
        reader.close()


@dataclasses.dataclass(frozen=True)
class _ReadOptions:
    fmt: str
    field: str
    text_unit: str
    files: int = 1  # files of the process: this many in a row without a document is an error


def _file_texts(path: str, position: int, options: _ReadOptions):
    if options.fmt == "jsonl":
        return _jsonl_texts(path, position, options.field)
    if options.fmt == "text":
        return _text_texts(path, position, options.text_unit)
    if options.fmt == "parquet":
        return _parquet_texts(path, position, options.field)
    return _arrayrecord_texts(path, position)


# Per process (each grain worker has its own): files finished in a row without a document.
_files_without_documents = 0


class _FileDocuments(grain.IterDataset):
    """The documents of one raw file, in file order; its iterator's state is its position."""

    def __init__(self, path: str, options: _ReadOptions):
        super().__init__()
        self.path, self.options = path, options

    def __iter__(self) -> _FileDocumentsIterator:
        return _FileDocumentsIterator(self.path, self.options)


class _FileDocumentsIterator(grain.DatasetIterator):
    def __init__(self, path: str, options: _ReadOptions):
        super().__init__()
        self.path, self.options = path, options
        self.position = 0
        self._texts = None

    def __next__(self) -> str:
        global _files_without_documents
        if self._texts is None:
            self._texts = _file_texts(self.path, self.position, self.options)
        for text, position in self._texts:
            self.position = position
            if text is not None:
                _files_without_documents = 0
                return text
        # The files repeat forever: a whole round of them without a document would spin (and
        # hang the run) instead of failing.
        _files_without_documents += 1
        if _files_without_documents > self.options.files:
            options = self.options
            raise DataError(
                f"raw {options.fmt} files ({self.path} and the others read here) hold no usable "
                f"document: no string field {options.field!r} (data.raw_field), or every "
                "record empty or malformed; fix data.raw_field / the format, or remove the files"
            )
        raise StopIteration

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position, self._texts = int(state["position"]), None


@dataclasses.dataclass(frozen=True)
class _OpenFile:
    options: _ReadOptions

    def __call__(self, path: str) -> _FileDocuments:
        return _FileDocuments(path, self.options)


class _Tokenize(grain.transforms.Map):
    """text, or int32 token ids (seqio), -> {"tokens": int32 [n + 1]} (EOS appended); the
    tokenizer loads once per worker."""

    def __init__(self, tokenizer: str):
        self.tokenizer_path = tokenizer
        self._tokenizer = None

    def __getstate__(self) -> dict:
        return {"tokenizer_path": self.tokenizer_path, "_tokenizer": None}

    def map(self, text: str) -> dict[str, np.ndarray]:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_path)
        if isinstance(text, np.ndarray):
            return {"tokens": np.append(text, self._tokenizer.eos_id).astype(np.int32)}
        ids = self._tokenizer.encode(text)
        ids.append(self._tokenizer.eos_id)
        return {"tokens": np.asarray(ids, np.int32)}


class _Window(grain.transforms.Map):
    """A packed element -> the window format of `packing.py` (tokens, segment_ids, positions)."""

    def __init__(self, seq_len: int, pad_id: int, document_aware: bool):
        self.seq_len, self.pad_id, self.document_aware = seq_len, pad_id, document_aware

    def map(self, packed: dict) -> dict[str, np.ndarray]:
        segments = packed["tokens_segment_ids"].astype(np.int32)
        real = segments > 0
        tokens = np.where(real, packed["tokens"], self.pad_id).astype(np.int32)
        if not self.document_aware:
            return {
                "tokens": tokens,
                "segment_ids": real.astype(np.int32),
                "positions": np.arange(self.seq_len, dtype=np.int32),
            }
        # Positions restart at 0 in every segment, a split document's continuation included.
        index = np.arange(self.seq_len)
        starts = np.concatenate([[True], segments[1:] != segments[:-1]])
        positions = index - np.maximum.accumulate(np.where(starts, index, 0))
        return {"tokens": tokens, "segment_ids": segments, "positions": positions.astype(np.int32)}


def _exit_with_parent(worker_index: int, worker_count: int) -> None:
    """In a grain worker: exit when the training process is gone (killed with -9, grain's own
    shutdown never runs and its workers would otherwise stay forever)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _absl_flags_parsed() -> None:
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def load_tokenizer(path: str):
    from illada_jax.data.tokenizers.tokenizer import Tokenizer

    return Tokenizer.load(path) if path else Tokenizer.default()


class RawStream:
    """One on-the-fly dataset: its files, tokenizer and window shape (see the module doc)."""

    def __init__(
        self,
        name: str,
        *,
        seq_len: int,
        document_aware: bool,
        tokenizer: str = "",
        field: str = "text",
        text_unit: str = "file",
        workers: int = 2,
        shuffle: bool = True,
        seqio_module: str = "",
        tfds_data_dir: str = "",
    ):
        self.name = name
        self.spec = RawSpec.parse(name)
        self.files = self.spec.files()
        self.tokenizer_path = tokenizer
        tok = load_tokenizer(tokenizer)
        self.special_ids, self.vocab_size = tok.special_ids(), tok.vocab_size
        self._tokenizer = tok
        self.options = _ReadOptions(self.spec.fmt, field, text_unit, len(self.files))
        self.seq_len, self.document_aware = seq_len, document_aware
        self.workers, self.shuffle = workers, shuffle
        self.seqio = None
        if self.spec.fmt == "seqio":
            from illada_jax.data.pipeline.seqio_stream import SeqioSettings

            self.seqio = SeqioSettings(self.spec.patterns, field, tokenizer, seqio_module,
                                       tfds_data_dir)  # fmt: skip
            self.seqio.resolve()  # fail here, not in a worker: unknown task, feature, vocabulary

    def check_compatible(self, model_cfg) -> None:
        try:
            self._tokenizer.check_model_config(model_cfg)
        except ValueError as err:
            raise DataError(f"{self.name}: data.tokenizer does not match the model: {err}") from err

    def windows(self, process_index: int, process_count: int, seed: int) -> grain.IterDataset:
        """This process's window stream (infinite: files repeat, reshuffled every epoch)."""
        if self.seqio is not None:
            from illada_jax.data.pipeline.seqio_stream import SeqioExamples

            documents = SeqioExamples(self.seqio, process_index, process_count, seed, self.shuffle)
            return self._packed(documents)
        files = self.files[process_index::process_count]
        if len(self.files) < process_count:  # every process fails alike, none waits in a step
            raise DataError(
                f"{self.name} has {len(self.files)} files but the run has {process_count} "
                "processes: every process reads whole files, so split the input into at least "
                f"{process_count} files"
            )
        # Every epoch a fresh permutation of the files (shuffle, then repeat: grain reseeds the
        # shuffle per epoch; the other way round would draw files with replacement).
        order = grain.MapDataset.source(files)
        if self.shuffle:
            order = order.shuffle(seed=seed)
        order = order.repeat()
        documents = grain_exp.InterleaveIterDataset(
            order.map(_OpenFile(self.options)), cycle_length=1
        )
        return self._packed(documents)

    def _packed(self, documents: grain.IterDataset) -> grain.IterDataset:
        """Documents -> tokenised in the worker processes -> packed windows."""
        tokens = documents.map(_Tokenize(self.tokenizer_path))
        if self.workers > 0:
            _absl_flags_parsed()  # grain's worker processes read absl flags
            tokens = tokens.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=self.workers),
                worker_init_fn=_exit_with_parent,
            )
        packed = grain_exp.ConcatThenSplitIterDataset(
            tokens, length_struct={"tokens": self.seq_len}
        )
        return packed.map(_Window(self.seq_len, self.special_ids["pad"], self.document_aware))
