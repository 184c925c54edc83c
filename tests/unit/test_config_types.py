"""A `set:` (or `file:`) value of the wrong type is refused naming the field, the expected type
and the value, for every field of the schema: the cases are generated from the dataclasses'
type hints, so a new field is covered the day it is added."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing

import pytest

from illada_jax.config import flags, schema
from illada_jax.config.schema import ConfigError, Experiment

SECTIONS = {
    f.name: typing.get_type_hints(Experiment)[f.name] for f in dataclasses.fields(Experiment)
}


def _kind(field: str, hint) -> str:
    if field in schema.CHOICE_FIELDS:
        return "enum"
    if field in schema.PATH_FIELDS:
        return "path"
    origin = typing.get_origin(hint)
    if origin is tuple:
        return "tuple"
    if origin is not None:  # X | None
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _kind(field, inner) + "|None"
    return hint.__name__


# A wrong value (as `set:` parses it) and a phrase the message must hold, per kind of field.
WRONG = {
    "int": ("fast", "must be an integer"),
    "float": ("fast", "must be a number"),
    "bool": ("'yes'", "must be True or False"),
    "str": ("12", "must be a string"),
    "enum": ("12", "must be one of"),
    "path": ("12", "must be a path or URL"),
    "tuple": ("12", "must be a tuple"),
    "int|None": ("fast", "must be an integer (such as 8) or None"),
    "float|None": ("fast", "must be a number"),
    "str|None": ("12", "must be a string or None"),
    "enum|None": ("12", "must be one of"),
}
WORDS = {"fast": "the string 'fast'", "'yes'": "the string 'yes'", "12": "the integer 12"}

CASES = [
    (section, field.name, _kind(field.name, hints[field.name]))
    for section, cls in SECTIONS.items()
    for hints in [typing.get_type_hints(cls)]
    for field in dataclasses.fields(cls)
]


def test_every_kind_of_field_is_covered():
    kinds = {kind for *_, kind in CASES}
    assert kinds <= set(WRONG), kinds - set(WRONG)
    # int, float, bool, tuple, enum and path fields all exist in the schema
    assert {"int", "float", "bool", "tuple", "enum", "path"} <= kinds


@pytest.mark.parametrize(("section", "field", "kind"), CASES, ids=lambda v: str(v))
def test_a_wrong_type_names_the_field_and_the_type(section, field, kind):
    value, expected = WRONG[kind]
    with pytest.raises(ConfigError) as err:
        flags.experiment_from_flags([f"set:{section}.{field}={value}"])
    message = str(err.value)
    assert message.startswith(f"{section}.{field}="), message
    assert expected in message, message
    assert f"got {WORDS[value]}" in message, message


def test_enum_type_errors_list_the_allowed_values():
    with pytest.raises(ConfigError, match=r"'xla', 'cudnn', 'splash'; got the integer 3"):
        flags.experiment_from_flags(["set:model.attention_impl=3"])


def test_a_config_file_with_a_wrong_type_names_the_field(tmp_path):
    data = flags.to_dict(flags.experiment_from_flags([]))
    data["optim"]["warmup_steps"] = "50"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"optim\.warmup_steps='50' is invalid: must be an integ"):
        flags.experiment_from_flags([f"file:{path}"])


def test_the_cli_prints_one_line_with_the_field_and_exits_2():
    result = subprocess.run(
        [sys.executable, "-m", "illada_jax.cli", "params", "--config=set:optim.learning_rate=fast"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "illada params: config error: optim.learning_rate='fast' is invalid: must be a number "
        "(such as 0.001); got the string 'fast'"
    )
