"""`illada sweep --config=config:tiny_lr`: the tiny experiment at two peak learning rates."""

from __future__ import annotations

import fiddle as fdl

from illada_jax.config import experiments


def experiment() -> fdl.Config:
    """The base of every run: `config:tiny`."""
    return experiments.tiny()


def sweep() -> dict[str, dict[str, float]]:
    """One run per learning rate, named after it."""
    return {
        "lr-1e-3": {"optim.learning_rate": 1e-3},
        "lr-3e-3": {"optim.learning_rate": 3e-3},
    }
