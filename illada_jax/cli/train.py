"""`illada train`: pre-train or fine-tune from a config (docs/architecture.md#a-training-step)."""

from __future__ import annotations

import argparse
import os

from illada_jax.cli._common import add_config, output_dir


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "train",
        help="pre-train or fine-tune from a config",
        description="Train from a config. Example: illada train --config=config:tiny "
        "--config=set:train.steps=200 --workdir=runs/x",
    )
    add_config(parser)
    parser.add_argument(
        "--workdir",
        type=output_dir,
        default=None,
        help="run directory for config.json, metrics.jsonl and checkpoints "
        "(default runs/<recipe name> for --config=config:NAME, else runs/<model name>)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from illada_jax.config import flags
    from illada_jax.parallel.distributed import start_jax

    experiment = flags.experiment_from_flags(args.config)
    start_jax(experiment.mesh.cpu_devices)
    from illada_jax.train.loop import train

    workdir = args.workdir or default_workdir(args.config, experiment)
    print(
        f"training {experiment.model.name} for {experiment.train.steps} steps; "
        f"run directory {workdir}"
    )
    history = train(experiment, workdir)
    losses = [r["loss"] for r in history if "loss" in r and "event" not in r]
    if history and history[-1].get("preempted"):
        print(
            f"preempted at step {history[-1]['step']}: checkpoint saved, resume with the same "
            "command"
        )
        # 0 by default; supervisors (launch/tpu_vm.py) set another code to tell a preemption
        # (restart) from a completed run (stop).
        return int(os.environ.get("ILLADA_PREEMPTED_EXIT_CODE", "0"))
    elif losses:
        print(f"done: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    return 0


def default_workdir(directives, experiment) -> str:
    """runs/<recipe> for a run started from a named recipe (`config:tiny_sft` writes runs/tiny_sft,
    not into runs/tiny, the run it starts from), else runs/<model name>."""
    kind, _, name = (directives or [""])[0].partition(":")
    if kind == "config" and ":" not in name and "/" not in name:
        return f"runs/{name}"
    return f"runs/{experiment.model.name}"
