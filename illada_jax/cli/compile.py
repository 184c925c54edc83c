"""`illada compile`: AOT-compile an experiment's train step for a TPU topology and report memory
per chip, FLOPs and estimates (`illada_jax.tools.aot`). Exit code 0 when it fits, 1 when not."""

from __future__ import annotations

import argparse
import json

from illada_jax.cli._common import add_config, number_in, output_file, positive_int


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers, e.g. 1,2,4,8")
    return values


def _remat_list(text: str) -> tuple[str, ...]:
    from illada_jax.config.schema import REMAT_POLICIES

    values = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in values if v not in REMAT_POLICIES]
    if not values or bad:
        raise argparse.ArgumentTypeError(
            f"{text!r}: remat policies are {', '.join(REMAT_POLICIES)}"
        )
    return values


def add_parser(sub) -> None:
    from illada_jax.tools import aot, aot_report

    parser = sub.add_parser(
        "compile",
        help="AOT-compile a config for a TPU topology; memory and FLOPs report",
        description="Compile the train step of an experiment, exactly as `illada train` runs it, "
        "for a TPU slice, without a TPU. Example: illada compile --config=config:illada_8b "
        "--topology=v5p-256",
    )
    add_config(parser)
    parser.add_argument(
        "--topology",
        required=True,
        help="TPU slice: v4-8, v5e-16, v5p-256, v6e-256, 2xv5p-256 or v5p:4x4x8 "
        "(v4/v5p count TensorCores, v5e/v6e chips, as in Google's accelerator types); or cpu: "
        "this host's own devices, as `illada train` runs here",
    )
    parser.add_argument("--num-slices", type=positive_int, default=None,
                        help="slices joined over DCN")  # fmt: skip
    parser.add_argument("--global-batch", type=positive_int, default=None,
                        help="shorthand for --config=set:train.batch_size=N")  # fmt: skip
    parser.add_argument("--seq-len", type=positive_int, default=None,
                        help="shorthand for --config=set:train.seq_len=N")  # fmt: skip
    parser.add_argument("--mfu", type=number_in(0, 1, "0.4"), default=aot_report.DEFAULT_MFU,
                        help="model FLOPs utilisation for the estimates")  # fmt: skip
    parser.add_argument("--tokens", type=number_in(0, float("inf"), "12e12"),
                        default=aot_report.DEFAULT_TOKENS,
                        help="token budget for the days estimate")  # fmt: skip
    parser.add_argument("--search", action="store_true",
                        help="compile per-chip batch x remat candidates")  # fmt: skip
    parser.add_argument("--search-batches", type=_int_list, default=aot.SEARCH_BATCHES,
                        metavar="N,N,...",
                        help="with --search: per-chip batch sizes to try, comma-separated "
                        f"(default {','.join(map(str, aot.SEARCH_BATCHES))})")  # fmt: skip
    parser.add_argument("--search-remat", type=_remat_list, default=aot.SEARCH_REMATS,
                        metavar="POLICY,...",
                        help="with --search: model.remat_policy values to try, comma-separated "
                        f"(default {','.join(aot.SEARCH_REMATS)})")  # fmt: skip
    parser.add_argument("--no-probes", action="store_true",
                        help="skip the small FLOPs probe compiles (compiled FLOPs then count "
                        "loops once)")  # fmt: skip
    parser.add_argument("--dump-hlo", type=output_file, default=None, metavar="FILE",
                        help="write the lowered train step (StableHLO text) to FILE")  # fmt: skip
    parser.add_argument(
        "--json", type=output_file, default=None, help="also write the report(s) to this file"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from illada_jax.parallel.topology import quiet_libtpu_on_cpu_host

    quiet_libtpu_on_cpu_host()  # before JAX's backends start
    from illada_jax.config import flags
    from illada_jax.tools import aot, aot_report

    experiment = aot.with_shape(flags.experiment_from_flags(args.config),
                                args.global_batch, args.seq_len)  # fmt: skip
    target = aot.Target(experiment, args.topology, args.num_slices)
    if target.is_host:  # this host's devices, set up as `illada train` sets them up
        from illada_jax.parallel.distributed import start_jax

        start_jax(experiment.mesh.cpu_devices)
    else:  # before libtpu loads: it reads its flags once
        from illada_jax.parallel import tpu_runtime

        target.slice()  # a bad topology name is reported as such, before the flags
        tpu_runtime.apply_to_environment(args.topology, args.num_slices)
    estimates = {"mfu": args.mfu, "tokens": args.tokens, "probes": not args.no_probes}

    def dump(lowered) -> None:  # --dump-hlo: the lowering that is compiled and reported
        with open(args.dump_hlo, "w") as f:
            f.write(lowered.as_text())

    on_lowered = dump if args.dump_hlo else None
    reports = []
    if args.search:
        if on_lowered:  # the target as given, not a searched candidate
            on_lowered(aot.lower(target)[0])
        reports = aot.run_search(target, args.search_batches, args.search_remat, **estimates)
        print(aot_report.format_search(reports))
        report = aot.best_of(reports) or reports[-1]
        print(f"fastest that fits: {'none' if not report.fits else report.remat}")
    else:
        report = aot.compile_report(target, **estimates, on_lowered=on_lowered)
    print(aot_report.format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"report": vars(report), "search": [vars(r) for r in reports]}, f, indent=1)
    print(aot_report.result_line(report))
    return 0 if report.fits else 1
