"""Console progress for the training loop: a tqdm bar with ETA, or one plain line per log step.

`TrainProgress(total_steps, initial_step=..., enabled=jax.process_index() == 0)`:

- the bar (step/total, elapsed, ETA, loss, tokens/s) is shown only on process 0 and only when its
  stream (stdout by default) is a terminal, unless `force=True`; tqdm limits redraws itself, so
  `advance(step)` may be called every step at no cost;
- when the bar is off (a log file, CI, a pod's captured output), `log(record)` prints
  `format_log_line(record)` instead, one line per logged step;
- on every other process it does nothing.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from tqdm import tqdm

# Keys shown first in a log line, in this order; the rest follow in the record's order.
_LEADING_KEYS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "step_time_s")


def _format_value(key: str, value: Any) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}" if key == "tokens_per_s" else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if key == "mfu":
            return f"{100 * value:.1f}%"
        if key == "tokens_per_s":
            return f"{value:,.0f}"
        if key == "lr":
            return f"{value:.3e}"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.4e}"
    return str(value)


def format_log_line(record: Mapping[str, Any], total_steps: int | None = None) -> str:
    """One human-readable line for a metrics record, e.g.

    `step 120/1000 | loss 3.214 | lr 1.000e-03 | grad_norm 0.8512 | tokens_per_s 12,345 | mfu 23.4%`
    """
    parts = []
    if "step" in record:
        step = record["step"]
        parts.append(f"step {step}/{total_steps}" if total_steps else f"step {step}")
    keys = [k for k in _LEADING_KEYS if k in record]
    keys += [k for k in record if k != "step" and k not in _LEADING_KEYS]
    parts += [f"{key} {_format_value(key, record[key])}" for key in keys]
    return " | ".join(parts)


def _postfix(record: Mapping[str, Any]) -> str:
    parts = []
    for key, label in (("loss", "loss"), ("tokens_per_s", "tok/s"), ("mfu", "mfu")):
        if key in record:
            parts.append(f"{label}={_format_value(key, record[key])}")
    return ", ".join(parts)


class TrainProgress:
    """A progress bar for steps `initial_step`..`total_steps`, or plain log lines (module doc).

    Args:
      total_steps: the step the run ends at.
      initial_step: the step a resumed run starts from (the ETA counts only steps run now).
      enabled: False on every process but process 0.
      force: show the bar even when `file` is not a terminal.
      file: where the bar / log lines go (default `sys.stdout`, looked up at construction).
    """

    def __init__(
        self,
        total_steps: int,
        *,
        initial_step: int = 0,
        enabled: bool = True,
        force: bool = False,
        file: TextIO | None = None,
        desc: str = "train",
    ) -> None:
        self.total_steps = int(total_steps)
        self.enabled = bool(enabled)
        self.file = sys.stdout if file is None else file
        self.step = int(initial_step)
        isatty = getattr(self.file, "isatty", lambda: False)
        self.bar_active = self.enabled and (force or bool(isatty()))
        self._bar: tqdm | None = None
        if self.bar_active:
            self._bar = tqdm(
                total=self.total_steps,
                initial=self.step,
                desc=desc,
                unit="step",
                file=self.file,
                dynamic_ncols=True,
                smoothing=0.1,
            )

    def advance(self, step: int) -> None:
        """Move the bar to `step` (absolute). Cheap: call it every step."""
        step = int(step)
        if self._bar is not None and step > self.step:
            self._bar.update(step - self.step)
        self.step = max(self.step, step)

    def log(self, record: Mapping[str, Any]) -> None:
        """Show a metrics record: on the bar (loss, tokens/s, MFU) or as one printed line."""
        if not self.enabled:
            return
        if "step" in record:
            self.advance(record["step"])
        if self._bar is not None:
            self._bar.set_postfix_str(_postfix(record), refresh=False)
        else:
            print(format_log_line(record, self.total_steps), file=self.file, flush=True)

    def write(self, message: str) -> None:
        """Print a message (an eval result, a warning) without breaking the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            tqdm.write(message, file=self.file)
        else:
            print(message, file=self.file, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> TrainProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
