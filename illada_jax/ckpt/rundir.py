"""The run directory: where a run keeps what it writes, and how to find it again.

    WORKDIR/
      config.json              the resolved `Experiment` (`illada train --config=file:` reproduces it)
      metrics.jsonl            one JSON object per logged step (training, held-out evaluations)
      events.*                 TensorBoard
      samples/step_*.txt       text generated at evaluation steps
      profile/                 `jax.profiler` traces (`train.profile_steps`)
      checkpoints/<step>/      orbax items: `state` (the train state), `data` (the pipeline
                               position), `meta` (the resolved config and the runner's controls)

The runner, the converter (`ckpt/convert.py`, which writes checkpoint directories of converted
weights) and `illada_jax.load` all go through this module, so the layout is defined once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from illada_jax import storage
from illada_jax.config import flags
from illada_jax.config.schema import ConfigError, Experiment
from illada_jax.errors import IlladaError

CONFIG = "config.json"
RUNTIME = "runtime"  # config.json's record of the process's runtime settings, not config
METRICS = "metrics.jsonl"
SAMPLES = "samples"
PROFILE = "profile"
CHECKPOINTS = "checkpoints"
ITEMS = ("state", "data", "meta")  # the orbax items of one checkpoint step


class LoadError(IlladaError, ValueError):
    """A path that does not hold what was expected (the message says what was)."""


def write_config(
    workdir: storage.PathLike, experiment: Experiment, runtime: dict | None = None
) -> storage.Path:
    """Write `WORKDIR/config.json` (creating WORKDIR); returns its path. `runtime`: what the
    process runs with (`parallel.tpu_runtime.runtime_record`: libtpu/XLA flags, versions), stored
    under the key `runtime`, which readers of the config skip (`config_data`)."""
    workdir = storage.path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / CONFIG
    data = flags.to_dict(experiment)
    if runtime is not None:
        data[RUNTIME] = runtime
    storage.atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def config_data(data: dict) -> dict:
    """A stored config's `Experiment` fields (without the `runtime` record)."""
    return {k: v for k, v in data.items() if k != RUNTIME}


def read_metrics(workdir: storage.PathLike) -> list[dict]:
    """The rows of `WORKDIR/metrics.jsonl` (training logs and held-out evaluations)."""
    path = storage.path(workdir) / METRICS
    if not path.is_file():
        raise LoadError(f"{path} does not exist: is {workdir} a run directory?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def checkpoint_meta(
    experiment: Experiment,
    *,
    lr_scale: float = 1.0,
    recent_losses: Sequence[float] = (),
    unresolved_metrics: Sequence[tuple[int, dict]] = (),
    metric_window: dict | None = None,
) -> dict:
    """The `meta` item of a checkpoint: the resolved config and the runner's controls (the
    learning-rate scale, the spike detector's window, steps whose metrics the loop had not yet
    read, as [step, {name: float}], and the sums of the metrics since the last log line:
    {"healthy": steps, "sums": {name: float}})."""
    return {
        "lr_scale": float(lr_scale),
        "recent_losses": [float(x) for x in recent_losses],
        "unresolved_metrics": [[int(s), dict(m)] for s, m in unresolved_metrics],
        "metric_window": metric_window or {"healthy": 0, "sums": {}},
        "config": flags.to_dict(experiment),
    }


def find_step_dir(path: storage.PathLike) -> storage.Path:
    """The newest checkpoint step under `path`: a run directory, its `checkpoints/` directory, or
    one `checkpoints/<step>` directory (returned as is)."""
    path = storage.path(path)
    if (path / "state").is_dir():
        return path
    root = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
    steps = []
    if root.is_dir():
        steps = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()), reverse=True)
    for step in steps:
        if (root / str(step) / "state").is_dir():
            return root / str(step)
    raise LoadError(
        f"{path}: no checkpoint found; give a run directory (with {CHECKPOINTS}/), its "
        f"{CHECKPOINTS}/ directory or one {CHECKPOINTS}/<step> directory"
    )


def read_experiment(step_dir: storage.PathLike) -> Experiment:
    """The `Experiment` a checkpoint step was written with: its `meta` item, else the run's
    `config.json` two levels up."""
    step_dir = storage.path(step_dir)
    candidates = [step_dir / "meta" / "metadata", step_dir.parent.parent / CONFIG]
    for candidate in candidates:
        if not candidate.is_file():
            continue
        fix = "the checkpoint's config cannot be read: use another step, or restore the file"
        data = storage.read_json_object(candidate, LoadError, fix)
        data = data.get("config", data) if candidate.name == "metadata" else config_data(data)
        try:
            return flags.build(flags.config_from_dict(Experiment, data))
        except ConfigError as err:
            raise LoadError(f"{candidate}: the stored config is not valid here: {err}") from None
    raise LoadError(f"{step_dir}: no stored config (looked for {[str(c) for c in candidates]})")
