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


def number_in(low: float, high: float, example: str):
    """An argparse type: a number in (low, high], e.g. `example`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = low
        if not low < value <= high:
            raise argparse.ArgumentTypeError(
                f"{text!r} must be a number in ({low:g}, {high:g}], e.g. {example}"
            )
        return value

    return parse
