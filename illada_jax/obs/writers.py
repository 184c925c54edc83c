"""Metric writers for a run directory: `metrics.jsonl`, TensorBoard events, optional W&B.

`MetricWriter(run_dir, enabled=jax.process_index() == 0)` is the one object the runner logs to:

- `metrics.jsonl`: one JSON object per `write_metrics` call, `{"step": ..., <key>: <value>, ...}`,
  opened in append mode (a resumed run continues the same file) and flushed after every line, so
  a killed run loses nothing already logged. Values are plain `int` / `float` / `bool` / `str` /
  `None`; JAX and numpy scalars (or one-element arrays) are converted. Non-finite floats are
  written as the bare `NaN` / `Infinity` tokens Python's `json` module reads back — a NaN loss is
  worth recording as such.
- TensorBoard: `events.out.tfevents.*` in the run directory itself, written with tensorboardX (no
  TensorFlow). Every numeric metric becomes a scalar under its key; `write_text` adds text (the
  resolved config). Flushed after each `write_metrics`.
- Weights & Biases: when `wandb_project` is given (the runner passes `obs.wandb_project`,
  `obs.wandb_entity`, `obs.wandb_mode` and the resolved config). `wandb` is an optional extra
  (`pip install "illada-jax[wandb]"`); asking for a project without it installed is a
  `ConfigError` when the writer starts, not a run that silently logs nowhere. The W&B run id is
  kept in `WORKDIR/wandb_run_id`, so a resumed run continues the same W&B run. W&B's own step
  counts the records logged (it only goes forward); the training step is the logged field
  `train_step`, so after a rollback the re-run steps stay visible instead of being dropped.

Only one process writes: the runner passes `enabled=(jax.process_index() == 0)`; a disabled writer
creates no file or directory and ignores every call.
"""

from __future__ import annotations

import json
import numbers
import os
import secrets
import string
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from illada_jax import storage
from illada_jax.config.schema import ConfigError

METRICS_FILE = "metrics.jsonl"
WANDB_ID_FILE = "wandb_run_id"

Scalar = int | float | bool | str | None


def to_plain(key: str, value: Any) -> Scalar:
    """`value` as a JSON-ready Python scalar. Raises TypeError naming `key` for anything else."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # jax.Array / np.ndarray / np scalar
        array = np.asarray(value)
        if array.size == 1:
            item = array.reshape(()).item()
            return item if isinstance(item, bool) else to_plain(key, item)
    raise TypeError(
        f"metric {key!r} has value {value!r} of type {type(value).__name__}: metrics must be "
        "numbers, bools, strings, None or one-element arrays"
    )


class MetricWriter:
    """Writes metrics to `run_dir/metrics.jsonl`, TensorBoard and (optionally) W&B.

    Args:
      run_dir: the run directory (created if missing, when enabled).
      enabled: False on every process but process 0; a disabled writer does nothing.
      tensorboard: write TensorBoard event files (tensorboardX).
      wandb_project: a W&B project to log to as well (`ConfigError` when the `wandb` package is
        not installed).
      wandb_config: the resolved config as a dict, stored with the W&B run.
      wandb_run_name: the W&B run name (default: the run directory's name).
      wandb_entity: the W&B entity (None: the API key's default).
      wandb_mode: "online", "offline" or "disabled" (None: wandb's default, `WANDB_MODE`).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        enabled: bool = True,
        *,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        wandb_config: Mapping[str, Any] | None = None,
        wandb_run_name: str | None = None,
        wandb_entity: str | None = None,
        wandb_mode: str | None = None,
    ) -> None:
        self.run_dir = os.fspath(run_dir)
        self.enabled = bool(enabled)
        self._jsonl = None
        self._tensorboard = None
        self._wandb_run = None
        self._closed = False
        if not self.enabled:
            return
        wandb = import_wandb(wandb_project) if wandb_project else None  # before creating files
        self.remote = not storage.is_local(self.run_dir)
        storage.path(self.run_dir).mkdir(parents=True, exist_ok=True)
        self.metrics_path = os.path.join(self.run_dir, METRICS_FILE)
        if self.remote:
            self._jsonl = ObjectAppender(self.metrics_path)
        else:
            self._jsonl = open(self.metrics_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(logdir=self.run_dir, flush_secs=30)
        if wandb_project:
            id_path = storage.path(self.run_dir) / WANDB_ID_FILE
            if id_path.is_file():
                run_id = id_path.read_text().strip()
            else:
                alphabet = string.ascii_lowercase + string.digits  # W&B's own id alphabet
                run_id = "".join(secrets.choice(alphabet) for _ in range(8))
                storage.atomic_write(id_path, run_id + "\n")
            self._wandb_run = _start_wandb(
                wandb,
                wandb_project,
                wandb_config,
                wandb_run_name or os.path.basename(self.run_dir.rstrip("/")),
                None if self.remote else self.run_dir,  # wandb keeps its files locally
                run_id=run_id,
                entity=wandb_entity,
                mode=wandb_mode,
            )
            # W&B drops a step below its last one: continue after the records already logged
            # (metrics.jsonl's lines; a resumed W&B run also reports its own step).
            logged = self._jsonl_lines()
            self._wandb_step = max(logged, int(getattr(self._wandb_run, "step", 0) or 0))

    def write_metrics(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Scalar]:
        """Log `metrics` at `step` everywhere; returns the record written to `metrics.jsonl`."""
        record: dict[str, Scalar] = {"step": int(step)}
        for key, value in metrics.items():
            if key == "step":
                continue
            record[str(key)] = to_plain(str(key), value)
        if not self.enabled or self._closed:
            return record
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        numeric = {
            key: float(value)
            for key, value in record.items()
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool)
        }
        if self._tensorboard is not None:
            for key, value in numeric.items():
                self._tensorboard.add_scalar(key, value, global_step=record["step"])
            if not self.remote:  # on object storage every flush re-uploads the event file
                self._tensorboard.flush()
        if self._wandb_run is not None:
            values = {k: v for k, v in record.items() if k != "step"}
            self._wandb_run.log({**values, "train_step": record["step"]}, step=self._wandb_step)
            self._wandb_step += 1
        return record

    def _jsonl_lines(self) -> int:
        """Records already in metrics.jsonl (a resumed run appends to it)."""
        path = storage.path(self.metrics_path)
        if not path.is_file():
            return 0
        return sum(1 for line in path.read_text().splitlines() if line.strip())

    def write_text(self, tag: str, text: str, step: int = 0, *, as_code: bool = False) -> None:
        """Add `text` to TensorBoard under `tag` (e.g. the resolved config as `config`).

        TensorBoard renders text as Markdown; `as_code=True` indents every line by four spaces so
        JSON or YAML shows verbatim as a code block.
        """
        if not self.enabled or self._closed or self._tensorboard is None:
            return
        if as_code:
            text = "\n".join("    " + line for line in text.splitlines())
        self._tensorboard.add_text(tag, text, global_step=int(step))
        self._tensorboard.flush()

    def flush(self) -> None:
        if not self.enabled or self._closed:
            return
        self._jsonl.flush()
        if self._tensorboard is not None:
            self._tensorboard.flush()

    def close(self) -> None:
        """Flush and close everything; later calls are no-ops. Idempotent."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        self._jsonl.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ObjectAppender:
    """Append-only text file on object storage, which cannot append: the lines are kept and the
    whole object is rewritten at most every `flush_secs` (and at `close`). A resumed run starts
    from the object's current content, so nothing already flushed is lost."""

    def __init__(self, target: str, flush_secs: float = 10.0):
        self.path = storage.path(target)
        self.flush_secs = flush_secs
        self._text = self.path.read_text() if self.path.exists() else ""
        self._dirty = False
        self._flushed_at = time.monotonic()

    def write(self, text: str) -> None:
        self._text += text
        self._dirty = True

    def flush(self, force: bool = False) -> None:
        if self._dirty and (force or time.monotonic() - self._flushed_at >= self.flush_secs):
            self.path.write_text(self._text)
            self._dirty = False
            self._flushed_at = time.monotonic()

    def close(self) -> None:
        self.flush(force=True)


def import_wandb(project: str) -> Any:
    """The `wandb` module; `ConfigError` saying how to get it when it is not installed."""
    try:
        import wandb
    except ImportError as err:
        raise ConfigError(
            f"obs.wandb_project={project!r} asks for Weights & Biases logging, but the wandb "
            'package is not installed: pip install "illada-jax[wandb]", or unset '
            "obs.wandb_project"
        ) from err
    return wandb


def _start_wandb(
    wandb: Any,
    project: str,
    config: Mapping[str, Any] | None,
    name: str,
    run_dir: str | None,
    *,
    run_id: str,
    entity: str | None = None,
    mode: str | None = None,
) -> Any:
    """The W&B run `run_id` (resumed when it exists) storing `config`."""
    return wandb.init(
        project=project,
        entity=entity,
        mode=mode,
        id=run_id,
        name=name,
        dir=run_dir,
        config=dict(config) if config is not None else None,
        resume="allow",
    )
