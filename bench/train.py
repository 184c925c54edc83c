"""Training throughput and MFU through the runner: the `small` recipe at sequence 512, batch 16.

    python bench/train.py [--preset small] [--config DIRECTIVE ...] [--batch 16] [--seq 512]
                          [--objective pretrain|ar|block_diffusion] [--block-size 32]
                          [--rules auto] [--compute-dtype float32] [--compare] [--devices 0]
                          [--steps 4] [--loop-steps 6] [--rounds 2] [--remat POLICY]
                          [--loss-chunk N] [--no-scan] [--no-fuse] [--profile DIR] [--json FILE]

Every number goes through the runner, so the bench times the program `illada train` runs: the
experiment is the recipe `config:<preset>` with `--config` directives (`set:model.d_model=256`,
`fiddler:...`) and the flags applied, and `train/builder.py`'s `build_run` makes it concrete on
`--devices` virtual CPU devices (0 = one per core, as `illada train` does: XLA:CPU runs many
non-matmul fusions on one thread, so splitting the batch over the cores uses the whole machine) or
the accelerator's devices. Two timings per (rule table, compute dtype):

- the bare step: `run.train_step`, the executable the runner calls (compiled ahead of time under
  the run's mesh), on a real batch from the run's pipeline, blocked after each call;
- the loop: `train/loop.py`'s `start` and `advance` with the runner's hooks (data pipeline, step
  dispatch, metrics fetched one step late, logging every 50 steps; no checkpoints, evaluation or
  samples), timed over `--loop-steps` steps to the last step's completion.

Both share one compiled program per variant: a gap between them is the loop's own cost. With
`--compare` the variants are dp/fsdp x float32/bfloat16 (same global batch), and the variants run
interleaved in `--rounds` rounds (A B C D A B C D ...), so a change in the machine's load touches
them alike; the figures are medians over the rounds (the JSON keeps every round). Before the
rounds each variant runs 2 bare and 3 loop steps untimed (compilation, first runs).

`--objective` trains another objective on the same model and data (docs/algorithms.md): `ar`
(causal attention, next-token loss) or `block_diffusion` with blocks of `--block-size` (the
noisy + clean canvas of 2·seq positions); bench/objectives.py compares the three in one run.

MFU = model FLOPs (docs/architecture.md#flops: 6N + 12·n_layers·d·S per token; block diffusion
counts both halves of its canvas, `obs.flops.train_step_work`) / the peak: on CPU
the same process's measured dense-matmul FLOP/s in the variant's compute dtype, on GPU/TPU the
bf16 peak table. `tokens_per_s` and `mfu` are the loop's (what `illada train` logs);
`step_tokens_per_s` and `step_mfu` the bare step's. Ratios of seconds per step (> 1: the first
named is faster): `fsdp_over_dp` (at `--compute-dtype`) and `bf16_over_fp32` (at `--rules`)
through the loop, `step_fsdp_over_dp` and `step_bf16_over_fp32` for the bare step.

`loop_step_s_log1` / `loop_step_s_log50`: the main variant's loop with `train.log_every=1`
(metrics fetched and logged every step, a host sync per step) and with 50 (each step's metrics
fetched one step late, so the host prepares the next batch while a step runs).
`collective_bytes_per_step`: bytes the compiled step's collectives produce per step (all-gather,
all-reduce, reduce-scatter, ...; the scanned layer loop counted per layer), next to `param_bytes`.
`--profile DIR` writes a jax.profiler trace of 2 bare and 2 loop steps of the main variant.

Final line `RESULT tokens_per_s=<float> mfu=<float> step_tokens_per_s=<float> step_mfu=<float>
[bf16_over_fp32=<float> fsdp_over_dp=<float> step_bf16_over_fp32=<float>
step_fsdp_over_dp=<float>] collective_bytes_per_step=<int> loop_log1_over_log50=<float>`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import re
import statistics
import tempfile
import time

WARMUP_STEPS, WARMUP_LOOP_STEPS = 2, 3
LOG_EVERY = 50  # the loop's logging cadence (and the second one of the main variant: 1)
DTYPES = ("float32", "bfloat16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=0)
    parser.add_argument("--preset", default="small", help="the recipe config:<preset>")
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="DIRECTIVE",
        help="an extra --config directive of `illada train` (set:model.d_model=256, fiddler:...)",
    )
    parser.add_argument("--objective", default=None, choices=["pretrain", "ar", "block_diffusion"],
                        help="train this objective (default: the recipe's)")  # fmt: skip
    parser.add_argument("--block-size", type=int, default=32, help="block_diffusion's blocks")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--rules", default="auto")
    parser.add_argument("--compute-dtype", default="float32", choices=DTYPES)
    parser.add_argument("--steps", type=int, default=4, help="timed bare steps per round")
    parser.add_argument("--loop-steps", type=int, default=6, help="timed loop steps per round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--remat", default=None, help="remat policy (default: the recipe's)")
    parser.add_argument("--loss-chunk", type=int, default=None, help="CE chunk (default: config)")
    parser.add_argument("--no-scan", action="store_true", help="unroll the layers (no lax.scan)")
    parser.add_argument(
        "--no-fuse", action="store_true", help="separate q/k/v and gate/up matmuls (A/B)"
    )
    parser.add_argument(
        "--compare", action="store_true", help="time dp/fsdp x float32/bfloat16, interleaved"
    )
    parser.add_argument("--json", default=None)
    parser.add_argument("--profile", default=None, help="write a jax.profiler trace here")
    args = parser.parse_args()
    for name in ("steps", "loop_steps", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    from illada_jax.config import registry

    if args.preset not in registry.recipes():
        parser.error(
            f"--preset {args.preset}: the bench runs the recipe config:{args.preset}, which does "
            f"not exist; recipes: {', '.join(sorted(registry.recipes()))}"
        )

    from illada_jax.parallel.mesh import configure_cpu_devices

    configure_cpu_devices(args.devices)  # before JAX's backends start, as `illada train` does

    import jax

    from illada_jax.parallel.rules import resolve

    rules = resolve(args.rules, jax.devices()[0].platform)
    main_key = (rules, args.compute_dtype)
    keys = [main_key]
    if args.compare:  # the main rules in both dtypes, and dp/fsdp in both
        grid = [(r, d) for r in dict.fromkeys((rules, "dp", "fsdp")) for d in DTYPES]
        keys += [key for key in grid if key != main_key]
    with tempfile.TemporaryDirectory() as workdir:
        variants = {
            key: Variant(args, *key, f"{workdir}/{i}", log1=key == main_key)
            for i, key in enumerate(keys)
        }
        try:
            for variant in variants.values():
                variant.warm_up()
            for _ in range(args.rounds):  # interleaved: A B C D, A B C D, ...
                for variant in variants.values():
                    variant.time_round(args.steps, args.loop_steps)
            if args.profile:
                variants[main_key].profile(args.profile)
        finally:
            for variant in variants.values():
                variant.close()
    results = summarise(args, variants, main_key)
    print_table(results)
    for key, value in results.items():
        if not isinstance(value, (dict, list)):  # the model config and the variants: JSON
            print(f"{key:<26} {value:.4g}" if isinstance(value, float) else f"{key:<26} {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    print(result_line(results))


def experiment_directives(args, rules: str, compute_dtype: str, log_every: int) -> list[str]:
    """The `--config` directives of the experiment a variant runs (as `illada train` takes them)."""
    # Warm-up, the rounds and a profile's 2 steps; the last step (a logging step) never comes.
    steps = WARMUP_LOOP_STEPS + args.rounds * args.loop_steps + 3
    directives = [
        f"config:{args.preset}",
        *args.config,
        f"set:train.batch_size={args.batch}",
        f"set:train.seq_len={args.seq}",
        f"set:model.compute_dtype={compute_dtype!r}",
        f"set:mesh.rules={rules!r}",
        f"set:train.steps={steps}",
        f"set:train.log_every={log_every}",
        "set:train.eval_every=0",
        "set:train.sample_prompts=()",
        "set:checkpoint.every=1000000",
        "set:optim.warmup_steps=1",
    ]
    if args.objective:
        directives.append(f"set:diffusion.objective={args.objective!r}")
    if args.objective == "block_diffusion":
        directives.append(f"set:diffusion.block_size={args.block_size}")
    if args.remat:
        directives.append(f"set:model.remat_policy={args.remat!r}")
    if args.loss_chunk:
        directives.append(f"set:diffusion.loss_chunk_size={args.loss_chunk}")
    if args.no_scan:
        directives.append("set:model.scan_layers=False")
    if args.no_fuse:
        directives.append("set:model.fused_projections=False")
    return directives


class TimedLoop:
    """The runner's loop (`train/loop.py`: `start`, `default_hooks`, `advance`) on one `Run`, in
    its own run directory."""

    def __init__(self, run, workdir: str):
        from illada_jax.ckpt.manager import RunCheckpoints
        from illada_jax.obs.writers import MetricWriter
        from illada_jax.train import preflight
        from illada_jax.train.loop import compile_steps, default_hooks, start

        pipeline = preflight.check_inputs(run)
        compiled = compile_steps(run)
        self.checkpoints = RunCheckpoints(workdir, run.experiment.checkpoint)
        self.writer = MetricWriter(workdir, enabled=False)  # no console lines in the table
        self.loop = start(run, workdir, pipeline, self.checkpoints, self.writer, compiled,
                          print_fn=lambda *_: None)  # fmt: skip
        self.hooks = default_hooks(run, workdir, self.checkpoints)
        for hook in self.hooks:
            hook.on_start(self.loop)

    def seconds_per_step(self, steps: int) -> float:
        """Wall seconds of `steps` loop steps, to the last one's completion, per step."""
        import jax

        from illada_jax.train.loop import advance

        begin = time.perf_counter()
        for _ in range(steps):
            advance(self.loop, self.hooks)
        jax.block_until_ready(self.loop.state)
        return (time.perf_counter() - begin) / steps

    def close(self) -> None:
        for hook in self.hooks:
            hook.close(self.loop)
        self.loop.progress.close()
        self.checkpoints.close()
        self.writer.close()


class Variant:
    """One (rule table, compute dtype): its `Run`, a state and a real batch for the bare step,
    and the runner's loop on the same `Run` (one compiled program for both)."""

    def __init__(self, args, rules: str, compute_dtype: str, workdir: str, *, log1: bool):
        import jax

        from illada_jax.config import flags
        from illada_jax.train.builder import build_run

        self.rules, self.compute_dtype = rules, compute_dtype
        experiment = flags.build(flags.resolve(experiment_directives(args, rules, compute_dtype,
                                                                     LOG_EVERY)))  # fmt: skip
        self.run = build_run(experiment)
        self.loops = {LOG_EVERY: TimedLoop(self.run, f"{workdir}/log{LOG_EVERY}")}  # compiles
        if log1:
            # The same Run (and compiled step) with another logging cadence: the step program
            # does not depend on it. dataclasses.replace keeps the compiled-step cache.
            train = dataclasses.replace(experiment.train, log_every=1)
            run = dataclasses.replace(
                self.run, experiment=dataclasses.replace(experiment, train=train)
            )
            self.loops[1] = TimedLoop(run, f"{workdir}/log1")
        self.state = self.run.init_state()
        local = next(iter(self.run.pipeline().iterator(0, None)))
        self.batch = self.run.global_batch(local)
        self.controls = self.run.controls(lr_scale=1.0, loss_ceiling=math.inf, data_step=0)
        self.calls = 0
        self.step_s: list[float] = []  # every timed bare step
        self.loop_s: dict[int, list[float]] = {every: [] for every in self.loops}  # per round
        hlo = self.run.train_step.as_text()
        self.collective_bytes = collective_bytes(hlo)
        self.param_bytes = int(sum(x.size * x.dtype.itemsize
                                   for x in jax.tree.leaves(self.state["params"])))  # fmt: skip

    def bare_step(self) -> float:
        """One call of the compiled step the runner calls, blocked: seconds."""
        import jax

        begin = time.perf_counter()
        self.state, metrics = self.run.train_step(
            self.state, self.batch, self.run.step_key(self.calls), self.controls
        )
        jax.block_until_ready(metrics["loss"])
        self.calls += 1
        return time.perf_counter() - begin

    def warm_up(self) -> None:
        for _ in range(WARMUP_STEPS):
            self.bare_step()
        for loop in self.loops.values():
            loop.seconds_per_step(WARMUP_LOOP_STEPS)

    def time_round(self, steps: int, loop_steps: int) -> None:
        self.step_s += [self.bare_step() for _ in range(steps)]
        for every, loop in self.loops.items():
            self.loop_s[every].append(loop.seconds_per_step(loop_steps))

    def profile(self, directory: str) -> None:
        import jax

        with jax.profiler.trace(directory, create_perfetto_trace=True):
            for _ in range(2):
                self.bare_step()
            self.loops[LOG_EVERY].seconds_per_step(2)

    def close(self) -> None:
        for loop in self.loops.values():
            loop.close()

    def step_seconds(self) -> float:
        """Median over every timed bare step."""
        return statistics.median(self.step_s)

    def loop_seconds(self, every: int = LOG_EVERY) -> float:
        """Median over the rounds of the loop's seconds per step."""
        return statistics.median(self.loop_s[every])

    def figures(self, tokens_per_step: int, flops_per_token: float) -> dict:
        """Seconds, tokens/s and MFU (against the peak in this variant's compute dtype) of the
        bare step and of the loop."""
        from illada_jax.obs import flops

        peak, source = flops.total_peak_flops(measured_cpu_dtype=self.compute_dtype)
        step_tps = tokens_per_step / self.step_seconds()
        loop_tps = tokens_per_step / self.loop_seconds()
        return {
            "rules": self.rules,
            "compute_dtype": self.compute_dtype,
            "step_s": self.step_seconds(),
            "step_s_all": self.step_s,
            "step_tokens_per_s": step_tps,
            "step_mfu": flops.mfu(step_tps, flops_per_token, peak),
            "loop_step_s": self.loop_seconds(),
            "loop_step_s_rounds": self.loop_s[LOG_EVERY],
            "tokens_per_s": loop_tps,
            "mfu": flops.mfu(loop_tps, flops_per_token, peak),
            "peak_flops_per_s": peak,
            "peak_source": source,
            "collective_bytes_per_step": self.collective_bytes,
        }


def summarise(args, variants: dict, main_key: tuple[str, str]) -> dict:
    """The JSON results: the main variant's figures, the ratios and every variant's figures."""
    import jax

    from illada_jax.obs import flops

    main = variants[main_key]
    experiment = main.run.experiment
    flops_per_token = flops.train_step_work(experiment)[1]
    rows = {key: v.figures(args.batch * args.seq, flops_per_token) for key, v in variants.items()}
    figures = rows[main_key]
    results = {
        "devices": len(jax.devices()),
        "device_kind": jax.devices()[0].device_kind,
        "preset": args.preset,
        "config": list(args.config),
        "model": dataclasses.asdict(experiment.model),
        "rules": main.rules,
        "compute_dtype": main.compute_dtype,
        "batch": args.batch,
        "seq": args.seq,
        "flops_per_token": flops_per_token,
        **{k: figures[k] for k in ("step_s", "step_tokens_per_s", "step_mfu")},
        "loop_step_s_log50": main.loop_seconds(LOG_EVERY),
        "loop_step_s_log1": main.loop_seconds(1),
        "tokens_per_s": figures["tokens_per_s"],
        "model_flops_per_s": figures["tokens_per_s"] * flops_per_token,
        "mfu": figures["mfu"],
        "peak_flops_per_s": figures["peak_flops_per_s"],
        "peak_source": figures["peak_source"],
        "param_bytes": main.param_bytes,
        "collective_bytes_per_step": main.collective_bytes,
        "loop_log1_over_log50": main.loop_seconds(1) / main.loop_seconds(LOG_EVERY),
    }
    if args.compare:
        rules, dtype = main_key

        def ratio(slow: tuple[str, str], fast: tuple[str, str], field: str) -> float:
            return rows[slow][field] / rows[fast][field]

        for prefix, field in (("", "loop_step_s"), ("step_", "step_s")):
            results[f"{prefix}fsdp_over_dp"] = ratio(("dp", dtype), ("fsdp", dtype), field)
            results[f"{prefix}bf16_over_fp32"] = ratio(
                (rules, "float32"), (rules, "bfloat16"), field
            )
        for d in DTYPES:  # the rest of the grid, through the loop
            results[f"fsdp_over_dp_{d}"] = ratio(("dp", d), ("fsdp", d), "loop_step_s")
        for r in ("dp", "fsdp"):
            results[f"bf16_over_fp32_{r}"] = ratio((r, "float32"), (r, "bfloat16"), "loop_step_s")
        results["collective_bytes_dp"] = variants[("dp", dtype)].collective_bytes
        results["collective_bytes_fsdp"] = variants[("fsdp", dtype)].collective_bytes
    results["variants"] = list(rows.values())
    return results


def print_table(results: dict) -> None:
    print(f"{'variant':<18} {'step s':>8} {'step tok/s':>11} {'step MFU':>9} {'loop s':>8} "
          f"{'loop tok/s':>11} {'loop MFU':>9} {'loop s (rounds)':>22} {'collective B':>13}")  # fmt: skip
    for f in results["variants"]:
        name = f"{f['rules']}/{f['compute_dtype']}"
        rounds = " ".join(f"{s:.3f}" for s in f["loop_step_s_rounds"])
        print(f"{name:<18} {f['step_s']:>8.3f} {f['step_tokens_per_s']:>11.1f} "
              f"{f['step_mfu']:>9.3f} {f['loop_step_s']:>8.3f} {f['tokens_per_s']:>11.1f} "
              f"{f['mfu']:>9.3f} {rounds:>22} {f['collective_bytes_per_step']:>13}")  # fmt: skip


def result_line(results: dict) -> str:
    line = (
        f"RESULT tokens_per_s={results['tokens_per_s']:.6g} mfu={results['mfu']:.4f} "
        f"step_tokens_per_s={results['step_tokens_per_s']:.6g} step_mfu={results['step_mfu']:.4f}"
    )
    for key in ("bf16_over_fp32", "fsdp_over_dp", "step_bf16_over_fp32", "step_fsdp_over_dp"):
        if key in results:
            line += f" {key}={results[key]:.3f}"
    line += f" collective_bytes_per_step={results['collective_bytes_per_step']}"
    return line + f" loop_log1_over_log50={results['loop_log1_over_log50']:.3f}"


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


if __name__ == "__main__":
    from illada_jax.cli._quiet import quiet_startup

    quiet_startup()  # before JAX starts a backend: no libtpu / absl start-up lines on CPU hosts
    main()
