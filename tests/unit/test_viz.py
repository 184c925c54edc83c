"""`illada_jax.viz`: the numbers behind the figures (mean ± std over seeds, the unmasking map)."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from illada_jax import viz  # noqa: E402
from illada_jax.sampling.trace import GenerationTrace  # noqa: E402

CURVES = {
    "uniform": [[(10, 7.0), (20, 6.0)], [(10, 7.5), (20, 6.5)], [(10, 6.5), (20, 5.0)]],
    "antithetic": [[(10, 7.25), (20, 6.25)]],
}


def test_summary_is_the_mean_and_sample_std_over_seeds():
    stats = viz.summary(CURVES)
    steps, mean, std, n = stats["uniform"]
    assert n == 3 and steps.tolist() == [10, 20]
    for j, values in enumerate([[7.0, 7.5, 6.5], [6.0, 6.5, 5.0]]):
        mu = sum(values) / 3
        sd = math.sqrt(sum((v - mu) ** 2 for v in values) / 2)  # n - 1
        assert mean[j] == pytest.approx(mu, abs=1e-12) and std[j] == pytest.approx(sd, abs=1e-12)
    steps, mean, std, n = stats["antithetic"]
    assert n == 1 and mean.tolist() == [7.25, 6.25] and std.tolist() == [0.0, 0.0]


def test_seeds_evaluated_at_different_steps_are_refused():
    with pytest.raises(ValueError, match="uniform: the seeds were evaluated at different steps"):
        viz.summary({"uniform": [[(10, 1.0)], [(20, 1.0)]]})


def test_ablation_figure_has_one_errorbar_line_per_arm(tmp_path):
    figure = viz.ablation_curves(CURVES, path=tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert len(figure.axes[0].containers) == 2  # one errorbar container per arm
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert labels == ["uniform (n=3)", "antithetic (n=1)"]


def test_reverse_process_map_shows_each_position_from_its_commit_step():
    """Top panel: cell (step s, position i) holds i's commit step once s >= it, else masked."""
    prompt, gen, steps = 2, 4, 3
    commit = np.array([[-1, -1, 1, 0, 2, 1]])
    canvases = np.full((steps + 1, 1, prompt + gen), 9)
    for s in range(steps + 1):
        canvases[s, 0, prompt:] = np.where(
            (commit[0, prompt:] < s) & (commit[0, prompt:] >= 0), 20, 9
        )
    trace = GenerationTrace(
        ids=canvases[-1], canvases=canvases, commit_step=commit,
        confidence=np.where(commit >= 0, 0.5, np.nan), prompt_length=prompt, block_length=2,
        mask_id=9,
    )  # fmt: skip
    figure = viz.reverse_process(trace)
    shown = figure.axes[0].images[0].get_array()
    for s in range(steps):
        for i in range(gen):
            c = commit[0, prompt + i]
            if c <= s:
                assert shown[s, i] == c and not np.ma.is_masked(shown[s, i])
            else:
                assert np.ma.is_masked(shown[s, i])
    labels = [t.get_text() for t in figure.axes[1].texts]
    assert labels.count("20") == gen and labels.count("0.50") == gen  # no tokenizer: the ids


def test_training_curves_need_losses():
    with pytest.raises(ValueError, match="no training losses"):
        viz.training_curves([{"step": 1, "eval_nll_bound": 3.0}])
    figure = viz.training_curves([{"step": 1, "loss": 9.0}, {"step": 2, "loss": 8.0},
                                  {"step": 2, "eval_nll_bound": 8.5}])  # fmt: skip
    lines = figure.axes[0].get_lines()
    assert [line.get_ydata().tolist() for line in lines] == [[9.0, 8.0], [8.5]]


def test_training_curves_draw_the_unigram_baseline_when_logged():
    records = [
        {"step": 0, "unigram_baseline_nats": 5.9},
        {"step": 10, "loss": 7.0},
        {"step": 20, "loss": 6.0},
        {"step": 20, "eval_nll_bound": 6.1},
    ]
    axes = viz.training_curves(records).axes[0]
    labels = [line.get_label() for line in axes.get_lines()]
    assert labels[-1] == "unigram baseline (held-out)"
    assert list(axes.get_lines()[-1].get_ydata()) == [5.9, 5.9]
    without = viz.training_curves(records[1:]).axes[0]
    assert "unigram baseline (held-out)" not in [line.get_label() for line in without.get_lines()]
