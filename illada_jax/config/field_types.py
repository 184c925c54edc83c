"""Type checks for the config schema, generated from its dataclasses' type hints
(`illada_jax.config.schema` calls `type_problem` first in every section's validation).

Each kind of field (int, float, bool, str, an enum: a str with fixed choices, a path, a tuple of
those, X | None) has a predicate and the words an error uses ("must be an integer (such as 8)");
a field of a new kind fails loudly here until it gets one.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any


def describe(value: Any) -> str:
    """How a value reads in an error: its type in words, then the value."""
    kinds = {bool: "the boolean", int: "the integer", float: "the number", str: "the string"}
    for kind, words in kinds.items():
        if type(value) is kind:
            return f"{words} {value!r}"
    return f"a {type(value).__name__} ({value!r})"


def expectation(field: str, hint: Any, choices: dict, paths: frozenset) -> tuple[str, Any]:
    """(what a field of type `hint` must be, in words; a predicate accepting such values)."""
    if hint is bool:
        return "True or False", lambda v: isinstance(v, bool)
    if hint is int:
        return "an integer (such as 8)", lambda v: isinstance(v, int) and not isinstance(v, bool)
    if hint is float:
        return (
            "a number (such as 0.001)",
            lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        )
    if hint is str:
        if field in choices:
            allowed = ", ".join(repr(c) for c in choices[field])
            return f"one of {allowed}", lambda v: isinstance(v, str)
        if field in paths:
            return "a path or URL as a string (such as 'gs://bucket/dir')", lambda v: isinstance(
                v, str
            )
        return "a string", lambda v: isinstance(v, str)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        words, item_ok = expectation(field, args[0], choices, paths)
        words = words.split(" (")[0]
        return f"a tuple whose items are each {words} (such as ({_EXAMPLES[args[0]]},))", (
            lambda v: isinstance(v, tuple | list) and all(item_ok(x) for x in v)
        )
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        words, inner_ok = expectation(field, inner, choices, paths)
        return f"{words} or None", lambda v: v is None or inner_ok(v)
    raise TypeError(f"no type check for {field}: {hint}")  # a new kind of field: add it here


_EXAMPLES = {str: "'a', 'b'", int: "1, 2", float: "0.5, 1.0"}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def type_problem(section: Any, choices: dict, paths: frozenset) -> str | None:
    """What is wrong with the first field of a section (a dataclass) whose value does not have
    its declared type: "field=value is invalid: must be ...; got ...", or None."""
    hints = _hints(type(section))
    for field in dataclasses.fields(section):
        words, ok = expectation(field.name, hints[field.name], choices, paths)
        value = getattr(section, field.name)
        if not ok(value):
            return f"{field.name}={value!r} is invalid: must be {words}; got {describe(value)}"
    return None
