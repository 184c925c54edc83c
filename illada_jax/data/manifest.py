"""The on-disk format of a prepared dataset, shared by its writers (`prepare.py`,
`beam_prepare.py`) and its reader (`packing.py`):

    shard-00000.arrayrecord        one record per document: little-endian int32 token ids, EOS last
    shard-00000.lengths.npy        int32 [documents]: tokens per record (random access by offset)
    shard-00000.stats.json         written last, atomically: marks the shard finished
    manifest.json                  tokenizer identity and hash, vocab size, special ids, the shard
                                   table, bad-record counts and the rules applied

The shard table is columnar (format version 2): shard i's files are named by `shard_name(i)`, and
its document/record/token counts are the i-th entries of three integer lists, so a million shards
cost three lists of a million numbers (~20 MB of JSON, parsed in well under a second) instead of a
million JSON objects. Version 1 manifests (a list of per-shard objects naming their files) are
still read; both versions describe the same shard files.
"""

from __future__ import annotations

import dataclasses

import numpy as np

MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # the manifest layout written; bumped when it changes
READABLE_VERSIONS = (1, 2)
# The layout of the shard files themselves (records, lengths, stats). A prepare run's fingerprint
# includes it, not FORMAT_VERSION, so a run interrupted under manifest version 1 still resumes.
SHARD_FORMAT_VERSION = 1
COUNTS = ("documents", "records", "tokens")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def shard_table_json(shards: list[dict]) -> dict:
    """The manifest's columnar shard table from per-shard stats ordered by shard index (each
    with `documents`, `records`, `tokens`; shard i is `shard_name(i)`)."""
    return {"count": len(shards), **{key: [int(s[key]) for s in shards] for key in COUNTS}}


@dataclasses.dataclass(frozen=True)
class ShardTable:
    """Per-shard counts (int64 [shards] each) and file names, from either manifest version."""

    documents: np.ndarray
    records: np.ndarray
    tokens: np.ndarray
    files: tuple[str, ...] | None = None  # version 1 named each file; version 2 derives them

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
        columns, files = {key: shards[key] for key in COUNTS}, None
        if any(len(values) != shards["count"] for values in columns.values()):
            raise ValueError(f"the shard table's columns do not all have {shards['count']} rows")
    return ShardTable(**{k: np.asarray(v, np.int64) for k, v in columns.items()}, files=files)
