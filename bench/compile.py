"""AOT compile time and per-chip memory of a pod recipe (default: `illada_8b` on the v5p-256 slice
its docstring names), on this (CPU) host; and a restarted job's compile time with a cold and a
warm persistent compilation cache.

    python bench/compile.py [--config config:illada_8b ...] [--topology v5p-256]
                            [--global-batch N] [--seq-len N] [--no-probes] [--json out.json]
                            [--restart-config config:small ...] [--no-restart]

Compiles the train step exactly as `illada train` builds it (`illada_jax.tools.aot`: the run
builder on the slice's abstract devices, the recipe's own TPU settings) with libtpu: no TPU and
no allocation. Prints the `illada compile` report and a final line
`RESULT aot_compile_s=<float> fits=<bool> bytes_per_chip=<int>`, where `aot_compile_s` is the
lower + compile time of the train step (not the small FLOPs probes, printed separately). Needs
libtpu (`pip install -e '.[tpu]'`) and a checkout (the recipes live in `configs/`).

Restart (`--restart-config`, default `config:small`; `--no-restart` skips it): a preempted job
restarts as a new process that compiles its steps before its first one. Three fresh processes
each do what `illada train` does before its first step on this host (`build_run`, then
`train.loop.compile_steps`: the train and eval steps) with the run's persistent compilation cache
(`train.compilation_cache`, train/compile_cache.py): empty (`restart_compile_s_cold`), filled by
the previous process (`restart_compile_s_warm`), and off (`restart_compile_s_off`); each is the
compile time of both steps, with the process's wall time up to there (`restart_wall_s_*`:
imports, run building and compiles). TPU programs compiled here for an abstract slice are written
to the cache but not loaded back by JAX (no TPU runtime to load them on), so the restart is
measured on this host's devices; on a pod the same cache in the gs:// run directory serves the
workers. The final line gains `restart_compile_s_cold=... restart_compile_s_warm=...`.
"""

from __future__ import annotations

import argparse
import json
import time

from illada_jax.tools import aot_report


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=None, metavar="DIRECTIVE")
    parser.add_argument("--topology", default="v5p-256")
    parser.add_argument("--global-batch", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--mfu", type=float, default=aot_report.DEFAULT_MFU)
    parser.add_argument("--tokens", type=float, default=aot_report.DEFAULT_TOKENS)
    parser.add_argument("--no-probes", action="store_true", help="skip the FLOPs probes")
    parser.add_argument("--json", default=None, help="also write the report to this file")
    parser.add_argument(
        "--restart-config",
        action="append",
        default=None,
        metavar="DIRECTIVE",
        help="the run whose restart is timed on this host (default config:small)",
    )
    parser.add_argument("--no-restart", action="store_true", help="skip the restart timing")
    return parser.parse_args(argv)


RESTART = """
import json, sys, time
start = time.perf_counter()
from illada_jax.config import flags
from illada_jax.parallel.distributed import start_jax
experiment = flags.experiment_from_flags(json.loads(sys.argv[1]))
start_jax(experiment.mesh.cpu_devices)
from illada_jax.train import compile_cache
from illada_jax.train.builder import build_run
from illada_jax.train.loop import compile_steps
compile_cache.configure(sys.argv[2], sys.argv[3])
record = compile_steps(build_run(experiment))
compiled = record["train_compile_s"] + record.get("eval_compile_s", 0.0)
print("RESTART " + json.dumps({**record, "compile_s": compiled, "wall_s": time.perf_counter() - start}))
"""


def restart_times(directives: list[str]) -> dict[str, float]:
    """Compile seconds (and process wall seconds) of three fresh processes compiling the run's
    steps: with an empty cache, with the cache the first filled, without a cache."""
    import os
    import subprocess
    import sys
    import tempfile

    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.setdefault("JAX_PLATFORMS", "cpu")
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="illada-restart-") as workdir:
        for name, setting in (("cold", "auto"), ("warm", "auto"), ("off", "off")):
            done = subprocess.run(
                [sys.executable, "-c", RESTART, json.dumps(directives), setting, workdir],
                capture_output=True, text=True, env=env, timeout=1800,
            )  # fmt: skip
            if done.returncode:
                raise SystemExit(f"restart process ({name}) failed:\n{done.stderr[-3000:]}")
            line = next(x for x in done.stdout.splitlines() if x.startswith("RESTART "))
            record = json.loads(line[len("RESTART ") :])
            out[f"restart_compile_s_{name}"] = record["compile_s"]
            out[f"restart_wall_s_{name}"] = record["wall_s"]
            out[f"restart_program_{name}"] = record["train_step_program"]
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    from illada_jax.parallel.topology import quiet_libtpu_on_cpu_host

    quiet_libtpu_on_cpu_host()  # before JAX's backends start
    from illada_jax.config import flags
    from illada_jax.tools import aot

    directives = args.config or ["config:illada_8b"]
    start = time.perf_counter()
    experiment = aot.with_shape(
        flags.experiment_from_flags(directives), args.global_batch, args.seq_len
    )
    report = aot.compile_report(
        aot.Target(experiment, args.topology),
        mfu=args.mfu,
        tokens=args.tokens,
        probes=not args.no_probes,
    )
    wall = time.perf_counter() - start
    print(aot_report.format_report(report))
    print(aot_report.result_line(report))
    print(f"wall time {wall:.1f} s (FLOPs probes included)")
    restart = {} if args.no_restart else restart_times(args.restart_config or ["config:small"])
    if restart:
        config = " ".join(args.restart_config or ["config:small"])
        print(f"restart on this host ({config}: train + eval step compile, process wall)")
        for name in ("cold", "warm", "off"):
            print(f"  cache {name:<5} {restart[f'restart_compile_s_{name}']:7.2f} s compile, "
                  f"{restart[f'restart_wall_s_{name}']:7.2f} s wall")  # fmt: skip
        assert restart["restart_program_cold"] == restart["restart_program_warm"]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**vars(report), "wall_s": wall, **restart}, f, indent=1)
    line = (
        f"RESULT aot_compile_s={report.compile_s:.2f} fits={str(report.fits).lower()} "
        f"bytes_per_chip={report.total_bytes}"
    )
    for key in ("restart_compile_s_cold", "restart_compile_s_warm", "restart_compile_s_off"):
        if key in restart:
            line += f" {key}={restart[key]:.2f}"
    print(line)
    return 0


if __name__ == "__main__":
    from illada_jax.cli._quiet import quiet_startup

    quiet_startup()  # before JAX starts a backend: no libtpu / absl start-up lines on CPU hosts
    raise SystemExit(main())
