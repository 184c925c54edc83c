"""`illada prepare`: raw documents -> ArrayRecord shards of token ids + `manifest.json`.

The layout of an output directory is described in `manifest.py`.

Documents are read in a deterministic order and cut into shards of about `shard_chars`
characters; worker processes tokenise and write shards in parallel (both cores). Re-running with the
same inputs and options skips finished shards; a directory holding shards of a different run is an
error. Bad-record rules: see `sources/formats.py`; in addition a document longer than `max_doc_tokens`
tokens is split into consecutive records of at most that many tokens (`overlong_split` counts the
documents split), and only the last piece carries the EOS.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import pathlib
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Sequence

import numpy as np

from illada_jax import storage
from illada_jax.data.preparation.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    SHARD_FORMAT_VERSION,
    shard_name,
    shard_table_json,
)
from illada_jax.data.sources import formats
from illada_jax.errors import IlladaError

# ArrayRecord: one record per group so that a window can read single documents; zstd keeps
# token shards about half the size of raw int32 at a small decode cost.
WRITER_OPTIONS = "group_size:1,zstd:3"
RULES = {
    "invalid_utf8_replaced": "bytes that are not UTF-8 are replaced by U+FFFD; document kept",
    "empty_skipped": "empty or whitespace-only documents are dropped",
    "bad_json_skipped": "jsonl lines that are not a JSON object are dropped",
    "missing_field_skipped": "records without a string in the chosen field are dropped",
    "overlong_split": "documents over max_doc_tokens are split into records of at most that "
    "many tokens; EOS only after the last piece",
}


class PrepareError(IlladaError, ValueError):
    """The output directory or the options are inconsistent; the message says what to do."""


def _chunk_documents(documents: Iterator[str], shard_chars: int) -> Iterator[list[str]]:
    shard, size = [], 0
    for text in documents:
        shard.append(text)
        size += len(text)
        if size >= shard_chars:
            yield shard
            shard, size = [], 0
    if shard:
        yield shard


_TOKENIZERS: dict[tuple, object] = {}


def _worker_tokenizer(path: str | None, overrides: dict):
    from illada_jax.data.tokenizers.tokenizer import Tokenizer

    key = (path, tuple(sorted(overrides.items())))
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = Tokenizer.load(path, **overrides) if path else Tokenizer.default()
    return _TOKENIZERS[key]


def tokenize_documents(
    tokenizer, texts: Sequence[str | np.ndarray | Sequence[int]], max_doc_tokens: int
) -> tuple[list[np.ndarray], int]:
    """Token records for `texts` (EOS appended, over-long documents split).

    A document is a `str`, tokenised here (in one `encode_batch` call for all strings), or token
    ids (an int array or list: already tokenised in this tokenizer's vocabulary, e.g. a seqio
    task's, without EOS), used as they are.
    Returns (records as int32 arrays, number of documents that were split).
    """
    strings = [i for i, doc in enumerate(texts) if isinstance(doc, str)]
    batch = tokenizer.encode_batch([texts[i] for i in strings]) if strings else []
    encoded = dict(zip(strings, batch, strict=True))
    records, split_docs = [], 0
    for index, doc in enumerate(texts):
        ids = encoded[index] if index in encoded else np.asarray(doc, dtype="<i4").reshape(-1)
        ids = np.concatenate([np.asarray(ids, dtype="<i4"), np.asarray([tokenizer.eos_id], "<i4")])
        if len(ids) > max_doc_tokens:
            split_docs += 1
            records.extend(ids[i : i + max_doc_tokens] for i in range(0, len(ids), max_doc_tokens))
        else:
            records.append(ids)
    return records, split_docs


def _write_shard(
    out_dir: str,
    index: int,
    texts: list[str],
    tokenizer_path: str | None,
    overrides: dict,
    max_doc_tokens: int,
    fingerprint: str,
) -> dict:
    """Worker: tokenise one shard's documents and write it."""
    tokenizer = _worker_tokenizer(tokenizer_path, overrides)
    records, split_docs = tokenize_documents(tokenizer, texts, max_doc_tokens)
    return write_records(
        storage.path(out_dir),
        index,
        records,
        tokenizer.mask_id,
        fingerprint,
        documents=len(texts),
        overlong_split=split_docs,
    )


def write_records(
    directory: storage.Path,
    index: int,
    records: Sequence[np.ndarray],
    mask_id: int,
    fingerprint: str,
    documents: int | None = None,
    overlong_split: int = 0,
) -> dict:
    """Write token records as shard `index` (ArrayRecord + lengths, then the stats marker).

    documents: source documents behind the records (default: one per record)."""
    from array_record.python import array_record_module

    mask_hits = sum(int(np.count_nonzero(np.asarray(r) == mask_id)) for r in records)
    if mask_hits:
        raise PrepareError(
            f"shard {index}: the data contains the mask id {mask_id} {mask_hits} times; the "
            "mask id must be unreachable from text — fix the tokenizer or the token data"
        )
    name = shard_name(index)
    final = directory / f"{name}.arrayrecord"
    # ArrayRecord writes local files only: write next to the target, or in a local temporary
    # directory for object storage, then move/upload (the stats marker is written last).
    local_dir = directory if storage.is_local(directory) else None
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=local_dir) as d:
        tmp = pathlib.Path(d) / final.name
        writer = array_record_module.ArrayRecordWriter(str(tmp), WRITER_OPTIONS)
        for record in records:
            writer.write(np.asarray(record, "<i4").tobytes())
        writer.close()
        size, crc32 = file_size_and_crc32(tmp)
        if storage.is_local(directory):
            os.replace(tmp, final)
        else:
            with tmp.open("rb") as src, final.open("wb") as dst:
                shutil.copyfileobj(src, dst, 16 << 20)
    lengths = np.asarray([len(r) for r in records], np.int32)
    buffer = io.BytesIO()
    np.save(buffer, lengths)
    storage.atomic_write(directory / f"{name}.lengths.npy", buffer.getvalue())
    stats = {
        "file": final.name,
        "lengths_file": f"{name}.lengths.npy",
        "documents": len(records) if documents is None else documents,
        "records": len(records),
        "tokens": int(lengths.sum()),
        "overlong_split": overlong_split,
        "bytes": size,
        "crc32": crc32,
        "fingerprint": fingerprint,
    }
    storage.atomic_write(directory / f"{name}.stats.json", json.dumps(stats).encode())
    return stats


def file_size_and_crc32(path: storage.PathLike) -> tuple[int, int]:
    """(bytes, CRC-32) of a file, read in 16 MiB blocks."""
    size, crc = 0, 0
    with storage.path(path).open("rb") as f:
        for block in iter(lambda: f.read(16 << 20), b""):
            size += len(block)
            crc = zlib.crc32(block, crc)
    return size, crc


def remove_partial_files(directory: storage.Path) -> None:
    """Delete what a killed run left half-written in a local output directory: temporary
    directories of shard writes (`.tmp-*`) and temporary files of atomic writes (`.*.tmp-*`).
    Finished files are never touched; a re-run rewrites the shards these belonged to."""
    if not storage.is_local(directory) or not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.name.startswith(".tmp-") and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith(".") and ".tmp-" in entry.name and entry.is_file():
            entry.unlink(missing_ok=True)


def check_not_empty(shards: list[dict], source: dict, bad_records: dict) -> None:
    """An input that yields no document is an error, not an empty dataset (training on one
    would fail far from the cause). The message says what was dropped and why."""
    if sum(s["tokens"] for s in shards):
        return
    dropped = {key: int(n) for key, n in bad_records.items() if n}
    hint = "check --input and --format"
    if source.get("format") in ("jsonl", "parquet", "tfds", "seqio"):
        hint += f" and --field (now {source.get('field')!r})"
    raise PrepareError(
        f"no usable document in {', '.join(map(str, source.get('inputs', []))) or 'the input'} "
        f"(--format {source.get('format')}); records dropped: {dropped or 'none'}; {hint}"
    )


def write_manifest(
    directory: storage.Path,
    shards: list[dict],
    tokenizer_info: dict,
    source: dict,
    options: dict,
    bad_records: dict,
    fingerprint: str,
) -> dict:
    """Write `manifest.json` for `shards`: the stats of shards 0..n-1 in index order."""
    misnamed = [
        s["file"] for i, s in enumerate(shards) if s["file"] != f"{shard_name(i)}.arrayrecord"
    ]
    if misnamed:
        raise PrepareError(f"shards out of order or misnamed: {misnamed[:3]}")
    manifest = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "tokenizer": tokenizer_info,
        "source": source,
        "options": options,
        "shards": shard_table_json(shards),
        "documents": sum(s["documents"] for s in shards),
        "records": sum(s["records"] for s in shards),
        "tokens": sum(s["tokens"] for s in shards),
        "bad_records": {key: int(bad_records.get(key, 0)) for key in RULES},
        "rules": RULES,
    }
    # Indented for reading, except the shard table: one line, a few bytes per shard.
    text = json.dumps({**manifest, "shards": "SHARD_TABLE"}, indent=2).replace(
        '"SHARD_TABLE"', json.dumps(manifest["shards"], separators=(",", ":"))
    )
    storage.atomic_write(directory / MANIFEST, text.encode())
    return manifest


def prepare_token_documents(
    documents: Sequence[Sequence[int]],
    output: storage.PathLike,
    *,
    vocab_size: int,
    special_ids: dict,
    identity: str = "pretokenized",
    documents_per_shard: int = 1000,
) -> dict:
    """Shards + manifest from already tokenised documents (EOS appended to each), e.g. data
    tokenised elsewhere. `special_ids` needs at least mask, pad, bos, eos."""
    missing = {"mask", "pad", "bos", "eos"} - set(special_ids)
    if missing:
        raise PrepareError(f"special_ids lacks {sorted(missing)}")
    directory = storage.path(output)
    directory.mkdir(parents=True, exist_ok=True)
    fingerprint = hashlib.sha256(f"{identity}:{vocab_size}".encode()).hexdigest()[:16]
    eos = np.asarray([special_ids["eos"]], np.int32)
    shards = []
    for index, first in enumerate(range(0, len(documents), documents_per_shard)):
        chunk = documents[first : first + documents_per_shard]
        records = [np.concatenate([np.asarray(d, np.int32), eos]) for d in chunk]
        shards.append(write_records(directory, index, records, special_ids["mask"], fingerprint))
    info = {
        "identity": identity,
        "kind": "pretokenized",
        "vocab_size": vocab_size,
        "special_ids": dict(special_ids),
    }
    options = {"documents_per_shard": documents_per_shard, "writer_options": WRITER_OPTIONS}
    return write_manifest(directory, shards, info, {"format": "tokens"}, options, {}, fingerprint)


def run_fingerprint(
    identity: str, overrides: dict, source: dict, options: dict, files: list
) -> str:
    """What makes two prepare runs the same run (shards of one may complete the other): format
    version, tokenizer identity and overrides, source and options, input files' sizes and mtimes."""
    return hashlib.sha256(
        json.dumps(
            [SHARD_FORMAT_VERSION, identity, overrides, source, options, files], sort_keys=True
        ).encode()
    ).hexdigest()[:16]


def _finished_shard(directory: storage.Path, index: int, fingerprint: str) -> dict | None:
    stats_path = directory / f"{shard_name(index)}.stats.json"
    if not stats_path.exists():
        return None
    stats = json.loads(stats_path.read_text())
    if stats.get("fingerprint") != fingerprint:
        raise PrepareError(
            f"{directory} holds shards of a different prepare run (other inputs, "
            "options or tokenizer); choose a new --output or delete it"
        )
    shard, lengths = directory / stats["file"], directory / stats["lengths_file"]
    if not shard.exists() or not lengths.exists():
        return None
    if stats.get("bytes") != storage.file_size(shard):  # damaged since: write it again
        return None
    return stats


def _tokenizer_info(tokenizer) -> dict:
    """The manifest's record of the tokenizer that made the shards."""
    return {
        "identity": tokenizer.identity,
        "kind": tokenizer.kind,
        "file": tokenizer.path.name,
        "sha256": _file_sha256(tokenizer.path),
        "vocab_size": tokenizer.vocab_size,
        "special_ids": tokenizer.special_ids(),
    }


def _file_sha256(path: storage.PathLike) -> str:
    digest = hashlib.sha256()
    with storage.path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare(
    inputs: Sequence[str],
    fmt: str,
    output: storage.PathLike,
    *,
    tokenizer_path: str | None = None,
    tokenizer_overrides: dict | None = None,
    field: str = "text",
    text_unit: str = "file",
    seqio_module: str | None = None,
    data_dir: str | None = None,
    shard_chars: int | None = None,
    max_doc_tokens: int = 1 << 20,
    workers: int = 2,
    progress: bool = True,
    split: tuple[str, float] | None = None,
) -> dict:
    """Prepare shards; returns the manifest dict (also written to `output/manifest.json`).

    `data_dir`: the TFDS data dir for `tfds` names and seqio tasks that read TFDS; tfds and seqio
    inputs are described in the manifest's `source` (`formats.describe`). `split`: ("heldout",
    F) keeps only the documents `in_heldout(text, F)` selects, ("train", F) only the others."""
    if fmt not in formats.FORMATS:
        raise PrepareError(f"--format {fmt!r} is not one of {', '.join(formats.FORMATS)}")
    if max_doc_tokens < 2:
        raise PrepareError(f"max_doc_tokens={max_doc_tokens} must be >= 2")
    overrides = dict(tokenizer_overrides or {})
    tokenizer = _worker_tokenizer(tokenizer_path, overrides)
    # Small shards for the small embedded corpus keep both cores busy; 16M characters otherwise.
    shard_chars = shard_chars or (1_000_000 if fmt == "embedded" else 16_000_000)
    source = {
        "format": fmt,
        "inputs": [str(i) for i in inputs],
        "field": field,
        "text_unit": text_unit,
    }
    options = {
        "shard_chars": shard_chars,
        "max_doc_tokens": max_doc_tokens,
        "writer_options": WRITER_OPTIONS,
    }
    if split is not None:
        options["split"] = {"part": split[0], "heldout_fraction": split[1]}
    if fmt in ("tfds", "seqio"):  # what the names resolve to (versions, vocabularies, modes)
        source.update(
            formats.describe(
                fmt,
                inputs,
                field=field,
                tokenizer=tokenizer,
                seqio_module=seqio_module,
                data_dir=data_dir,
            )
        )
    # Inputs are checked (and their sizes and mtimes fingerprinted) before anything is written.
    files = formats.file_signature(fmt, inputs)
    fingerprint = run_fingerprint(tokenizer.identity, overrides, source, options, files)

    out_dir = storage.path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_partial_files(out_dir)
    stats = collections.Counter()
    documents = formats.iter_documents(
        fmt,
        inputs,
        stats,
        field=field,
        text_unit=text_unit,
        seqio_module=seqio_module,
        tokenizer=tokenizer,
        data_dir=data_dir,
    )
    if split is not None:
        part, fraction = split
        documents = (d for d in documents if in_heldout(d, fraction) == (part == "heldout"))
    shard_results: dict[int, dict] = {}
    bar = _progress_bar(progress)
    context = multiprocessing.get_context("spawn")
    with (
        contextlib.closing(bar),  # closed before an error is printed, not after
        concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool,
    ):
        pending = {}
        for index, texts in enumerate(_chunk_documents(documents, shard_chars)):
            done = _finished_shard(out_dir, index, fingerprint)
            if done is not None:
                shard_results[index] = done
                bar.update(done["tokens"])
                continue
            future = pool.submit(
                _write_shard,
                str(out_dir),
                index,
                texts,
                str(tokenizer.path) if tokenizer_path else None,
                overrides,
                max_doc_tokens,
                fingerprint,
            )
            pending[future] = index
            # Bound the texts held in memory: at most two shards queued per worker.
            while len(pending) >= 2 * workers:
                _collect(pending, shard_results, bar, concurrent.futures.FIRST_COMPLETED)
        while pending:
            _collect(pending, shard_results, bar, concurrent.futures.ALL_COMPLETED)

    shards = [shard_results[i] for i in sorted(shard_results)]
    stats["overlong_split"] += sum(s["overlong_split"] for s in shards)
    if split is not None and not sum(s["tokens"] for s in shards):
        part, fraction = split
        raise PrepareError(
            f"--heldout-fraction {fraction:g} left the {part} part of "
            f"{', '.join(map(str, inputs))} without a document: "
            + (
                "raise the fraction or give more documents"
                if part == "heldout"
                else "lower the fraction"
            )  # fmt: skip
        )
    check_not_empty(shards, source, stats)
    return write_manifest(
        out_dir, shards, _tokenizer_info(tokenizer), source, options, stats, fingerprint
    )


def in_heldout(document: str | np.ndarray, fraction: float) -> bool:
    """Whether a document belongs to the held-out part: its SHA-256 (of the UTF-8 text, or of the
    token ids) read as a number in [0, 1) is below `fraction`, so the same documents are held out
    on every run and on every machine, whatever the input order."""
    data = document.encode("utf-8") if isinstance(document, str) else np.asarray(document).tobytes()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") / 2.0**64 < fraction


def prepare_sft(
    source: str,
    output: storage.PathLike,
    *,
    tokenizer_path: str | None = None,
    dialogues_per_shard: int = 1000,
) -> dict:
    """iLLaDA-style SFT shards (docs/algorithms.md#sft-illada-style): one record per dialogue — the
    whole chat-formatted dialogue ending with a single EOS — so windows over the stream are the SFT
    training windows.
    `source`: a JSONL file of dialogues or `demo`."""
    from illada_jax.data.chat.sft import ChatFormatter, load_dialogues

    tokenizer = _worker_tokenizer(tokenizer_path, {})
    formatter = ChatFormatter(tokenizer)
    records = [np.asarray(formatter.example(d), np.int32) for d in load_dialogues(source)]
    if not records:
        raise PrepareError(f"no dialogue in {source}: the SFT input is empty")
    directory = storage.path(output)
    directory.mkdir(parents=True, exist_ok=True)
    fingerprint = hashlib.sha256(f"sft:{source}:{tokenizer.identity}".encode()).hexdigest()[:16]
    shards = [
        write_records(
            directory,
            index,
            records[first : first + dialogues_per_shard],
            tokenizer.mask_id,
            fingerprint,
        )
        for index, first in enumerate(range(0, len(records), dialogues_per_shard))
    ]
    info = _tokenizer_info(tokenizer)
    source_info = {"format": "sft", "inputs": [source], "template": "default"}
    return write_manifest(
        directory,
        shards,
        info,
        source_info,
        {"dialogues_per_shard": dialogues_per_shard},
        {},
        fingerprint,
    )


def _collect(pending: dict, results: dict, bar, how) -> None:
    done, _ = concurrent.futures.wait(list(pending), return_when=how)
    for future in done:
        index = pending.pop(future)
        results[index] = future.result()
        bar.update(results[index]["tokens"])


def _progress_bar(enabled: bool):
    from tqdm import tqdm

    return tqdm(unit="tok", unit_scale=True, desc="prepare", disable=not enabled)
