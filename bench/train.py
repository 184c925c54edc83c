"""Train-step throughput and MFU of the `small` preset (sequence 512, global batch 16).

    python bench/train.py [--devices 0] [--steps 8] [--preset small] [--batch 16] [--seq 512]
                          [--rules auto] [--remat POLICY] [--compute-dtype float32] [--compare]
                          [--loop-steps 12] [--json out.json]

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

`collective_bytes_per_step`: bytes the compiled step's collectives produce per step (all-gather,
all-reduce, reduce-scatter, ...; the scanned layer loop counted per layer), next to `param_bytes`.
`--compare` also times the other compute dtype and both `dp` and `fsdp` rule tables (same global
batch): `bf16_over_fp32`, `fsdp_over_dp` (ratios of step times; > 1: the first is faster).

Final line `RESULT tokens_per_s=<float> mfu=<float> [bf16_over_fp32=<float> fsdp_over_dp=<float>]
collective_bytes_per_step=<int> [loop_log1_over_log50=<float>]`.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
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
    parser.add_argument(
        "--compare", action="store_true", help="also time bf16 vs fp32 and fsdp vs dp"
    )
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--profile", default=None, help="write a jax.profiler trace of one step here"
    )
    args = parser.parse_args()
    if args.loop_steps == 1 or args.loop_steps < 0:
        parser.error("--loop-steps must be 0 (skip) or at least 2 (the last step is not timed)")
    if args.loop_steps:
        from illada_jax.config import registry

        if args.preset not in registry.recipes():
            parser.error(
                f"--loop-steps times the recipe config:{args.preset}, which does not "
                "exist; pass --loop-steps 0 or a preset with a recipe (tiny, small)"
            )

    from illada_jax.parallel.mesh import configure_cpu_devices

    configure_cpu_devices(args.devices)  # before JAX's backends start

    import jax

    from illada_jax.obs import flops

    main_run = measure_step(args, args.compute_dtype, args.rules, profile=args.profile)
    seconds, cfg = main_run["seconds"], main_run["cfg"]
    tokens_per_s = args.batch * args.seq / seconds
    flops_per_token = flops.train_flops_per_token(cfg, args.seq)
    peak, source = flops.total_peak_flops(measured_cpu_dtype=args.compute_dtype)
    results = {
        "devices": len(jax.devices()),
        "device_kind": jax.devices()[0].device_kind,
        "preset": args.preset,
        "rules": main_run["rules"],
        "compute_dtype": args.compute_dtype,
        "step_s": seconds,
        "tokens_per_s": tokens_per_s,
        "model_flops_per_s": tokens_per_s * flops_per_token,
        "peak_flops_per_s": peak,
        "peak_source": source,
        "mfu": flops.mfu(tokens_per_s, flops_per_token, peak),
        "param_bytes": main_run["param_bytes"],
        "collective_bytes_per_step": main_run["collective_bytes"],
    }
    if args.compare:
        # Each ratio: the other variant's step time over this one's (> 1: this one is faster).
        other_dtype = "float32" if args.compute_dtype == "bfloat16" else "bfloat16"
        other = measure_step(args, other_dtype, args.rules)["seconds"]
        fp32_s, bf16_s = (other, seconds) if other_dtype == "float32" else (seconds, other)
        results["bf16_over_fp32"] = fp32_s / bf16_s
        variants = {r: measure_step(args, args.compute_dtype, r) for r in ("dp", "fsdp")}
        results["fsdp_over_dp"] = variants["dp"]["seconds"] / variants["fsdp"]["seconds"]
        results["collective_bytes_dp"] = variants["dp"]["collective_bytes"]
        results["collective_bytes_fsdp"] = variants["fsdp"]["collective_bytes"]
    if args.loop_steps:
        for log_every in (1, 50):
            results[f"loop_step_s_log{log_every}"] = loop_step_seconds(args, log_every)
    for key, value in results.items():
        print(f"{key:<20} {value:.4g}" if isinstance(value, float) else f"{key:<20} {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    line = f"RESULT tokens_per_s={tokens_per_s:.6g} mfu={results['mfu']:.4f}"
    for key in ("bf16_over_fp32", "fsdp_over_dp"):
        if key in results:
            line += f" {key}={results[key]:.3f}"
    line += f" collective_bytes_per_step={results['collective_bytes_per_step']}"
    if args.loop_steps:
        line += f" loop_log1_over_log50={results['loop_step_s_log1'] / results['loop_step_s_log50']:.3f}"
    print(line)


def measure_step(args, compute_dtype: str, rules: str, profile: str | None = None) -> dict:
    """Median seconds of the bare train step (after two warm-up steps) for one dtype and rule
    table, with its collective bytes per step (compiled program) and parameter bytes."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding

    from illada_jax.config.presets import MODEL_PRESETS
    from illada_jax.config.schema import DiffusionConfig, MeshConfig, ModelConfig, OptimConfig
    from illada_jax.model.transformer import graphdef_and_specs
    from illada_jax.parallel.mesh import check_batch, make_mesh
    from illada_jax.parallel.rules import batch_spec
    from illada_jax.parallel.rules import resolve as resolve_rules
    from illada_jax.train import state as state_lib
    from illada_jax.train.optim import make_optimizer
    from illada_jax.train.step import make_train_step, weights_compute_dtype

    cfg = dataclasses.replace(
        ModelConfig(**MODEL_PRESETS[args.preset]), max_seq_len=args.seq, compute_dtype=compute_dtype
    )
    if args.no_scan:
        cfg = dataclasses.replace(cfg, scan_layers=False)
    if args.no_fuse:
        cfg = dataclasses.replace(cfg, fused_projections=False)
    if args.remat:
        cfg = dataclasses.replace(cfg, remat_policy=args.remat)
    rules = resolve_rules(rules, jax.devices()[0].platform)
    mesh = make_mesh(MeshConfig(rules=rules))
    check_batch(mesh, args.batch)
    optimizer = make_optimizer(OptimConfig(warmup_steps=0))
    diffusion = DiffusionConfig(random_length_mode="illada_split")
    if args.loss_chunk:
        diffusion = dataclasses.replace(diffusion, loss_chunk_size=args.loss_chunk)
    shardings = state_lib.state_shardings(cfg, optimizer, mesh, rules)
    state = state_lib.create_state(cfg, optimizer, mesh, rules, seed=0)
    graphdef = graphdef_and_specs(cfg)[0]
    row_sharding = NamedSharding(mesh, batch_spec(rules, mesh, args.batch))
    with jax.set_mesh(mesh):
        step = make_train_step(graphdef, diffusion, optimizer, state_shardings=shardings,
                               mesh=mesh, rules=rules, global_batch=args.batch,
                               compute_dtype=weights_compute_dtype(cfg))  # fmt: skip
    tokens = np.random.default_rng(0).integers(5, cfg.vocab_size, (args.batch, args.seq), np.int32)
    batch = {"tokens": jax.make_array_from_process_local_data(row_sharding, tokens)}
    controls = {
        "lr_scale": jnp.float32(1.0),
        "loss_ceiling": jnp.float32(np.inf),
        "data_step": jnp.int32(0),
    }
    times = []
    with jax.set_mesh(mesh):
        step = step.lower(state, batch, jax.random.key(0), controls).compile()
        hlo = step.as_text()
        for i in range(args.steps + 2):  # two warm-up steps (first runs)
            start = time.perf_counter()
            state, metrics = step(state, batch, jax.random.key(i), controls)
            jax.block_until_ready(metrics["loss"])
            if i >= 2:
                times.append(time.perf_counter() - start)
        if profile:
            with jax.profiler.trace(profile, create_perfetto_trace=True):
                state, metrics = step(state, batch, jax.random.key(0), controls)
                jax.block_until_ready(metrics["loss"])
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state["params"]))
    return {"seconds": statistics.median(times), "cfg": cfg, "rules": rules,
            "collective_bytes": collective_bytes(hlo), "param_bytes": int(param_bytes)}  # fmt: skip


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
                "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}  # fmt: skip
_COLLECTIVE = re.compile(
    r"= (.+?) (?:all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)(?:-done)?\("
)


def collective_bytes(hlo: str) -> int:
    """Bytes that the collectives of a compiled HLO module produce in one execution: each
    collective's result size, a while loop's body counted `known_trip_count` times (the scanned
    layers), called computations included."""
    bodies: dict[str, list[str]] = {}
    name, entry = None, None
    for line in hlo.splitlines():
        header = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            name = header.group(2)
            bodies[name] = []
            entry = name if header.group(1) else entry
        elif line.startswith("}"):
            name = None
        elif name is not None:
            bodies[name].append(line)

    def result_bytes(types: str) -> int:
        total = 0
        for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", types):
            count = 1
            for dim in filter(None, dims.split(",")):
                count *= int(dim)
            total += _DTYPE_BYTES.get(dtype, 4) * count
        return total

    @functools.cache
    def total(computation: str) -> int:
        count = 0
        for line in bodies.get(computation, ()):
            if "-start(" not in line and (found := _COLLECTIVE.search(line)):
                count += result_bytes(found.group(1))
            body = re.search(r"\bwhile\(.*body=%?([\w.\-]+)", line)
            if body:
                trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
                count += (int(trips.group(1)) if trips else 1) * total(body.group(1))
            for callee in re.findall(r"\b(?:to_apply|calls)=%?([\w.\-]+)", line):
                count += total(callee)
        return count

    return total(entry) if entry else 0


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
        "set:checkpoint.every=100000", "set:train.sample_prompts=()", "set:optim.warmup_steps=1",
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
