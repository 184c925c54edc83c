"""`illada` command line: one subcommand per job, each a thin wrapper over the library."""

from __future__ import annotations

import argparse
import sys

from illada_jax.config.schema import ConfigError

CONFIG_HELP = (
    "configuration directive, repeatable, applied in order: config:NAME, "
    "fiddler:NAME, set:path.to.field=VALUE, file:PATH (default: config:tiny)"
)


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", action="append", default=[], metavar="DIRECTIVE", help=CONFIG_HELP
    )


def cmd_train(args: argparse.Namespace) -> int:
    from illada_jax.config import flags
    from illada_jax.train.loop import train

    experiment = flags.experiment_from_flags(args.config)
    workdir = args.workdir or f"runs/{experiment.model.name}"
    print(
        f"training {experiment.model.name} for {experiment.train.steps} steps; "
        f"run directory {workdir}"
    )
    history = train(experiment, workdir)
    first, last = history[0]["loss"], history[-1]["loss"]
    print(f"done: loss {first:.4f} -> {last:.4f}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from illada_jax.config import flags
    from illada_jax.model.transformer import count_params

    experiment = flags.experiment_from_flags(args.config)
    total, non_embedding = count_params(experiment.model)
    print(f"total_params={total}")
    print(f"non_embedding_params={non_embedding}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="illada", description="Masked-diffusion language models (LLaDA / iLLaDA) in JAX."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="pre-train or fine-tune from a config",
        description="Train from a config. Example: illada train --config=config:tiny "
        "--config=set:train.steps=200 --workdir=runs/x",
    )
    _add_config(train)
    train.add_argument(
        "--workdir",
        default=None,
        help="run directory for config.json and metrics.jsonl (default runs/<model name>)",
    )
    train.set_defaults(func=cmd_train)

    params = sub.add_parser(
        "params",
        help="parameter counts (total, non-embedding) of a config",
        description="Count parameters without allocating them. Example: illada params "
        "--config=config:illada_8b",
    )
    _add_config(params)
    params.set_defaults(func=cmd_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"illada {args.command}: config error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
