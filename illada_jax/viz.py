"""Figures for notebooks and reports (matplotlib): training curves, the reverse process of one
sample, and held-out ELBO curves of an ablation with error bars over seeds.

Each function draws into new axes and returns the matplotlib `Figure` (saved to `path` when one
is given), so notebooks show it inline and scripts can write PNGs. Nothing here imports
matplotlib until a function is called.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import numpy as np


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def _finish(figure, path):
    figure.tight_layout()
    if path is not None:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)
    return figure


def training_curves(records: Sequence[dict], title: str = "", path=None):
    """Training loss (per logged step), the held-out ELBO bound (per eval step) and, when the run
    logged it, the unigram baseline the bound must go below (a dashed line), nats/token.

    records: the run's `metrics.jsonl` rows (`illada_jax.read_metrics(workdir)`).
    """
    plt = _pyplot()
    train = [(r["step"], r["loss"]) for r in records if "loss" in r and "event" not in r]
    held = [(r["step"], r["eval_nll_bound"]) for r in records if "eval_nll_bound" in r]
    if not train:
        raise ValueError("no training losses in these records (is it the right metrics.jsonl?)")
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(*zip(*train), label="training loss (1/t-weighted masked CE)")
    if held:
        axes.plot(*zip(*held), "o-", label="held-out ELBO bound")
    baselines = [r["unigram_baseline_nats"] for r in records if "unigram_baseline_nats" in r]
    if baselines:
        axes.axhline(baselines[-1], color="grey", ls="--", label="unigram baseline (held-out)")
    axes.set(xlabel="step", ylabel="nats / token", title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    return _finish(figure, path)


def _token_label(tokenizer, token: int, mask_id: int) -> str:
    if token == mask_id:
        return "[M]"
    if tokenizer is None:
        return str(token)
    return tokenizer.piece(int(token)).replace("▁", "␣")


def reverse_process(trace, tokenizer=None, row: int = 0, per_line: int = 16, title: str = "",
                    path=None):  # fmt: skip
    """One sample being unmasked (a `GenerationTrace` from `Model.trace`).

    Top: the generated positions (x) at every step (y): still masked (light grey) or committed,
    coloured by the step at which they were committed, so blocks filling left to right (or all
    at once, for pure diffusion) are visible. Bottom: the final tokens in reading order, each box
    coloured by its commit step, with the sampler's confidence when it was committed.
    """
    plt = _pyplot()
    start = trace.prompt_length
    steps = trace.commit_step[row, start:]
    conf = trace.confidence[row, start:]
    tokens = trace.ids[row, start:]
    n_steps, length = trace.num_steps, len(tokens)
    committed_by = np.where(
        steps[None, :] <= np.arange(n_steps)[:, None], steps[None, :], np.nan
    )  # [steps, G]
    cmap = plt.get_cmap("viridis").with_extremes(bad="#e6e6e6")  # grey = still masked
    n_lines = -(-length // per_line)
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(min(2 + 0.75 * per_line, 16), 3 + 0.6 * n_lines + 0.04 * n_steps),
        gridspec_kw={"height_ratios": [2.5, max(1.0, 0.6 * n_lines)]},
    )  # fmt: skip
    image = top.imshow(
        np.ma.masked_invalid(committed_by), aspect="auto", cmap=cmap, vmin=0,
        vmax=max(n_steps - 1, 1), interpolation="nearest",
    )  # fmt: skip
    top.set(xlabel="generated position", ylabel="step", title=title or "reverse process")
    for boundary in range(trace.block_length, length, trace.block_length):
        top.axvline(boundary - 0.5, color="white", lw=1)
    figure.colorbar(image, ax=top, label="step committed")
    bottom.set_axis_off()
    bottom.set_xlim(0, per_line)
    bottom.set_ylim(n_lines, 0)
    norm = plt.Normalize(0, max(n_steps - 1, 1))
    for i, token in enumerate(tokens):
        line, col = divmod(i, per_line)
        colour = cmap(norm(steps[i]))
        bottom.add_patch(
            plt.Rectangle((col + 0.04, line + 0.08), 0.92, 0.84, color=colour, alpha=0.85)
        )
        text_colour = "white" if norm(steps[i]) < 0.6 else "black"
        label = _token_label(tokenizer, int(token), trace.mask_id)
        bottom.text(col + 0.5, line + 0.42, label, ha="center", va="center", fontsize=8,
                    color=text_colour, clip_on=True)  # fmt: skip
        if np.isfinite(conf[i]):
            bottom.text(col + 0.5, line + 0.78, f"{conf[i]:.2f}", ha="center", va="center",
                        fontsize=6, color=text_colour)  # fmt: skip
    return _finish(figure, path)


def ablation_curves(curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]],
                    ylabel: str = "held-out ELBO bound (nats/token)", title: str = "",
                    path=None):  # fmt: skip
    """Mean ± one standard deviation over seeds, one line per arm.

    curves: arm name -> one [(step, value), ...] list per seed (all seeds at the same steps).
    Returns the figure; `summary(curves)` gives the numbers.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for arm, (steps, mean, std, n) in summary(curves).items():
        axes.errorbar(steps, mean, yerr=std, capsize=3, marker="o", ms=3,
                      label=f"{arm} (n={n})")  # fmt: skip
    axes.set(xlabel="step", ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    return _finish(figure, path)


def summary(curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]]):
    """arm -> (steps [S], mean [S], sample std [S] (0 for one seed), number of seeds)."""
    out = {}
    for arm, runs in curves.items():
        runs = [list(run) for run in runs if run]
        if not runs:
            continue
        steps = [s for s, _ in runs[0]]
        if any([s for s, _ in run] != steps for run in runs):
            raise ValueError(f"{arm}: the seeds were evaluated at different steps")
        values = np.array([[v for _, v in run] for run in runs], np.float64)
        std = values.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(len(steps))
        out[arm] = (np.array(steps), values.mean(axis=0), std, len(runs))
    return out
