"""Train-step throughput and MFU of the `small` preset (sequence 512, global batch 16).

    python bench/train.py [--devices 0] [--steps 8] [--preset small] [--batch 16] [--seq 512]
                          [--rules auto] [--remat POLICY] [--compute-dtype float32] [--json out.json]

The real sharded train step (state, optimizer, diffusion objective, chunked CE) on a mesh over
`--devices` virtual CPU devices (0 = one per core: XLA:CPU runs many non-matmul fusions on one
thread, so splitting the batch over the cores uses the whole machine) or the accelerator's
devices. MFU = model FLOPs (docs/architecture.md#flops: 6N + 12·n_layers·d·S per token) / the peak:
on CPU the same process's measured dense-matmul FLOP/s in the compute dtype, on GPU/TPU the bf16
peak table.

`--loop-steps N` (default 12; 0 = skip) also times the real training loop (`train/loop.py`: data
pipeline, train step, hooks) on the recipe named like `--preset` (`config:small`, `config:tiny`)
at the same batch, sequence length, dtype and rules, once with
`train.log_every=1` (metrics fetched and logged every step) and once with `log_every=50` (each
step's metrics fetched one step late, so the host prepares the next batch while a step runs):
`loop_step_s_log1`, `loop_step_s_log50`.

Final line `RESULT tokens_per_s=<float> mfu=<float> [loop_log1_over_log50=<float>]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=0)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--rules", default="auto")
    parser.add_argument("--remat", default=None, help="remat policy (default: the preset's)")
    parser.add_argument("--compute-dtype", default="float32")
    parser.add_argument("--loss-chunk", type=int, default=None, help="CE chunk (default: config)")
    parser.add_argument("--no-scan", action="store_true", help="unroll the layers (no lax.scan)")
    parser.add_argument(
        "--no-fuse", action="store_true", help="separate q/k/v and gate/up matmuls (A/B)"
    )
    parser.add_argument("--loop-steps", type=int, default=12, help="timed loop steps (0: skip)")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--profile", default=None, help="write a jax.profiler trace of one step here"
    )
    args = parser.parse_args()
    if args.loop_steps:
        from illada_jax.config import registry

        if args.preset not in registry.recipes():
            parser.error(
                f"--loop-steps times the recipe config:{args.preset}, which does not "
                "exist; pass --loop-steps 0 or a preset with a recipe (tiny, small)"
            )

    from illada_jax.parallel.mesh import configure_cpu_devices

    configure_cpu_devices(args.devices)  # before JAX's backends start

    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding

    from illada_jax.config.presets import MODEL_PRESETS
    from illada_jax.config.schema import DiffusionConfig, MeshConfig, ModelConfig, OptimConfig
    from illada_jax.model.transformer import graphdef_and_specs
    from illada_jax.obs import flops
    from illada_jax.parallel.mesh import check_batch, make_mesh
    from illada_jax.parallel.rules import batch_spec
    from illada_jax.train import state as state_lib
    from illada_jax.train.optim import make_optimizer
    from illada_jax.train.step import make_train_step, weights_compute_dtype

    cfg = dataclasses.replace(
        ModelConfig(**MODEL_PRESETS[args.preset]),
        max_seq_len=args.seq,
        compute_dtype=args.compute_dtype,
    )
    if args.no_scan:
        cfg = dataclasses.replace(cfg, scan_layers=False)
    if args.no_fuse:
        cfg = dataclasses.replace(cfg, fused_projections=False)
    if args.remat:
        cfg = dataclasses.replace(cfg, remat_policy=args.remat)
    mesh = make_mesh(MeshConfig(rules=args.rules))
    check_batch(mesh, args.batch)
    optimizer = make_optimizer(OptimConfig(warmup_steps=0))
    diffusion = DiffusionConfig(random_length_mode="illada_split")
    if args.loss_chunk:
        diffusion = dataclasses.replace(diffusion, loss_chunk_size=args.loss_chunk)
    shardings = state_lib.state_shardings(cfg, optimizer, mesh, args.rules)
    state = state_lib.create_state(cfg, optimizer, mesh, args.rules, seed=0)
    graphdef = graphdef_and_specs(cfg)[0]
    rows = NamedSharding(mesh, batch_spec(args.rules, mesh, args.batch))
    with jax.set_mesh(mesh):
        step = make_train_step(
            graphdef,
            diffusion,
            optimizer,
            state_shardings=shardings,
            mesh=mesh,
            rules=args.rules,
            global_batch=args.batch,
            compute_dtype=weights_compute_dtype(cfg),
        )
    tokens = np.random.default_rng(0).integers(5, cfg.vocab_size, (args.batch, args.seq), np.int32)
    batch = {"tokens": jax.make_array_from_process_local_data(rows, tokens)}
    controls = {
        "lr_scale": jnp.float32(1.0),
        "loss_ceiling": jnp.float32(np.inf),
        "data_step": jnp.int32(0),
    }

    times = []
    with jax.set_mesh(mesh):
        for i in range(args.steps + 2):  # two warm-up steps (compile, first run)
            start = time.perf_counter()
            state, metrics = step(state, batch, jax.random.key(i), controls)
            jax.block_until_ready(metrics["loss"])
            if i >= 2:
                times.append(time.perf_counter() - start)
        if args.profile:
            with jax.profiler.trace(args.profile, create_perfetto_trace=True):
                state, metrics = step(state, batch, jax.random.key(0), controls)
                jax.block_until_ready(metrics["loss"])
    seconds = statistics.median(times)
    tokens_per_s = args.batch * args.seq / seconds
    flops_per_token = flops.train_flops_per_token(cfg, args.seq)
    peak, source = flops.total_peak_flops(measured_cpu_dtype=args.compute_dtype)
    results = {
        "devices": len(jax.devices()),
        "device_kind": jax.devices()[0].device_kind,
        "preset": args.preset,
        "step_s": seconds,
        "tokens_per_s": tokens_per_s,
        "model_flops_per_s": tokens_per_s * flops_per_token,
        "peak_flops_per_s": peak,
        "peak_source": source,
        "mfu": flops.mfu(tokens_per_s, flops_per_token, peak),
    }
    if args.loop_steps:
        for log_every in (1, 50):
            results[f"loop_step_s_log{log_every}"] = loop_step_seconds(args, log_every)
    for key, value in results.items():
        print(f"{key:<20} {value:.4g}" if isinstance(value, float) else f"{key:<20} {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    line = f"RESULT tokens_per_s={tokens_per_s:.6g} mfu={results['mfu']:.4f}"
    if args.loop_steps:
        line += f" loop_log1_over_log50={results['loop_step_s_log1'] / results['loop_step_s_log50']:.3f}"
    print(line)


def loop_step_seconds(args, log_every: int) -> float:
    """Median seconds per step of `train/loop.py`'s `advance` (hooks included) on the recipe
    `config:<preset>` with this `log_every`, after 3 warm-up steps; no checkpoints, evaluation or
    samples."""
    import tempfile

    import jax

    from illada_jax.ckpt.manager import RunCheckpoints
    from illada_jax.config import flags
    from illada_jax.obs.writers import MetricWriter
    from illada_jax.train.builder import build_run
    from illada_jax.train.loop import advance, default_hooks, start

    warmup = 3
    experiment = flags.build(flags.resolve([
        f"config:{args.preset}", f"set:train.batch_size={args.batch}", f"set:train.seq_len={args.seq}",
        f"set:model.compute_dtype={args.compute_dtype!r}", f"set:mesh.rules={args.rules!r}",
        f"set:train.steps={warmup + args.loop_steps}", f"set:train.log_every={log_every}",
        "set:checkpoint.every=100000", "set:train.sample_prompts=()",
    ]))  # fmt: skip
    with tempfile.TemporaryDirectory() as workdir:
        run = build_run(experiment)
        checkpoints = RunCheckpoints(workdir, experiment.checkpoint)
        writer = MetricWriter(workdir, enabled=False)
        loop = start(run, workdir, checkpoints, writer, print_fn=lambda *_: None)
        hooks = default_hooks(run, workdir, checkpoints)
        for hook in hooks:
            hook.on_start(loop)
        times = []
        for i in range(warmup + args.loop_steps - 1):  # the last step: logged by every setting
            start_time = time.perf_counter()
            advance(loop, hooks)
            if i >= warmup:
                times.append(time.perf_counter() - start_time)
        jax.block_until_ready(loop.state)
        loop.progress.close()
        checkpoints.close()
        writer.close()
    return statistics.median(times)


if __name__ == "__main__":
    main()
