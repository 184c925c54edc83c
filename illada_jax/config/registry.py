"""Where `--config=config:NAME` finds NAME: the recipes in a checkout's `configs/` (or the copy
of them installed with the package), then the experiments built into the package.

Recipes are Python files in a `configs/` directory; every public function defined in one (not
starting with `_`, not ending with `_sweep`) is a recipe named after the function and returns
`fdl.Config(Experiment, ...)`. `NAME_sweep()` beside recipe `NAME` makes it a sweep
(`illada sweep --config=config:NAME`). Recipe names are unique across the files.

The `configs/` directory searched (the first that exists wins):
1. `$ILLADA_CONFIGS`;
2. the checkout holding the current directory: the current directory or a parent of it with
   both `configs/` and a `pyproject.toml` of the `illada-jax` project;
3. the checkout this package was installed from in editable mode (`pip install -e .`);
4. the copy of the checkout's `configs/` that the wheel and sdist carry, installed as
   `illada_jax/recipes/` by a plain `pip install`: the recipes as they were when it was built.

The built-in experiments (`config/experiments.py`: `tiny`, the default CPU demo, and `small`) are
always there, and any file's function is reachable with `config:path/to/file.py:function`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import os
import pathlib
from collections.abc import Callable

from illada_jax.config.schema import ConfigError
from illada_jax.pyfiles import load_module_file

CONFIGS_DIR = "configs"
INSTALLED_PACKAGE = "illada_jax.recipes"  # configs/ as packaged (pyproject.toml maps it)
ENV_VAR = "ILLADA_CONFIGS"
_MODULE_PREFIX = "illada_configs"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One named experiment: its function, and its sweep when the file defines one."""

    name: str
    function: Callable
    path: pathlib.Path | None  # the file; None for a built-in experiment
    sweep: Callable | None = None

    @property
    def summary(self) -> str:
        """The first line of the recipe's docstring."""
        return (inspect.getdoc(self.function) or "").split("\n")[0]


def _is_checkout(directory: pathlib.Path) -> bool:
    pyproject = directory / "pyproject.toml"
    return (
        (directory / CONFIGS_DIR).is_dir()
        and pyproject.is_file()
        and ('name = "illada-jax"' in pyproject.read_text(errors="replace"))
    )


def configs_dir() -> pathlib.Path | None:
    """The `configs/` directory recipes are read from (see the module docstring), or None."""
    if os.environ.get(ENV_VAR):
        directory = pathlib.Path(os.environ[ENV_VAR]).expanduser()
        if not directory.is_dir():
            raise ConfigError(f"{ENV_VAR}={directory} is not a directory of recipe files")
        return directory
    cwd = pathlib.Path.cwd()
    package_checkout = pathlib.Path(__file__).resolve().parents[2]
    for directory in (cwd, *cwd.parents, package_checkout):
        if _is_checkout(directory):
            return directory / CONFIGS_DIR
    return installed_configs_dir()


def installed_configs_dir() -> pathlib.Path | None:
    """The copy of `configs/` installed with the package (`illada_jax/recipes/` in a wheel
    install), or None."""
    try:
        spec = importlib.util.find_spec(INSTALLED_PACKAGE)
    except ImportError:
        return None
    for location in (spec.submodule_search_locations or ()) if spec else ():
        if pathlib.Path(location).is_dir():
            return pathlib.Path(location)
    return None


def _load_file(path: pathlib.Path):
    return load_module_file(
        path,
        f"{_MODULE_PREFIX}.{path.stem}",
        lambda err: ConfigError(f"recipe file {path} does not import: {type(err).__name__}: {err}"),
    )


def _recipes_in(module, path: pathlib.Path) -> list[Recipe]:
    out = []
    for name, function in vars(module).items():
        if (
            name.startswith("_")
            or name.endswith("_sweep")
            or not inspect.isfunction(function)
            or function.__module__ != module.__name__
        ):
            continue
        sweep = getattr(module, f"{name}_sweep", None)
        out.append(Recipe(name, function, path, sweep if callable(sweep) else None))
    return out


@functools.cache
def _checkout_recipes(directory: pathlib.Path | None) -> dict[str, Recipe]:
    if directory is None:
        return {}
    recipes: dict[str, Recipe] = {}
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        for recipe in _recipes_in(_load_file(path), path):
            if recipe.name in recipes:
                raise ConfigError(
                    f"recipe {recipe.name!r} is defined in both {recipes[recipe.name].path} and "
                    f"{path}; recipe names must be unique across {directory}"
                )
            recipes[recipe.name] = recipe
    return recipes


def builtin_recipes() -> dict[str, Recipe]:
    """The experiments inside the package (always available)."""
    from illada_jax.config import experiments

    return {name: Recipe(name, fn, None) for name, fn in experiments.EXPERIMENTS.items()}


def recipes() -> dict[str, Recipe]:
    """Every named experiment: the checkout's recipes, then the built-ins they do not shadow."""
    found = dict(_checkout_recipes(configs_dir()))
    for name, recipe in builtin_recipes().items():
        found.setdefault(name, recipe)
    return found


def lookup(name: str) -> Recipe:
    """The recipe called `name`, or a ConfigError listing the names there are."""
    found = recipes()
    if name in found:
        return found[name]
    where = configs_dir()
    hint = (
        f"recipes are read from {where}"
        if where
        else "no configs/ directory was found (run from a checkout of illada-jax, or set "
        f"{ENV_VAR}=path/to/configs)"
    )
    raise ConfigError(
        f"unknown config {name!r}; named ones are {', '.join(sorted(found))} ({hint}); or give "
        "config:module.path:function or config:path/to/file.py:function"
    )
