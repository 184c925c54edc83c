"""Fixed-length windows over a prepared dataset's token stream, read by random access.

A prepared dataset (`prepare.py`) is a list of shards; each shard's records (documents, EOS-ended)
concatenated form that shard's token stream. Window `w` of a shard covers stream tokens
`[w·L, (w+1)·L)`; a shard of T tokens has ceil(T/L) windows, the last one padded. Windows never
cross shards, so locating a window needs only per-shard token counts (from the manifest) and that
shard's record lengths (memory-mapped `.lengths.npy`) — nothing global grows with the corpus.

Start-up reads the manifest only: no shard is opened or stat-ed until a window in it is read (a
missing or damaged shard is reported then, naming the file), so opening a dataset of 100k shards
costs what parsing its manifest costs. Open shard readers are bounded: each reading thread keeps
at most `MAX_OPEN_READERS` (least recently used closed first), and at most `MAX_CACHED_OFFSETS`
shards' record offsets are kept, so a global shuffle over any number of shards holds a fixed
number of file descriptors and a fixed amount of memory.

Every window is returned as
- `tokens [L] int32` (padding = pad id),
- `segment_ids [L] int32`: 0 marks padding; real tokens are 1 in plain windows, or 1, 2, … one id
  per document piece in document-aware windows (documents never share a segment),
- `positions [L] int32`: 0..L-1 in plain windows; restarting at 0 in every segment when
  document-aware.
"""

from __future__ import annotations

import collections
import io
import threading

import numpy as np

from illada_jax import storage
from illada_jax.data.preparation.manifest import MANIFEST, READABLE_VERSIONS, shard_table
from illada_jax.errors import IlladaError

MAX_OPEN_READERS = 32  # per reading thread
MAX_CACHED_OFFSETS = 4096
_NPY_PARSE_LOCK = threading.Lock()


class DataError(IlladaError, ValueError):
    """Prepared data is missing, damaged or does not fit the model; the message says what to do."""


class PreparedDataset:
    """A directory written by `illada prepare`: manifest, shards (opened lazily), record lengths."""

    def __init__(self, directory: storage.PathLike):
        self.directory = storage.path(directory)
        manifest_path = self.directory / MANIFEST
        if not manifest_path.is_file():
            raise DataError(
                f"{self.directory} has no {MANIFEST}; prepare it first with "
                f"`illada prepare --input ... --output {self.directory}`"
            )
        self.manifest = storage.read_json_object(manifest_path, DataError, "re-run illada prepare")
        if self.manifest.get("format_version") not in READABLE_VERSIONS:
            raise DataError(
                f"{manifest_path} has format_version "
                f"{self.manifest.get('format_version')}, this code reads "
                f"{', '.join(map(str, READABLE_VERSIONS))}; re-run illada prepare "
                "(or use the illada-jax version that wrote it)"
            )
        try:
            self.shards = shard_table(self.manifest)
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(
                f"{manifest_path} has a damaged shard table ({err!r}); re-run illada prepare"
            ) from err
        if not len(self.shards):
            raise DataError(
                f"{self.directory} holds no documents (all inputs empty or skipped: "
                f"{self.manifest.get('bad_records')})"
            )
        self.shard_tokens = self.shards.tokens
        try:
            self.special_ids = dict(self.manifest["tokenizer"]["special_ids"])
            self.vocab_size = int(self.manifest["tokenizer"]["vocab_size"])
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(
                f"{manifest_path} has a damaged tokenizer record ({err!r}); re-run illada prepare"
            ) from err
        self._offsets: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._offsets_lock = threading.Lock()
        self._local = threading.local()  # each reading thread's open readers (an LRU)

    @property
    def tokens(self) -> int:
        return int(self.shard_tokens.sum())

    def check_compatible(self, model_cfg) -> None:
        """Refuse data tokenised for another vocabulary or with other special ids."""
        problems = []
        if self.vocab_size != model_cfg.vocab_size:
            problems.append(
                f"vocab_size {self.vocab_size} != model.vocab_size {model_cfg.vocab_size}"
            )
        for name in ("mask", "pad", "bos", "eos"):
            data_id = self.special_ids.get(name)
            model_id = getattr(model_cfg, f"{name}_token_id")
            if data_id != model_id:
                problems.append(f"{name} id {data_id} != model.{name}_token_id {model_id}")
        if problems:
            raise DataError(
                f"{self.directory} was prepared with tokenizer "
                f"{self.manifest['tokenizer']['identity']} that does not match the "
                f"model: {'; '.join(problems)}. Prepare the data with the model's "
                "tokenizer or change the model config."
            )

    def _missing(self, path) -> DataError:
        return DataError(
            f"shard file {path} listed in the manifest is missing; restore it or re-run "
            "illada prepare"
        )

    def offsets(self, shard: int) -> np.ndarray:
        """int64 [records + 1]: stream offset of each record's first token in the shard."""
        with self._offsets_lock:
            if shard in self._offsets:
                self._offsets.move_to_end(shard)
                return self._offsets[shard]
        lengths_path = self.directory / self.shards.lengths_file(shard)
        try:
            raw = lengths_path.read_bytes()
        except FileNotFoundError:
            raise self._missing(lengths_path) from None
        # np.load parses the .npy header with ast.literal_eval, which CPython 3.11 (seen on
        # 3.11.7) cannot run in two threads at once: "SystemError: AST constructor recursion
        # depth mismatch" (its AST builder's depth counter is shared). The parse takes
        # microseconds; the file read above stays parallel.
        with _NPY_PARSE_LOCK:
            try:
                lengths = np.load(io.BytesIO(raw))
            except (ValueError, OSError, EOFError) as err:  # not an .npy file, truncated
                raise DataError(
                    f"{lengths_path} is damaged ({err}); re-run illada prepare"
                ) from err
        if len(lengths) != self.shards.records[shard] or lengths.sum() != self.shard_tokens[shard]:
            raise DataError(
                f"{self.shards.lengths_file(shard)} disagrees with the manifest; "
                "the shard is damaged, re-run illada prepare"
            )
        offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        with self._offsets_lock:
            self._offsets[shard] = offsets
            while len(self._offsets) > MAX_CACHED_OFFSETS:
                self._offsets.popitem(last=False)
        return offsets

    def _reader(self, shard: int):
        from array_record.python import array_record_module

        from illada_jax.data.pipeline.remote import readable_path

        readers = self._local.__dict__.setdefault("readers", collections.OrderedDict())
        if shard in readers:
            readers.move_to_end(shard)
            return readers[shard]
        path = self.directory / self.shards.file(shard)
        if storage.is_local(path) and not path.exists():
            raise self._missing(path)
        try:
            local = readable_path(path)
            self._check_size(shard, path, local)
            reader = array_record_module.ArrayRecordReader(local)
        except DataError:
            raise
        except FileNotFoundError:
            raise self._missing(path) from None
        except Exception as err:  # array_record raises plain RuntimeError/ValueError
            raise DataError(f"cannot open shard {path}: {err}; re-run illada prepare") from err
        if (found := reader.num_records()) != self.shards.records[shard]:
            reader.close()
            raise DataError(
                f"shard {path} has {found} records, the manifest "
                f"says {self.shards.records[shard]}; it is truncated or "
                "damaged, re-run illada prepare"
            )
        readers[shard] = reader
        while len(readers) > MAX_OPEN_READERS:
            readers.popitem(last=False)[1].close()
        return reader

    def _check_size(self, shard: int, path, local) -> None:
        """The cheap integrity check on open: the file's size is the manifest's (format 3)."""
        if self.shards.bytes is None:
            return
        expected, found = int(self.shards.bytes[shard]), storage.file_size(local)
        if found != expected:
            raise DataError(
                f"shard {path} is {found} bytes, the manifest says {expected}: it is truncated "
                "or damaged; re-run the illada prepare command that made the dataset (it "
                "rewrites shards of the wrong size) and check the rest with illada prepare "
                "--verify DIR"
            )

    def read(self, shard: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Stream tokens [start, stop) of a shard and the record index of each token."""
        offsets = self.offsets(shard)
        first = int(np.searchsorted(offsets, start, side="right")) - 1
        last = int(np.searchsorted(offsets, stop, side="left"))  # exclusive
        path = self.directory / self.shards.file(shard)
        try:
            raw = self._reader(shard).read(list(range(first, last)))
        except DataError:
            raise
        except Exception as err:
            raise DataError(f"shard {path} is damaged ({err}); re-run illada prepare") from err
        pieces = [np.frombuffer(r, "<i4") for r in raw]
        if [len(p) for p in pieces] != list(np.diff(offsets[first : last + 1])):
            raise DataError(
                f"shard {path}: record lengths disagree with its lengths file; "
                "re-run illada prepare"
            )
        lo = start - offsets[first]
        tokens = np.concatenate(pieces)[lo : lo + stop - start]
        record = np.repeat(np.arange(first, last), [len(p) for p in pieces])[lo : lo + stop - start]
        return tokens, record


class TokenWindows:
    """Random access to the fixed-length windows of one prepared dataset (see module doc)."""

    def __init__(self, dataset: PreparedDataset, seq_len: int, *, document_aware: bool):
        self.dataset = dataset
        self.seq_len = seq_len
        self.document_aware = document_aware
        self.mask_id = dataset.special_ids["mask"]
        self.pad_id = dataset.special_ids["pad"]
        per_shard = -(-dataset.shard_tokens // seq_len)
        self._first_window = np.concatenate([[0], np.cumsum(per_shard)])

    def __len__(self) -> int:
        return int(self._first_window[-1])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range [0, {len(self)})")
        shard = int(np.searchsorted(self._first_window, index, side="right")) - 1
        start = (index - int(self._first_window[shard])) * self.seq_len
        stop = min(start + self.seq_len, int(self.dataset.shard_tokens[shard]))
        tokens, record = self.dataset.read(shard, start, stop)
        if np.any(tokens == self.mask_id):
            raise DataError(
                f"{self.dataset.directory}: shard {shard} contains the mask id "
                f"{self.mask_id}; the data was prepared with a broken tokenizer, "
                "re-run illada prepare"
            )
        return self._window(tokens, record)

    def _window(self, tokens: np.ndarray, record: np.ndarray) -> dict[str, np.ndarray]:
        n, length = len(tokens), self.seq_len
        out_tokens = np.full(length, self.pad_id, np.int32)
        out_tokens[:n] = tokens
        segment_ids = np.zeros(length, np.int32)
        if self.document_aware:
            new_segment = np.concatenate([[True], record[1:] != record[:-1]])
            segment_ids[:n] = np.cumsum(new_segment)
            starts = np.flatnonzero(new_segment)
            positions = np.zeros(length, np.int32)
            positions[:n] = np.arange(n) - np.repeat(starts, np.diff(np.append(starts, n)))
        else:
            segment_ids[:n] = 1
            positions = np.arange(length, dtype=np.int32)
        return {"tokens": out_tokens, "segment_ids": segment_ids, "positions": positions}
