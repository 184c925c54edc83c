"""`illada prepare --verify DIR`: check every file of a prepared dataset against its manifest.

Readers check each shard's size when they open it (cheap; `packing.PreparedDataset`); this reads
every byte: for each shard, the ArrayRecord file's size and CRC-32 (manifest format 3), its record
count, and the lengths file (records and tokens as the manifest says). A manifest written before
format 3 has no checksums: its shards are checked for records and lengths only, and the report
says so.
"""

from __future__ import annotations

import dataclasses

from illada_jax import storage
from illada_jax.data.pipeline.packing import DataError, PreparedDataset
from illada_jax.data.preparation.prepare import file_size_and_crc32


@dataclasses.dataclass
class VerifyReport:
    shards: int
    tokens: int
    checksums: bool  # False for a manifest older than format 3
    damaged: list[str]  # "file: what is wrong", one per damaged shard

    @property
    def ok(self) -> bool:
        return not self.damaged


def verify_dataset(directory: storage.PathLike, progress: bool = False) -> VerifyReport:
    """Read every shard of the prepared dataset at `directory` (DataError if its manifest
    cannot be read at all)."""
    from tqdm import tqdm

    dataset = PreparedDataset(directory)
    table = dataset.shards
    damaged = []
    for shard in tqdm(range(len(table)), desc="verify", unit="shard", disable=not progress):
        path = dataset.directory / table.file(shard)
        try:
            if table.crc32 is not None:
                if not path.exists():
                    raise DataError("missing")
                size, crc32 = file_size_and_crc32(path)
                if size != table.bytes[shard]:
                    raise DataError(f"{size} bytes, the manifest says {table.bytes[shard]}")
                if crc32 != table.crc32[shard]:
                    raise DataError(
                        f"CRC-32 {crc32:08x}, the manifest says {table.crc32[shard]:08x}"
                    )
            dataset.offsets(shard)  # the lengths file: records and tokens
            dataset.read(shard, 0, int(table.tokens[shard]))  # every record, against the lengths
        except DataError as err:
            damaged.append(f"{table.file(shard)}: {err}")
    return VerifyReport(len(table), int(table.tokens.sum()), table.crc32 is not None, damaged)
