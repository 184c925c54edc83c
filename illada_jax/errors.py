"""The base of every error a user can cause (a config, a path, a data file, a checkpoint, an option).

Each package raises its own subclass (`ConfigError`, `DataError`, `CheckpointError`, ...), whose
message names what is wrong and what to do about it. The command line catches `IlladaError` once
(`illada_jax/cli/__init__.py`) and prints the message with exit code 2; anything else is a bug,
printed as one line saying so with exit code 1 (the traceback with `--debug` / `ILLADA_DEBUG=1`).

Subclasses also derive from the built-in exception that describes them (`ValueError`,
`FileNotFoundError`, `RuntimeError`), so callers that catch those keep working.
"""

from __future__ import annotations


class IlladaError(Exception):
    """A mistake in what the user gave us; the message says what is wrong and how to fix it."""


class MissingInputError(IlladaError, FileNotFoundError):
    """A file, directory or package the user's input needs does not exist."""
