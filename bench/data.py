"""Data throughput: `illada prepare` on the embedded corpus, then packed batches from its shards.

    python bench/data.py [--seq 2048] [--batch 64] [--batches 60] [--threads 4] [--json out.json]

Prepares the embedded corpus (train split, default tokenizer, 2 worker processes) into a fresh
temporary directory and reports tokens/s, then iterates this process's pipeline (one process,
shuffled windows, reader threads) and reports global batches/s and tokens/s, for plain and for
document-aware windows. Targets on a 2-core machine: prepare >= 300,000 tokens/s, pipeline
>= 1,000,000 tokens/s. Final line `RESULT tokens_per_s=<float> prepare_tokens_per_s=<float>`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from illada_jax.data.packing import PreparedDataset
from illada_jax.data.pipeline import Pipeline, PipelineSpec
from illada_jax.data.prepare import prepare


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--json", default=None)
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
    for name, value in results.items():
        print(f"{name:<34} {value:,.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    tokens_per_s = min(results["plain_tokens_per_s"], results["document_aware_tokens_per_s"])
    print(
        f"RESULT tokens_per_s={tokens_per_s:.6g} "
        f"prepare_tokens_per_s={results['prepare_tokens_per_s']:.6g}"
    )


if __name__ == "__main__":
    main()
