"""AOT compile time and per-chip memory of a pod recipe (default: `illada_8b` on the v5p-256 slice
its docstring names), on this (CPU) host.

    python bench/compile.py [--config config:illada_8b ...] [--topology v5p-256]
                            [--global-batch N] [--seq-len N] [--no-probes] [--json out.json]

Compiles the train step exactly as `illada train` builds it (`illada_jax.tools.aot`: the run
builder on the slice's abstract devices, the recipe's own TPU settings) with libtpu: no TPU and
no allocation. Prints the `illada compile` report and a final line
`RESULT aot_compile_s=<float> fits=<bool> bytes_per_chip=<int>`, where `aot_compile_s` is the
lower + compile time of the train step (not the small FLOPs probes, printed separately). Needs
libtpu (`pip install -e '.[tpu]'`) and a checkout (the recipes live in `configs/`).
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
    return parser.parse_args(argv)


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
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**vars(report), "wall_s": wall}, f, indent=1)
    print(
        f"RESULT aot_compile_s={report.compile_s:.2f} fits={str(report.fits).lower()} "
        f"bytes_per_chip={report.total_bytes}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
