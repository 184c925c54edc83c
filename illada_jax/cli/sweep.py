"""`illada sweep`: expand an experiment's sweep, run it here or print one command per run
(`illada_jax.train.sweep`)."""

from __future__ import annotations

import argparse

from illada_jax import storage
from illada_jax.cli._common import output_dir

HELP = "expand and run an experiment's sweep (or print one command per run)"
DESCRIPTION = (
    "Run the override sets of an experiment's sweep one after another and write summary.md, "
    "summary.json and loss_curves.png, or --print one command per run. Example: illada sweep "
    "--config=config:tiny_lr --config=set:train.steps=100 --workdir=runs/lr"
)


def add_parser(sub) -> None:
    parser = sub.add_parser("sweep", help=HELP, description=DESCRIPTION)
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="DIRECTIVE",
        help="first config:SWEEP (a named sweep, config:module:fn or config:file.py:fn whose "
        "module defines fn_sweep() or sweep()), then directives shared by every run",
    )
    parser.add_argument(
        "--workdir",
        type=output_dir,
        default=None,
        help="sweep directory; run R trains in WORKDIR/R (default runs/sweeps/<sweep>)",
    )
    parser.add_argument(
        "--print",
        action="store_true",
        dest="print_only",
        help="print one command per run instead of training",
    )
    parser.add_argument(
        "--launcher",
        default=None,
        metavar="PREFIX",
        help="with --print: put PREFIX -- before each command; {run} in PREFIX becomes the run "
        "name (e.g. python launch/xpk.py ... --workload lr-{run})",
    )
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="only (re)write the summary from the runs' metrics.jsonl",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print, run or summarise; 0 when every run succeeded."""
    from illada_jax.train import sweep

    if not args.config or not args.config[0].startswith("config:"):
        raise sweep.SweepError(
            "give --config=config:SWEEP first, e.g. "
            f"--config=config:tiny_lr (named sweeps: {', '.join(sweep.named_sweeps())})"
        )
    if args.launcher and not args.print_only:
        raise sweep.SweepError("--launcher only applies with --print")
    name = sweep.sweep_name(args.config[0])
    runs = sweep.expand_runs(args.config[0], args.config[1:])
    workdir_text = args.workdir or f"runs/sweeps/{name}"
    if args.print_only:
        sweep.print_commands(runs, workdir_text, args.launcher)
        return 0
    workdir = storage.path(workdir_text)
    statuses = None if args.summary_only else sweep.run_local(runs, workdir)
    rows = sweep.write_summary(runs, workdir, name, statuses)
    print(sweep.markdown_table(rows), end="")
    print(f"summary: {workdir_text.rstrip('/')}/summary.md")
    return 0 if all(row["status"] == "ok" for row in rows) else 1
