"""Data throughput: `illada prepare` on the embedded corpus, then packed batches from its shards.

    python bench/data.py [--seq 2048] [--batch 64] [--batches 60] [--threads 4] [--json out.json]

Prepares the embedded corpus (train split, default tokenizer, 2 worker processes) into a fresh
temporary directory and reports tokens/s, then iterates this process's pipeline (one process,
shuffled windows, reader threads) and reports global batches/s and tokens/s, for plain and for
document-aware windows. Then prepares the same corpus with `--runner beam` (Beam's DirectRunner
engine) with 1 and 2 worker processes; its tokens/s include Beam's start-up (~5 s: worker
processes, stages), so it trails the single-host figure on a corpus this small, and on 2 cores the
two are about equal (SentencePiece's batch encode already uses every core). Targets on a 2-core
machine: prepare >= 300,000 tokens/s, pipeline >= 1,000,000 tokens/s. Final line `RESULT
tokens_per_s=<float> prepare_tokens_per_s=<float> beam_prepare_tokens_per_s=<float, 2 workers>
beam_prepare_1worker_tokens_per_s=<float>` (nan without the [beam] extra)
onthefly_tokens_per_s=<float> startup_s_100k_shards=<float>`.

On the fly: the embedded corpus written as 8 jsonl files, read as `raw:jsonl:DIR` by a pipeline
with 2 tokeniser worker processes (the default tokenizer), after a warm-up: tokens/s of packed
windows (target >= 200,000). Start-up: a prepared dataset of `--shards` shards (one real shard
hard-linked; 100,000 by default), from opening it to the first batch (target <= 5 s).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import shutil
import tempfile
import time
from math import nan

import numpy as np

from illada_jax.data.pipeline.batches import Pipeline, PipelineSpec
from illada_jax.data.pipeline.packing import PreparedDataset
from illada_jax.data.preparation.prepare import prepare, shard_name, write_manifest, write_records

# The tiny shards of `many_shards`: one 6-token document + EOS each.
SHARD_DOC = np.arange(10, 16, dtype=np.int32)
SHARD_SPECIAL = {"mask": 4, "pad": 0, "bos": 2, "eos": 3}


def pipeline_rate(
    dataset, seq: int, batch: int, batches: int, threads: int, document_aware: bool
) -> tuple[float, float]:
    spec = PipelineSpec(
        datasets=("bench",),
        weights=(),
        seq_len=seq,
        global_batch=batch,
        seed=0,
        document_aware=document_aware,
        read_threads=threads,
    )
    iterator = Pipeline(spec, [dataset]).iterator(0)
    for _ in range(3):  # warm-up: thread start, first shard opens
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - start
    return batches / seconds, batches * batch * seq / seconds


def beam_prepare_rates() -> dict[str, float]:
    """`illada prepare --runner beam` on the embedded train split with 1 and 2 DirectRunner
    worker processes, each into a fresh directory: tokens/s, start-up included."""
    if importlib.util.find_spec("apache_beam") is None:  # no [beam] extra
        return {}
    from illada_jax.data.preparation.beam_prepare import prepare_beam

    results = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            manifest = prepare_beam(["train"], "embedded", tmp, workers=workers, progress=False)
            seconds = time.perf_counter() - start
        results[f"beam_{workers}worker_seconds"] = seconds
        results[f"beam_{workers}worker_tokens_per_s"] = manifest["tokens"] / seconds
    return results


def onthefly_rate(seq: int, batch: int, batches: int, workers: int = 2) -> float:
    """Tokens/s of a `raw:jsonl:` pipeline over the embedded corpus (see the module doc)."""
    from illada_jax.data.sources.corpus import embedded_documents

    with tempfile.TemporaryDirectory() as tmp:
        parts = [[] for _ in range(8)]
        for index, doc in enumerate(embedded_documents("train")):
            parts[index % 8].append(json.dumps({"text": doc.text}) + "\n")
        for index, lines in enumerate(parts):
            (pathlib.Path(tmp) / f"part-{index}.jsonl").write_text("".join(lines))
        spec = PipelineSpec(datasets=(f"raw:jsonl:{tmp}",), weights=(), seq_len=seq,
                            global_batch=batch, seed=0, tokenize_workers=workers)  # fmt: skip
        iterator = Pipeline(spec).iterator(0)
        for _ in range(3):  # warm-up: worker processes start, load the tokenizer
            next(iterator)
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        seconds = time.perf_counter() - start
        iterator.close()
    return batches * batch * seq / seconds


def many_shards(directory: pathlib.Path, count: int) -> None:
    """A prepared dataset of `count` shards: one real ArrayRecord shard (`SHARD_DOC` + EOS),
    hard-linked `count` times (so it builds in seconds), and its manifest."""
    record = np.concatenate([SHARD_DOC, [SHARD_SPECIAL["eos"]]]).astype(np.int32)
    first = write_records(directory, 0, [record], SHARD_SPECIAL["mask"], "fp")
    shards = [first]
    for index in range(1, count):
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
    info = {"identity": "test", "kind": "pretokenized", "vocab_size": 64,
            "special_ids": SHARD_SPECIAL}  # fmt: skip
    write_manifest(directory, shards, info, {"format": "tokens"}, {}, {}, "fp")


def startup_seconds(count: int) -> float:
    """Seconds from opening a `count`-shard dataset to its first batch."""
    with tempfile.TemporaryDirectory() as tmp:
        many_shards(pathlib.Path(tmp), count)
        spec = PipelineSpec(datasets=("many",), weights=(), seq_len=8, global_batch=16, seed=0)
        start = time.perf_counter()
        next(Pipeline(spec, [PreparedDataset(tmp)]).iterator(0))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--json", default=None)
    parser.add_argument("--shards", type=int, default=100_000, help="for the start-up figure")
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = prepare(["train"], "embedded", tmp, workers=2, progress=False)
        seconds = time.perf_counter() - start
        results["prepare_tokens"] = manifest["tokens"]
        results["prepare_seconds"] = seconds
        results["prepare_tokens_per_s"] = manifest["tokens"] / seconds
        dataset = PreparedDataset(tmp)
        for name, aware in (("plain", False), ("document_aware", True)):
            rate, tokens = pipeline_rate(
                dataset, args.seq, args.batch, args.batches, args.threads, aware
            )
            results[f"{name}_batches_per_s"] = rate
            results[f"{name}_tokens_per_s"] = tokens
    results.update(beam_prepare_rates())
    results["onthefly_tokens_per_s"] = onthefly_rate(args.seq, args.batch, args.batches)
    results[f"startup_s_{args.shards}_shards"] = startup_seconds(args.shards)
    for name, value in results.items():
        print(f"{name:<34} {value:,.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    tokens_per_s = min(results["plain_tokens_per_s"], results["document_aware_tokens_per_s"])
    print(
        f"RESULT tokens_per_s={tokens_per_s:.6g} "
        f"prepare_tokens_per_s={results['prepare_tokens_per_s']:.6g} "
        f"beam_prepare_tokens_per_s={results.get('beam_2worker_tokens_per_s', nan):.6g} "
        f"beam_prepare_1worker_tokens_per_s={results.get('beam_1worker_tokens_per_s', nan):.6g} "
        f"onthefly_tokens_per_s={results['onthefly_tokens_per_s']:.6g} "
        f"startup_s_100k_shards={results[f'startup_s_{args.shards}_shards']:.3g}"
    )


if __name__ == "__main__":
    from illada_jax.cli._quiet import quiet_startup

    quiet_startup()  # before JAX starts a backend: no libtpu / absl start-up lines on CPU hosts
    main()
