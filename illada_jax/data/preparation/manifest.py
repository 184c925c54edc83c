"""The on-disk format of a prepared dataset, shared by its writers (`prepare.py`,
`beam_prepare.py`) and its reader (`pipeline/packing.py`):

    shard-00000.arrayrecord        one record per document: little-endian int32 token ids, EOS last
    shard-00000.lengths.npy        int32 [documents]: tokens per record (random access by offset)
    shard-00000.stats.json         written last, atomically: marks the shard finished
    manifest.json                  tokenizer identity and hash, vocab size, special ids, the shard
                                   table, bad-record counts and the rules applied; written last

Every file appears whole or not at all: a shard is written under a temporary name and renamed,
its stats marker after it, the manifest after every shard; a killed run leaves no manifest and
a re-run completes it to the same bytes (docs/data.md#interrupted-runs).

The shard table is columnar (format version 2): shard i's files are named by `shard_name(i)`, and
its document/record/token counts are the i-th entries of three integer lists, so a million shards
cost lists of a million numbers (~24 bytes of JSON per shard with the two below) instead of a
million JSON objects. Version 3 adds two integrity columns: each shard file's size in bytes,
checked when a reader opens the shard, and its CRC-32, checked by `illada prepare --verify DIR`.
Versions 1 (a list of per-shard objects naming their files) and 2 (no integrity columns) are
still read; every version describes the same shard files.
"""

from __future__ import annotations

import dataclasses

import numpy as np

MANIFEST = "manifest.json"
FORMAT_VERSION = 3  # the manifest layout written; bumped when it changes
READABLE_VERSIONS = (1, 2, 3)
# The layout of the shard files themselves (records, lengths, stats). A prepare run's fingerprint
# includes it, not FORMAT_VERSION. Version 2: the stats marker holds the shard's size and CRC-32.
SHARD_FORMAT_VERSION = 2
COUNTS = ("documents", "records", "tokens")
INTEGRITY = ("bytes", "crc32")  # of the ArrayRecord file (format version 3)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def shard_table_json(shards: list[dict]) -> dict:
    """The manifest's columnar shard table from per-shard stats ordered by shard index (each
    with `documents`, `records`, `tokens`; shard i is `shard_name(i)`)."""
    return {
        "count": len(shards),
        **{key: [int(s[key]) for s in shards] for key in COUNTS + INTEGRITY},
    }


@dataclasses.dataclass(frozen=True)
class ShardTable:
    """Per-shard counts (int64 [shards] each) and file names, from either manifest version."""

    documents: np.ndarray
    records: np.ndarray
    tokens: np.ndarray
    files: tuple[str, ...] | None = None  # version 1 named each file; versions 2+ derive them
    bytes: np.ndarray | None = None  # ArrayRecord file sizes (version 3)
    crc32: np.ndarray | None = None  # and their CRC-32s (version 3)

    def __len__(self) -> int:
        return len(self.tokens)

    def file(self, index: int) -> str:
        """The shard's ArrayRecord file name."""
        return self.files[index] if self.files else f"{shard_name(index)}.arrayrecord"

    def lengths_file(self, index: int) -> str:
        """The shard's record-lengths file name."""
        return f"{self.file(index).removesuffix('.arrayrecord')}.lengths.npy"


def shard_table(manifest: dict) -> ShardTable:
    """The shard table of a parsed manifest of a readable version. Raises ValueError naming
    what is inconsistent (a damaged manifest)."""
    shards = manifest["shards"]
    if manifest["format_version"] == 1:
        columns = {key: [s[key] for s in shards] for key in COUNTS}
        files = tuple(s["file"] for s in shards)
        for name, shard in zip(files, shards):
            if shard["lengths_file"] != f"{name.removesuffix('.arrayrecord')}.lengths.npy":
                raise ValueError(f"shard {name} names lengths file {shard['lengths_file']}")
    else:
        keys = COUNTS + (INTEGRITY if manifest["format_version"] >= 3 else ())
        columns, files = {key: shards[key] for key in keys}, None
        if any(len(values) != shards["count"] for values in columns.values()):
            raise ValueError(f"the shard table's columns do not all have {shards['count']} rows")
    return ShardTable(**{k: np.asarray(v, np.int64) for k, v in columns.items()}, files=files)
