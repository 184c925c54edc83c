"""Sweeps: a recipe `NAME` with a `NAME_sweep()` beside it runs with `illada sweep
--config=config:NAME`. `NAME_sweep()` returns the override sets: a list, or a dict keyed by run
name, whose items are either `{"section.field": value}` (applied as `set:` directives) or a list
of directive strings (`"set:train.steps=100"`, `"fiddler:antithetic_time"`).
"""

import re

import fiddle as fdl

from illada_jax.config import experiments


def tiny_lr() -> fdl.Config:
    """The quickstart at two peak learning rates.

    Command:   illada sweep --config=config:tiny_lr --workdir=runs/sweeps/tiny_lr
    Hardware:  2 CPU cores, one run after another (about 3 minutes each).
    Expected:  WORKDIR/summary.md (final loss and held-out bound per run) and loss_curves.png.
    """
    return experiments.tiny()


def tiny_lr_sweep() -> dict[str, dict[str, float]]:
    return {
        "lr-1e-3": {"optim.learning_rate": 1e-3},
        "lr-3e-3": {"optim.learning_rate": 3e-3},
    }


TIME_SAMPLINGS = ("uniform", "antithetic")
SPLITS = {"nosplit": "none", "split": "illada_split"}
SEEDS = (0, 1, 2)


def time_sampling() -> fdl.Config:
    """Uniform vs antithetic diffusion times, each with and without iLLaDA's two-segment split,
    over three seeds (docs/algorithms.md#time-sampling): the quickstart for 300 steps with a
    held-out evaluation every 50, at fixed evaluation seeds so the arms are compared on the same
    masks. notebooks/03_ablations.ipynb plots mean ± std over seeds.

    Command:   illada sweep --config=config:time_sampling --workdir=runs/sweeps/time_sampling
    Hardware:  2 CPU cores, 12 runs of 300 steps one after another.
    Expected:  WORKDIR/summary.md and per-run `eval_nll_bound` curves; antithetic times lower the
               variance of the training loss, not the bound's expectation.
    """
    cfg = experiments.tiny()
    cfg.train.steps = 300
    cfg.train.eval_every = 50
    cfg.train.sample_length = 0  # this sweep compares ELBO curves only
    return cfg


def time_sampling_sweep() -> dict[str, dict]:
    """Runs named `{time}-{split}-s{seed}`; `_arm(name)` strips the seed."""
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


def _arm(run_name: str) -> str:
    """The arm of a run: its name without the seed suffix (`uniform-split-s1` -> `uniform-split`)."""
    return re.sub(r"-s\d+$", "", run_name)
