"""`illada params`: parameter counts of a config, nothing allocated."""

from __future__ import annotations

import argparse

from illada_jax.cli._common import add_config


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "params",
        help="parameter counts (total, non-embedding) of a config",
        description="Count parameters without allocating them. Example: illada params "
        "--config=config:illada_8b",
    )
    add_config(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from illada_jax.config import flags
    from illada_jax.model.transformer import count_params

    experiment = flags.experiment_from_flags(args.config)
    total, non_embedding = count_params(experiment.model)
    print(f"total_params={total}")
    print(f"non_embedding_params={non_embedding}")
    return 0
