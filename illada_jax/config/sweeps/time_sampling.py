"""`illada sweep --config=config:time_sampling`: uniform vs antithetic diffusion times (SPEC §7.2),
each with and without iLLaDA's two-segment split (SPEC §3.2), over three seeds.

Every run evaluates the held-out ELBO bound every 50 steps at fixed evaluation seeds, so the arms
are compared on the same masks; `illada_jax.viz.ablation_curves` plots mean ± std over seeds
(notebooks/03_ablations.ipynb). Runs are named `{time}-{split}-s{seed}`; `arm(name)` strips the seed.
"""

from __future__ import annotations

import re

import fiddle as fdl

from illada_jax.config import experiments

TIME_SAMPLINGS = ("uniform", "antithetic")
SPLITS = {"nosplit": "none", "split": "illada_split"}
SEEDS = (0, 1, 2)


def experiment() -> fdl.Config:
    """`config:tiny` for 300 steps with a held-out evaluation every 50."""
    cfg = experiments.tiny()
    cfg.train.steps = 300
    cfg.train.eval_every = 50
    cfg.train.sample_length = 0  # no text samples: this sweep compares ELBO curves only
    return cfg


def sweep() -> dict[str, dict]:
    return {
        f"{time}-{split}-s{seed}": {
            "diffusion.time_sampling": time,
            "diffusion.random_length_mode": mode,
            "train.seed": seed,
        }
        for time in TIME_SAMPLINGS
        for split, mode in SPLITS.items()
        for seed in SEEDS
    }


def arm(run_name: str) -> str:
    """The arm of a run: its name without the seed suffix (`uniform-split-s1` -> `uniform-split`)."""
    return re.sub(r"-s\d+$", "", run_name)
