"""A prepared dataset of 100k shards: opening it and reaching the first batch costs no per-shard
work, and a global shuffle over all of them holds a bounded number of open files.

The shards are real ArrayRecord files (one written by `write_records`, hard-linked 100k times by
bench/data.py's `many_shards`, so the test builds in seconds); each holds one 7-token document,
so every 8-token window is known.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import pathlib
import threading
import time

import numpy as np

from illada_jax.data.pipeline import packing
from illada_jax.data.pipeline.batches import Pipeline, PipelineSpec
from illada_jax.data.pipeline.packing import PreparedDataset

# bench/data.py: the shard maker (and the start-up figure of the benchmark).
_BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "data.py"
_spec = importlib.util.spec_from_file_location("bench_data", _BENCH)
bench_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_data)

SHARDS = 100_000
DOC, SPECIAL = bench_data.SHARD_DOC, bench_data.SHARD_SPECIAL  # 6 tokens + EOS (3) per shard


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_100k_shards_start_fast_and_keep_open_files_bounded(tmp_path):
    bench_data.many_shards(tmp_path, SHARDS)
    # The manifest is compact: a columnar shard table, a few bytes per shard (three counts, the
    # size and the CRC-32: ~25 bytes; one JSON object per shard, format version 1, was ~150).
    manifest_bytes = (tmp_path / "manifest.json").stat().st_size
    print(f"100k shards: manifest {manifest_bytes / 1e6:.2f} MB")
    assert manifest_bytes < 32 * SHARDS
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


def test_record_lengths_are_parsed_one_thread_at_a_time(tmp_path, monkeypatch):
    # np.load parses a .npy header with ast.literal_eval, which CPython 3.11.7 cannot run in two
    # threads at once ("AST constructor recursion depth mismatch", seen in a CI run with 4
    # reading threads). The parse must be serialised while the reading stays threaded.
    bench_data.many_shards(tmp_path, 64)
    inside, most = 0, 0
    guard = threading.Lock()
    real_load = np.load

    def watched_load(*args, **kwargs):
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        time.sleep(0.002)  # long enough for another thread to arrive if nothing stops it
        try:
            return real_load(*args, **kwargs)
        finally:
            with guard:
                inside -= 1

    monkeypatch.setattr(np, "load", watched_load)
    dataset = PreparedDataset(tmp_path)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        offsets = list(pool.map(dataset.offsets, range(64)))
    assert most == 1
    for shard_offsets in offsets:  # one 7-token record per shard
        np.testing.assert_array_equal(shard_offsets, [0, len(DOC) + 1])
