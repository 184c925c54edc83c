"""Benchmark evaluation through lm-evaluation-harness (docs/algorithms.md#lm-evaluation-harness;
needs the `eval` extra).

- `harness.py`: the lm-eval model `illada` (`IlladaLM`) and `run_tasks(model, tasks, ...)`.
- `tasks/`: small offline task definitions made by this project (`illada_offline` tag).

`run_tasks` and `IlladaLM` are imported on first use, so `import illada_jax.eval` works without
lm-eval; using them without it raises an ImportError naming `pip install "illada-jax[eval]"`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["IlladaLM", "run_tasks"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from illada_jax.eval import harness

        return getattr(harness, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
