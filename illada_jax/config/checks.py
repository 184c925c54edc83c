"""The checks every config section runs in `__post_init__`: each failure is a `ConfigError`
naming the field, the value and what is allowed."""

from __future__ import annotations

from typing import Any

from illada_jax.errors import IlladaError


class ConfigError(IlladaError, ValueError):
    """A configuration value is invalid. The message names the field and the allowed values."""


def fail(field: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{field}={value!r} is invalid: {allowed}")


def check_choice(field: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        fail(field, value, f"allowed values are {', '.join(choices)}")


def check_int(field: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(field, value, f"must be an integer >= {minimum}")
    if value < minimum:
        fail(field, value, f"must be an integer >= {minimum}")


def check_prob(field: str, value: Any, *, open_low: bool = False, open_high: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        fail(field, value, "must be a number in [0, 1]")
    low_ok = value > 0 if open_low else value >= 0
    high_ok = value < 1 if open_high else value <= 1
    if not (low_ok and high_ok):
        lo, hi = ("(" if open_low else "["), (")" if open_high else "]")
        fail(field, value, f"must lie in {lo}0, 1{hi}")
