"""Arguments shared by several subcommands, and the argparse types that check a value when it is
parsed: a wrong value stops the command before anything starts, with argparse's usage line, a
message naming the argument, and exit code 2.

Path types check local paths only; an object-storage path (`gs://...`) is checked when it is
opened (a parse-time network round trip per argument would slow every command).
"""

from __future__ import annotations

import argparse
import os

from illada_jax import storage

CONFIG_HELP = (
    "configuration directive, repeatable, applied in order: config:NAME, "
    "fiddler:NAME, set:path.to.field=VALUE, file:PATH (default: config:tiny)"
)


def add_config(parser: argparse.ArgumentParser, help: str = CONFIG_HELP) -> None:
    parser.add_argument("--config", action="append", default=[], metavar="DIRECTIVE", help=help)


def _integer(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def positive_int(text: str) -> int:
    return _integer(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _integer(text, 0, "an integer >= 0")


def int_at_least(minimum: int):
    """An argparse type: an integer >= `minimum`."""

    def parse(text: str) -> int:
        return _integer(text, minimum, f"an integer >= {minimum}")

    return parse


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


def non_negative_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number >= 0")
    return value


def existing_path(kind: str = "any"):
    """An argparse type: a local path that exists (`kind`: "file", "dir" or "any"); object
    storage paths pass unchecked."""

    def parse(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError("an empty path")
        if not storage.is_local(text):
            return text
        local = os.path.expanduser(text)
        if not os.path.exists(local):
            raise argparse.ArgumentTypeError(f"{text} does not exist")
        if kind == "file" and not os.path.isfile(local):
            raise argparse.ArgumentTypeError(f"{text} is a directory; expected a file")
        if kind == "dir" and not os.path.isdir(local):
            raise argparse.ArgumentTypeError(f"{text} is a file; expected a directory")
        return text

    return parse


def tokenizer_path(text: str) -> str:
    """An argparse type: a shipped tokenizer (`shipped:NAME`), or a tokenizer file or directory
    that exists."""
    from illada_jax.data.tokenizers.tokenizer import SHIPPED_PREFIX

    return text if text.startswith(SHIPPED_PREFIX) else existing_path("any")(text)


def dataset_spec(text: str) -> str:
    """An argparse type: a dataset as `data.datasets` names one — the embedded corpus
    (`embedded[:SPLIT]`), an on-the-fly spec (`raw:FORMAT:PATHS`), or a prepared directory that
    exists."""
    if text == "embedded" or text.startswith(("embedded:", "raw:")):
        return text
    return existing_path("dir")(text)


def output_dir(text: str) -> str:
    """An argparse type: a directory to write into (it may not exist yet, but must not be a file,
    and its nearest existing ancestor must be a directory)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    if not storage.is_local(text):
        return text
    local = os.path.abspath(os.path.expanduser(text))
    if os.path.exists(local) and not os.path.isdir(local):
        raise argparse.ArgumentTypeError(f"{text} is a file; expected a directory (new or not)")
    parent = local
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"{text}: {parent} is a file, not a directory")
    return text


def output_file(text: str) -> str:
    """An argparse type: a file to write (not a directory; its directory must exist)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    if not storage.is_local(text):
        return text
    local = os.path.abspath(os.path.expanduser(text))
    if os.path.isdir(local):
        raise argparse.ArgumentTypeError(f"{text} is a directory; expected a file name")
    if not os.path.isdir(os.path.dirname(local)):
        raise argparse.ArgumentTypeError(
            f"{text}: directory {os.path.dirname(local)} does not exist"
        )
    return text
