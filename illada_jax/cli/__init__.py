"""The `illada` command line: one module per subcommand, each a thin wrapper over the library.

Every subcommand module defines `add_parser(subparsers)`, which registers its arguments and sets
`func` (the function that runs it, returning an exit code). All argparse code lives in this
package; library modules take plain arguments.

Errors (docs/troubleshooting.md): arguments are checked when they are parsed (argparse's usage
line and exit code 2); anything derived from `illada_jax.errors.IlladaError` (a config, a path, a
data file, a checkpoint, an option) and any operating-system error on a file the user named is
printed as one line and exits with code 2; any other exception is a bug in illada-jax, printed as
one line saying so with exit code 1. A traceback is printed only with `--debug` or
`ILLADA_DEBUG=1`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from illada_jax.errors import IlladaError

# `illada --help` lists them in this order; each is the module illada_jax.cli.<name>.
SUBCOMMANDS = ("train", "prepare", "tokenizer", "params", "convert", "compile", "sweep",
               "generate", "chat", "eval")  # fmt: skip
DEBUG_HELP = "show the Python traceback of an error (also ILLADA_DEBUG=1)"
EXIT_USER_ERROR = 2
EXIT_BUG = 1
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="illada", description="Masked-diffusion language models (LLaDA / iLLaDA) in JAX."
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"illada_jax.cli.{name}").add_parser(sub)
    for command in sub.choices.values():
        _add_debug_flag(command)
    return parser


def version_line() -> str:
    """`illada --version`: the installed package's version, and JAX's (what a bug report needs)."""
    from importlib import metadata

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return f"illada-jax {installed('illada-jax')} (jax {installed('jax')}, Python {sys.version.split()[0]})"


def _add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """`--debug` after the subcommand too (and after a nested one: `tokenizer train`);
    SUPPRESS keeps a flag given before the subcommand from being reset by the subparser."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for nested in action.choices.values():
                _add_debug_flag(nested)


def debug_requested(args: argparse.Namespace | None = None) -> bool:
    flag = bool(getattr(args, "debug", False))
    return flag or os.environ.get("ILLADA_DEBUG", "").strip() not in ("", "0", "false", "no")


def main(argv: list[str] | None = None) -> int:
    from illada_jax.cli._quiet import quiet_startup

    argv = sys.argv[1:] if argv is None else list(argv)
    # Before JAX, TensorFlow or Beam start (some subcommands import them to build their parser).
    quiet_startup(debug=debug_requested() or "--debug" in argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug_requested(args):
            raise
        print(f"illada {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        if debug_requested(args):
            raise
        code, message = describe_error(err)
        print(f"illada {args.command}: {message}", file=sys.stderr)
        return code


def describe_error(err: BaseException) -> tuple[int, str]:
    """(exit code, the one line printed) for an exception that ended a command."""
    from illada_jax.config.schema import ConfigError

    if isinstance(err, ConfigError):
        return EXIT_USER_ERROR, f"config error: {err}"
    if isinstance(err, IlladaError):
        return EXIT_USER_ERROR, f"error: {err}"
    if isinstance(err, OSError) and err.filename is not None:
        # A path the user gave that the checks did not foresee (permissions, a full disk, ...).
        reason = err.strerror or type(err).__name__
        return EXIT_USER_ERROR, f"error: {err.filename}: {reason}"
    return EXIT_BUG, (
        f"internal error: {type(err).__name__}: {err}. This is a bug in illada-jax, not in "
        "your input; rerun with --debug (or ILLADA_DEBUG=1) for the traceback and report it"
    )
