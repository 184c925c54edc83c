"""A prepared dataset of 100k shards: opening it and reaching the first batch costs no per-shard
work, and a global shuffle over all of them holds a bounded number of open files.

The shards are real ArrayRecord files (one written by `write_records`, hard-linked 100k times, so
the test builds in seconds); each holds one 7-token document, so every 8-token window is known.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np

from illada_jax.data import packing
from illada_jax.data.packing import PreparedDataset
from illada_jax.data.pipeline import Pipeline, PipelineSpec
from illada_jax.data.prepare import shard_name, write_manifest, write_records

SHARDS = 100_000
DOC = np.arange(10, 16, dtype=np.int32)  # 6 tokens + EOS (3) = 7 per shard
SPECIAL = {"mask": 4, "pad": 0, "bos": 2, "eos": 3}


def _many_shards(directory) -> None:
    record = np.concatenate([DOC, [SPECIAL["eos"]]]).astype(np.int32)
    first = write_records(directory, 0, [record], SPECIAL["mask"], "fp")
    shards = [first]
    for index in range(1, SHARDS):
        name = shard_name(index)
        # A file takes at most ~65k hard links (ext4): every 50k shards start from a fresh copy.
        if index % 50_000 == 0:
            make, source = shutil.copyfile, shard_name(0)
        else:
            make, source = os.link, shard_name(index - index % 50_000)
        for suffix in (".arrayrecord", ".lengths.npy"):
            make(directory / f"{source}{suffix}", directory / f"{name}{suffix}")
        shards.append({**first, "file": f"{name}.arrayrecord",
                       "lengths_file": f"{name}.lengths.npy"})  # fmt: skip
    info = {"identity": "test", "kind": "pretokenized", "vocab_size": 64, "special_ids": SPECIAL}
    write_manifest(directory, shards, info, {"format": "tokens"}, {}, {}, "fp")


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_100k_shards_start_fast_and_keep_open_files_bounded(tmp_path):
    _many_shards(tmp_path)
    threads, batch = 4, 16
    spec = PipelineSpec(datasets=("many",), weights=(), seq_len=8, global_batch=batch, seed=0,
                        read_threads=threads)  # fmt: skip
    files_before = _open_files()
    start = time.perf_counter()
    iterator = Pipeline(spec, [PreparedDataset(tmp_path)]).iterator(0)
    first = next(iterator)
    startup = time.perf_counter() - start
    # Every window is one shard's document: 7 tokens, then padding.
    expected = np.concatenate([DOC, [SPECIAL["eos"], SPECIAL["pad"]]])
    np.testing.assert_array_equal(first["tokens"], np.tile(expected, (batch, 1)))
    for _ in range(300):  # a global shuffle: ~4,800 windows from ~4,800 different shards
        next(iterator)
    opened = _open_files() - files_before
    print(f"100k shards: start-up to the first batch {startup:.2f} s; {opened} more open files")
    assert startup < 10.0
    assert opened <= threads * packing.MAX_OPEN_READERS + 32
