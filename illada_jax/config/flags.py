"""gin-style configuration on Fiddle: `--config=` directives, applied in order.

    config:NAME            a named experiment: a recipe in the checkout's `configs/` or a built-in
                           one (`illada_jax.config.registry`), or `config:package.module:function`
                           / `config:path/to/file.py:function` for any function returning
                           `fdl.Config[Experiment]`
    fiddler:NAME           a named transform of the config (`experiments.FIDDLERS`), or
                           `fiddler:package.module:function`
    set:path.to.field=V    override one field; V is a Python literal (`8`, `1e-3`, `True`,
                           `'x'`, `None`); anything else is taken as a string
    file:PATH              a resolved config written by a run (`config.json`)

Without a leading `config:` or `file:` directive, `config:tiny` is applied first.
`build` turns the `fdl.Config` into a validated `Experiment`: a bad value raises `ConfigError`
naming `section.field` and what is allowed, before anything is traced or compiled.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import json
import pathlib
import typing
from collections.abc import Sequence
from typing import Any

import fiddle as fdl

from illada_jax.config import experiments, registry
from illada_jax.config.schema import ConfigError, Experiment

DEFAULT_DIRECTIVES = ("config:tiny",)


def _load_callable(spec: str, named: dict[str, Any], kind: str):
    if spec in named:
        return named[spec]
    if ":" not in spec:
        raise ConfigError(
            f"unknown {kind} {spec!r}; named ones are {', '.join(sorted(named))}, "
            f"or give module.path:function or path/to/file.py:function"
        )
    module_name, _, attr = spec.rpartition(":")
    if module_name.endswith(".py"):
        path = pathlib.Path(module_name)
        if not path.is_file():
            raise ConfigError(f"{kind} file {module_name} does not exist")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ConfigError(f"cannot import {kind} module {module_name!r}: {err}") from err
    if not hasattr(module, attr):
        raise ConfigError(f"{kind} module {module_name!r} has no function {attr!r}")
    return getattr(module, attr)


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word such as `set:model.attention_impl=splash`


def _set_field(cfg: fdl.Config, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = cfg
    for i, name in enumerate(parents):
        node = _child(node, name, ".".join(parents[: i + 1]))
    if not isinstance(node, fdl.Config) or leaf not in _field_names(node):
        allowed = ", ".join(_field_names(node)) if isinstance(node, fdl.Config) else "none"
        raise ConfigError(f"set:{dotted}: no field {leaf!r} here; fields are: {allowed}")
    setattr(node, leaf, value)


def _child(node: Any, name: str, path: str) -> Any:
    if not isinstance(node, fdl.Config) or name not in _field_names(node):
        allowed = ", ".join(_field_names(node)) if isinstance(node, fdl.Config) else "none"
        raise ConfigError(f"set:{path}: no section {name!r}; sections are: {allowed}")
    if name not in node.__arguments__:  # left at its default (e.g. a config.json older than it)
        spec = next(f for f in dataclasses.fields(fdl.get_callable(node)) if f.name == name)
        if dataclasses.is_dataclass(spec.default_factory):
            setattr(node, name, fdl.Config(spec.default_factory))
    return getattr(node, name)


def _field_names(node: fdl.Config) -> list[str]:
    return [f.name for f in dataclasses.fields(fdl.get_callable(node))]


def config_from_dict(cls: type, data: dict, path: str = "") -> fdl.Config:
    """A JSON dict (as written by `to_dict`) -> `fdl.Config[cls]`, nested dataclasses included."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'} must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{path or 'config'}: unknown field(s) {unknown}; fields are {sorted(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = config_from_dict(hint, value, f"{path}{name}.")
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return fdl.Config(cls, **kwargs)


def to_dict(experiment: Experiment) -> dict:
    return dataclasses.asdict(experiment)


def to_json(experiment: Experiment) -> str:
    return json.dumps(to_dict(experiment), indent=2, sort_keys=True)


def load_file(path: str | pathlib.Path) -> fdl.Config:
    path = pathlib.Path(path)
    if path.is_dir():
        raise ConfigError(f"file:{path} is a directory; give a config JSON file such as "
                          "WORKDIR/config.json")  # fmt: skip
    if not path.is_file():
        raise ConfigError(
            f"file:{path}: no such file (a run writes its config to WORKDIR/config.json)"
        )
    try:
        data = json.loads(path.read_text())
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError (not a text file)
        raise ConfigError(f"file:{path} is not valid JSON: {err}") from err
    if isinstance(data, dict):  # a run's config.json also records its runtime settings
        data.pop("runtime", None)
    try:
        return config_from_dict(Experiment, data)
    except ConfigError as err:
        raise ConfigError(f"file:{path}: {err}") from None


def resolve(directives: Sequence[str] | None) -> fdl.Config:
    """Apply `--config=` directives in order and return the `fdl.Config[Experiment]`."""
    directives = list(directives or ())
    if not directives or not directives[0].startswith(("config:", "file:")):
        directives = [*DEFAULT_DIRECTIVES, *directives]
    cfg = None
    for directive in directives:
        kind, sep, arg = directive.partition(":")
        if not sep or kind not in ("config", "fiddler", "set", "file"):
            raise ConfigError(
                f"--config={directive!r}: expected config:NAME, fiddler:NAME, "
                "set:path.to.field=VALUE or file:PATH"
            )
        if kind == "config":
            function = registry.lookup(arg).function if ":" not in arg else None
            cfg = (function or _load_callable(arg, {}, "config"))()
            if not isinstance(cfg, fdl.Config) or fdl.get_callable(cfg) is not Experiment:
                raise ConfigError(f"config:{arg} must return fdl.Config(Experiment, ...)")
            continue
        if kind == "file":
            cfg = load_file(arg)
            continue
        if kind == "fiddler":
            _load_callable(arg, experiments.FIDDLERS, "fiddler")(cfg)
        else:
            dotted, eq, value = arg.partition("=")
            if not eq or not dotted:
                raise ConfigError(f"--config=set:{arg}: expected set:path.to.field=VALUE")
            _set_field(cfg, dotted.strip(), _parse_value(value.strip()))
    return cfg


def build(cfg: fdl.Config) -> Experiment:
    """Build and validate. Section errors are prefixed with the section name (`model.n_heads`)."""
    sections = {}
    for field in dataclasses.fields(Experiment):
        if field.name not in cfg.__arguments__:
            continue  # a section the config leaves at its default (e.g. `obs` in older configs)
        section = getattr(cfg, field.name)
        try:
            sections[field.name] = (
                fdl.build(section) if isinstance(section, fdl.Config) else section
            )
        except ConfigError as err:
            # err.args[0]: the message without the context Fiddle appends
            raise ConfigError(f"{field.name}.{err.args[0]}") from None
        except TypeError as err:
            raise ConfigError(f"{field.name}: {err.args[0]}") from None
    return Experiment(**sections)


def experiment_from_flags(directives: Sequence[str] | None) -> Experiment:
    return build(resolve(directives))
