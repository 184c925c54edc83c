"""Object storage against local disk: checkpoints of the `100m` preset and the data pipeline.

    python bench/storage.py [--preset 100m] [--seq 2048] [--batch 64] [--batches 60]
                            [--error-rate 0.05]

Starts a GCS emulator on 127.0.0.1 (`illada_jax.tools.gcs_emulator`, a subprocess) and points
the storage clients at it, then measures:
- checkpoint save (orbax, the run's `RunCheckpoints`, synchronous) and restore of the preset's
  whole train state (parameters + AdamW moments, float32) to the emulator and to a local
  directory;
- pipeline tokens/s reading the embedded corpus (3.4M tokens, 9 shards) prepared on the emulator
  vs on local disk (one process, shuffled windows, reader threads), and the seconds from opening
  the dataset with an empty shard cache to 4 batches (`pipeline_start_s_*`: for the emulator,
  this includes downloading the shards those batches touch into the cache, `data/pipeline/remote.py`).
With `--error-rate R`, the clients reach the emulator through the fault proxy
(`illada_jax.tools.fault_proxy`), which answers a fraction R of the requests with 429 or 503:
the same measurements with the clients' retries at work (`injected_faults` in the output).
Target: pipeline from the emulator >= 1M tokens/s on a 2-core machine (a pod host needs ~50k).
Final line `RESULT ckpt_save_s_gcs=... ckpt_save_s_local=... ckpt_restore_s_gcs=...
ckpt_restore_s_local=... pipeline_tokens_per_s_gcs=... pipeline_tokens_per_s_local=...`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def checkpoint_times(preset: str, workdir: str) -> tuple[float, float, float]:
    """(save seconds, restore seconds, GiB) of the preset's train state in `workdir`."""
    import dataclasses

    import jax

    from illada_jax.ckpt.manager import RunCheckpoints
    from illada_jax.config import flags
    from illada_jax.config.experiments import experiment_for_preset
    from illada_jax.train.builder import build_run

    experiment = flags.build(experiment_for_preset(preset))
    experiment = dataclasses.replace(
        experiment, checkpoint=dataclasses.replace(experiment.checkpoint, async_save=False)
    )
    run = build_run(experiment)
    state = run.init_state()
    jax.block_until_ready(state)
    gib = sum(x.nbytes for x in jax.tree.leaves(state)) / 2**30
    checkpoints = RunCheckpoints(workdir, experiment.checkpoint)
    start = time.perf_counter()
    checkpoints.save(1, state, {"next_data_step": 1}, {"lr_scale": 1.0, "config": {}}, force=True)
    checkpoints.wait()
    save = time.perf_counter() - start
    start = time.perf_counter()
    restored = checkpoints.restore_latest(run.abstract_state)
    jax.block_until_ready(restored[1])
    restore = time.perf_counter() - start
    checkpoints.close()
    return save, restore, gib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="100m")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--error-rate", type=float, default=0.0,
                        help="fraction of storage requests answered 429/503 by the fault proxy")  # fmt: skip
    args = parser.parse_args()

    from illada_jax.tools import gcs_emulator

    bucket = "illada-bench"
    server, url = gcs_emulator.start(bucket)
    proxy = None
    if args.error_rate:
        from illada_jax.tools import fault_proxy

        proxy, url = fault_proxy.start(url)
        fault_proxy.configure(url, error_rate=args.error_rate, statuses=[429, 503])
    os.environ["ILLADA_CACHE"] = tempfile.mkdtemp(prefix="illada-bench-cache-")
    from illada_jax import storage

    storage.use_gcs_emulator(url)  # before any storage client starts
    pipeline_rate = _bench_data().pipeline_rate

    from illada_jax.data.pipeline.packing import PreparedDataset
    from illada_jax.data.preparation.prepare import prepare

    results = {}
    try:
        with tempfile.TemporaryDirectory() as local:
            for where, root in (("gcs", f"gs://{bucket}"), ("local", local)):
                save, restore, gib = checkpoint_times(args.preset, f"{root}/ckpt")
                results[f"ckpt_save_s_{where}"] = save
                results[f"ckpt_restore_s_{where}"] = restore
                results["ckpt_gib"] = gib
            for where, root in (("gcs", f"gs://{bucket}"), ("local", local)):
                prepare(["train"], "embedded", f"{root}/data", workers=2, progress=False)
                # From an empty shard cache: open, download what the first 4 batches touch.
                start = time.perf_counter()
                dataset = PreparedDataset(f"{root}/data")
                pipeline_rate(dataset, args.seq, args.batch, 1, args.threads, False)
                results[f"pipeline_start_s_{where}"] = time.perf_counter() - start
                rate = pipeline_rate(dataset, args.seq, args.batch, args.batches, args.threads,
                                     document_aware=False)[1]  # fmt: skip
                results[f"pipeline_tokens_per_s_{where}"] = rate
        if proxy is not None:
            results["injected_faults"] = fault_proxy.counters(url)["errors"]
    finally:
        if proxy is not None:
            proxy.terminate()
        server.terminate()
    for name, value in results.items():
        print(f"{name:<34} {value:,.3f}")
    keys = ("ckpt_save_s_gcs", "ckpt_save_s_local", "ckpt_restore_s_gcs", "ckpt_restore_s_local",
            "pipeline_tokens_per_s_gcs", "pipeline_tokens_per_s_local")  # fmt: skip
    print("RESULT " + " ".join(f"{k}={results[k]:.6g}" for k in keys))


def _bench_data():
    """bench/data.py (its `pipeline_rate`), loaded by path: bench/ is not a package."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data.py")
    spec = importlib.util.spec_from_file_location("bench_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    from illada_jax.cli._quiet import quiet_startup

    quiet_startup()  # before JAX starts a backend: no libtpu / absl start-up lines on CPU hosts
    main()
