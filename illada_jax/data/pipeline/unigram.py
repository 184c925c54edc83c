"""The unigram baseline: what a model that knows only token frequencies scores on held-out data.

`unigram_baseline(train_sets, weights, heldout)` counts the tokens of the training datasets (each
with add-one smoothing over the vocabulary, mixed with the data weights), then scores the
held-out dataset's tokens with those probabilities: nats per token, the same unit as the held-out
ELBO bound. A masked-diffusion model whose bound is not below this has learned nothing but the
token frequencies (its samples are then rows of the most frequent pieces).

Counting reads at most `cap` tokens of each dataset, in shard order, so the cost stays small
(about a second per 10M tokens) whatever the dataset's size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from illada_jax.data.pipeline.packing import PreparedDataset

UNIGRAM_TOKEN_CAP = 20_000_000


def token_counts(dataset: PreparedDataset, cap: int = UNIGRAM_TOKEN_CAP) -> np.ndarray:
    """float64 [vocab]: occurrences of each token id in the first `cap` tokens of `dataset`."""
    counts = np.zeros(dataset.vocab_size, np.float64)
    remaining = cap
    for shard, size in enumerate(dataset.shard_tokens):
        take = int(min(size, remaining))
        if take <= 0:
            break
        tokens, _ = dataset.read(shard, 0, take)
        counts += np.bincount(tokens, minlength=dataset.vocab_size)[: dataset.vocab_size]
        remaining -= take
    return counts


def unigram_baseline(
    train_sets: Sequence[PreparedDataset],
    weights: Sequence[float],
    heldout: PreparedDataset,
    cap: int = UNIGRAM_TOKEN_CAP,
) -> float:
    """Held-out nats per token under the smoothed unigram distribution of `train_sets`."""
    weights = np.asarray(weights or [1.0] * len(train_sets), np.float64)
    weights = weights / weights.sum()
    probs = np.zeros(heldout.vocab_size, np.float64)
    for dataset, weight in zip(train_sets, weights):
        counts = token_counts(dataset, cap)
        probs += weight * (counts + 1.0) / (counts.sum() + len(counts))
    heldout_counts = token_counts(heldout, cap)
    return float(-(heldout_counts * np.log(probs)).sum() / max(heldout_counts.sum(), 1.0))
