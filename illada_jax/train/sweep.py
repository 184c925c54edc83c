"""Sweeps: expand an experiment's `sweep()` into runs, run them one after another, summarise.

    illada sweep --config=config:tiny_lr --config=set:train.steps=200 --workdir=runs/lr
    illada sweep --config=config:tiny_lr --print                          # one command per run
    illada sweep --config=config:tiny_lr --print \\
        --launcher="python launch/xpk.py --cluster c --workload lr-{run} --tpu-type v5p-8 \\
                    --docker-image IMAGE --execute"                        # one pod job per run

Where a sweep comes from (the first `--config` must be `config:...`):
- `config:NAME`: the recipe NAME (`illada_jax.config.registry`: the checkout's `configs/`), whose
  file defines `NAME_sweep()` beside it (configs/sweeps.py holds the project's).
- `config:package.module:fn` or `config:path/to/file.py:fn`: `fn` is the base experiment and its
  module defines `fn_sweep()` (preferred) or `sweep()`.

`sweep()` returns the override sets: a list, or a dict keyed by run name, of either a dict
`{"section.field": value}` (each becomes `set:section.field=repr(value)`) or a list of directive
strings (`set:...`, `fiddler:...`). Each run's directives are: the base `config:` directive, the
other `--config` directives given to `illada sweep` (shared by every run), then its overrides.
Runs are named by the dict keys, else `NN-<overrides>` (lowercase letters, digits and '-', so a
name also works in pod job names); run R trains in `WORKDIR/R` (default `runs/sweeps/<sweep>`).

Locally, every run's config is built and validated before the first one trains; a run that fails
is recorded and the sweep goes on (exit code 1 at the end). Finished runs are skipped on a rerun
(`train` resumes from the final checkpoint). Afterwards WORKDIR holds `summary.json` and
`summary.md` (run, overrides, status, final step, final loss, final held-out ELBO bound
`eval_nll_bound`) and `loss_curves.png` (loss against step, one line per run), read back from each
run's `metrics.jsonl`; `--summary-only` rebuilds them (e.g. after copying pod runs' directories).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import io
import json
import pathlib
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

from illada_jax import storage
from illada_jax.ckpt import rundir
from illada_jax.config import registry
from illada_jax.config.schema import ConfigError

RUN_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


class SweepError(ConfigError):
    """A sweep that cannot be expanded: names the experiment and what to define."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: its name, its own overrides and all the directives that build it."""

    name: str
    overrides: tuple[str, ...]
    directives: tuple[str, ...]


# --- expansion --------------------------------------------------------------------------------


def expand(experiment_name: str, common: Sequence[str] = ()) -> list[tuple[str, list[str]]]:
    """`[(run_name, directives)]` of the sweep of `experiment_name` (`NAME`, `config:NAME`,
    `config:module:fn` or `config:file.py:fn`); `common` directives go before each run's own."""
    return [(run.name, list(run.directives)) for run in expand_runs(experiment_name, common)]


def expand_runs(experiment_name: str, common: Sequence[str] = ()) -> list[Run]:
    spec = experiment_name.removeprefix("config:")
    base, sweep_fn = _find_sweep(spec)
    sets = sweep_fn()
    named = sets.items() if isinstance(sets, dict) else ((None, s) for s in sets)
    runs = []
    for index, (name, overrides) in enumerate(named):
        directives = _override_directives(overrides, spec)
        name = _check_name(name, spec) if name is not None else _default_name(index, directives)
        runs.append(Run(name, tuple(directives), (base, *common, *directives)))
    if not runs:
        raise SweepError(f"the sweep of config:{spec} returned no override sets")
    duplicates = sorted({r.name for r in runs if [s.name for s in runs].count(r.name) > 1})
    if duplicates:
        raise SweepError(f"the sweep of config:{spec} repeats run names {duplicates}")
    return runs


def sweep_name(experiment_name: str) -> str:
    """`tiny_lr` for `config:tiny_lr`, `fn` for `config:module:fn`."""
    return experiment_name.removeprefix("config:").rpartition(":")[2]


def _find_sweep(spec: str) -> tuple[str, Callable[[], Any]]:
    """The base `config:` directive and the sweep function of an experiment spec."""
    if ":" not in spec:
        return _named_sweep(spec)
    module_name, _, fn = spec.rpartition(":")
    module = _load_module(module_name)
    if not hasattr(module, fn):
        raise SweepError(f"config:{spec}: module {module_name!r} has no function {fn!r}")
    for attr in (f"{fn}_sweep", "sweep"):
        if callable(getattr(module, attr, None)):
            return f"config:{spec}", getattr(module, attr)
    raise SweepError(
        f"config:{spec} has no sweep: define {fn}_sweep() or sweep() in {module_name}, "
        "returning a list of override sets such as [{'optim.learning_rate': 1e-3}]"
    )


def _named_sweep(name: str) -> tuple[str, Callable[[], Any]]:
    recipe = registry.recipes().get(name)
    if recipe is None or recipe.sweep is None:
        what = "defines no sweep" if recipe is not None else "is not a named sweep"
        raise SweepError(
            f"config:{name} {what}; named sweeps are: {', '.join(named_sweeps()) or 'none'}. "
            "Or give config:module:fn / config:file.py:fn whose module defines fn_sweep() or "
            "sweep()"
        )
    return f"config:{name}", recipe.sweep


def named_sweeps() -> list[str]:
    """Recipes with a `NAME_sweep()` beside them."""
    return sorted(name for name, recipe in registry.recipes().items() if recipe.sweep)


def _load_module(module_name: str):
    if module_name.endswith(".py"):
        path = pathlib.Path(module_name)
        if not path.is_file():
            raise SweepError(f"config file {module_name} does not exist")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        raise SweepError(f"cannot import config module {module_name!r}: {err}") from err


def _override_directives(overrides: Any, spec: str) -> list[str]:
    """An override set -> `set:`/`fiddler:` directives."""
    if isinstance(overrides, dict):
        return [f"set:{field}={value!r}" for field, value in overrides.items()]
    if isinstance(overrides, list | tuple) and all(isinstance(d, str) for d in overrides):
        bad = [d for d in overrides if not d.startswith(("set:", "fiddler:"))]
        if not bad:
            return list(overrides)
        raise SweepError(f"the sweep of config:{spec}: {bad} are not set:/fiddler: directives")
    raise SweepError(
        f"the sweep of config:{spec} gave {overrides!r}; an override set is a dict "
        "{'section.field': value} or a list of 'set:...'/'fiddler:...' directives"
    )


def _default_name(index: int, directives: Sequence[str]) -> str:
    """`NN-<leaf field names and values>`, e.g. `00-learning-rate-0-001`."""
    words = []
    for directive in directives:
        kind, _, arg = directive.partition(":")
        field, _, value = arg.partition("=")
        words.append(f"{field.rpartition('.')[2]} {value}" if kind == "set" else arg)
    slug = re.sub(r"[^a-z0-9]+", "-", " ".join(words).lower()).strip("-")
    return f"{index:02d}-{slug}"[:60].rstrip("-")


def _check_name(name: Any, spec: str) -> str:
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
        raise SweepError(
            f"the sweep of config:{spec}: run name {name!r} must be lowercase "
            "letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


# --- running ----------------------------------------------------------------------------------


def train_command(run: Run, workdir: str) -> list[str]:
    """The `illada train` command of one run (`workdir` as the user wrote it: local or gs://)."""
    return [
        "illada",
        "train",
        *(f"--config={d}" for d in run.directives),
        f"--workdir={workdir.rstrip('/')}/{run.name}",
    ]


def print_commands(runs: Sequence[Run], workdir: str, launcher: str | None) -> None:
    """One `illada train` command per run, behind `LAUNCHER --` when given ({run} = run name)."""
    for run in runs:
        command = shlex.join(train_command(run, workdir))
        print(f"{launcher.replace('{run}', run.name)} -- {command}" if launcher else command)


def run_local(runs: Sequence[Run], workdir: storage.Path, print_fn=print) -> dict[str, str]:
    """Train every run here, one after another; returns run name -> status (`ok` or the error)."""
    from illada_jax.config import flags
    from illada_jax.parallel.distributed import start_jax

    built = {}
    for run in runs:  # every config is validated before anything trains
        try:
            built[run.name] = flags.experiment_from_flags(run.directives)
        except ConfigError as err:
            raise ConfigError(f"run {run.name}: {err}") from None
    start_jax(built[runs[0].name].mesh.cpu_devices)
    from illada_jax.train.loop import train

    statuses = {run.name: "not started (sweep preempted; rerun to resume)" for run in runs}
    for index, run in enumerate(runs):
        print_fn(f"=== sweep run {index + 1}/{len(runs)}: {run.name} ({' '.join(run.overrides)})")
        try:
            history = train(built[run.name], workdir / run.name, print_fn=print_fn)
        except Exception as err:  # one failed run must not lose the others
            statuses[run.name] = f"failed: {type(err).__name__}: {err}"
            print_fn(f"run {run.name} {statuses[run.name]}")
            continue
        if history and history[-1].get("preempted"):  # SIGTERM: stop here, a rerun resumes
            statuses[run.name] = "preempted (rerun to resume)"
            break
        statuses[run.name] = "ok"
    return statuses


# --- summary ----------------------------------------------------------------------------------


def read_metrics(run_dir: storage.Path) -> list[dict]:
    """The run's metrics rows; none when it has not started."""
    return rundir.read_metrics(run_dir) if (run_dir / rundir.METRICS).is_file() else []


def summarise_run(run: Run, run_dir: storage.Path, status: str | None) -> dict:
    """The summary row of one run, from its `metrics.jsonl`."""
    records = read_metrics(run_dir)
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r and "event" not in r]
    evals = [r["eval_nll_bound"] for r in records if "eval_nll_bound" in r]
    if status is None:
        status = "ok" if losses else "no metrics"
    return {
        "run": run.name,
        "overrides": list(run.overrides),
        "directives": list(run.directives),
        "workdir": str(run_dir),
        "status": status,
        "final_step": losses[-1][0] if losses else None,
        "final_loss": losses[-1][1] if losses else None,
        "final_eval_nll_bound": evals[-1] if evals else None,
        "loss_curve": losses,
    }


def markdown_table(rows: Sequence[dict]) -> str:
    def number(value):
        return "-" if value is None else f"{value:.4f}"

    lines = [
        "| run | overrides | status | final step | final loss "
        "| final eval ELBO bound (nats/token) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        overrides = " ".join(f"`{o}`" for o in row["overrides"])
        lines.append(
            f"| {row['run']} | {overrides} | {row['status']} | "
            f"{row['final_step'] if row['final_step'] is not None else '-'} | "
            f"{number(row['final_loss'])} | {number(row['final_eval_nll_bound'])} |"
        )
    return "\n".join(lines) + "\n"


def plot_loss_curves(rows: Sequence[dict], path: storage.Path, title: str) -> bool:
    """Loss against step, one line per run (matplotlib, Agg backend); False when unavailable."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        print(
            f"matplotlib is not installed: no {path.name} (pip install matplotlib)", file=sys.stderr
        )
        return False
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        if row["loss_curve"]:
            steps, losses = zip(*row["loss_curve"])
            axes.plot(steps, losses, marker="." if len(steps) < 30 else None, label=row["run"])
    axes.set(xlabel="step", ylabel="loss", title=title)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    if any(row["loss_curve"] for row in rows):
        axes.legend()
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=120)
    plt.close(figure)
    storage.atomic_write(path, image.getvalue())
    return True


def write_summary(
    runs: Sequence[Run], workdir: storage.Path, name: str, statuses: dict[str, str] | None = None
) -> list[dict]:
    """`summary.json`, `summary.md` and `loss_curves.png` in `workdir`; returns the rows."""
    statuses = statuses or {}
    rows = [summarise_run(run, workdir / run.name, statuses.get(run.name)) for run in runs]
    workdir.mkdir(parents=True, exist_ok=True)
    storage.atomic_write(
        workdir / "summary.json", json.dumps({"sweep": name, "runs": rows}, indent=2)
    )
    png = plot_loss_curves(rows, workdir / "loss_curves.png", f"sweep {name}")
    image = "\n![loss curves](loss_curves.png)\n" if png else ""
    storage.atomic_write(workdir / "summary.md", f"# Sweep {name}\n\n{markdown_table(rows)}{image}")
    return rows
