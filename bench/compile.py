"""AOT compile time and per-chip memory of `illada_8b` on a v5p-256 slice, on this (CPU) host.

    python bench/compile.py [--topology v5p-256] [--global-batch 640] [--seq-len 8192]
                            [--config config:illada_8b ...] [--no-probes] [--json out.json]

Compiles the real train step (`illada_jax.tools.aot`: abstract state and batch, splash attention,
bf16 compute, FSDP over all chips, remat falling back to `full` when the config's policy does not
fit) for a libtpu topology description: no TPU and no allocation. Prints the `illada compile`
report and a final line
`RESULT aot_compile_s=<float> fits=<bool> bytes_per_chip=<int>`, where `aot_compile_s` is the
lower + compile time of the reported program (not the out-of-memory attempt before a remat
fallback, nor the small FLOPs probes; both are printed). Needs libtpu (`pip install -e '.[tpu]'`).
"""

from __future__ import annotations

import argparse
import json
import time

from illada_jax.tools import aot


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=None, metavar="DIRECTIVE")
    parser.add_argument("--topology", default="v5p-256")
    parser.add_argument("--global-batch", type=int, default=640)
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--mfu", type=float, default=aot.DEFAULT_MFU)
    parser.add_argument("--tokens", type=float, default=aot.DEFAULT_TOKENS)
    parser.add_argument("--no-probes", action="store_true", help="skip the FLOPs probes")
    parser.add_argument("--json", default=None, help="also write the report to this file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    aot.quiet_libtpu_on_cpu_host()  # before JAX's backends start
    from illada_jax.config import flags

    directives = args.config or ["config:illada_8b"]
    start = time.perf_counter()
    target = aot.make_target(
        flags.experiment_from_flags(directives),
        args.topology,
        directives=directives,
        global_batch=args.global_batch,
        seq_len=args.seq_len,
    )
    report = aot.compile_with_fallback(
        target, directives, mfu=args.mfu, tokens=args.tokens, probes=not args.no_probes
    )
    wall = time.perf_counter() - start
    print(aot.format_report(report))
    print(aot.result_line(report))
    print(f"wall time {wall:.1f} s (everything: fallback attempts and FLOPs probes included)")
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
