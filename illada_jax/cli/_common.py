"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse

CONFIG_HELP = (
    "configuration directive, repeatable, applied in order: config:NAME, "
    "fiddler:NAME, set:path.to.field=VALUE, file:PATH (default: config:tiny)"
)


def add_config(parser: argparse.ArgumentParser, help: str = CONFIG_HELP) -> None:
    parser.add_argument("--config", action="append", default=[], metavar="DIRECTIVE", help=help)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value
