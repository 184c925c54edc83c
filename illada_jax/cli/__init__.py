"""The `illada` command line: one module per subcommand, each a thin wrapper over the library.

Every subcommand module defines `add_parser(subparsers)`, which registers its arguments and sets
`func` (the function that runs it, returning an exit code). All argparse code lives in this
package; library modules take plain arguments.

Errors: anything derived from `illada_jax.errors.IlladaError` (a user's mistake: a config, a path,
a data file, a checkpoint, an option) is printed as one line and exits with code 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from illada_jax.errors import IlladaError

# `illada --help` lists them in this order; each is the module illada_jax.cli.<name>.
SUBCOMMANDS = ("train", "prepare", "tokenizer", "params", "convert", "compile", "sweep",
               "generate", "chat", "eval")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="illada", description="Masked-diffusion language models (LLaDA / iLLaDA) in JAX."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"illada_jax.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except IlladaError as err:
        print(f"illada {args.command}: {_kind(err)}: {err}", file=sys.stderr)
        return 2


def _kind(err: IlladaError) -> str:
    from illada_jax.config.schema import ConfigError

    return "config error" if isinstance(err, ConfigError) else "error"
