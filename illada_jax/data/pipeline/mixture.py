"""Which window fills each row of each global batch: mixtures, epochs and the global shuffle.

Exact proportions: each global batch of G rows gives dataset i exactly `counts[i]` rows, the
largest-remainder rounding of `G · w_i` (so within one row of `G · w_i` in every batch, not only on
average). grain's own mixing interleaves by index and is exact only over whole weight periods, hence
this small allocator.

Order: dataset i's k-th sample is window `order_i[k]`, where `order_i` is grain's index shuffle
(a Feistel permutation, O(1) memory) reseeded every epoch (`k // len_i`); rows are then permuted
within the batch so processes see a mix of datasets. Everything is a pure function of
(seed, step, row): any process can compute its rows of any step without state or communication.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import grain
import numpy as np


def batch_allocation(weights: Sequence[float], global_batch: int) -> np.ndarray:
    """Rows per dataset in every global batch: int [n_datasets], sums to `global_batch`."""
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or len(w) == 0 or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(
            f"mixture weights {list(weights)} must be non-negative with a positive sum"
        )
    exact = w / w.sum() * global_batch
    counts = np.floor(exact).astype(np.int64)
    remainder_order = np.argsort(-(exact - counts), kind="stable")
    counts[remainder_order[: global_batch - counts.sum()]] += 1
    return counts


def dataset_seed(seed: int, index: int, *more: int) -> int:
    """A 32-bit shuffle seed per (run seed, dataset, …), as grain requires."""
    return int(np.random.SeedSequence([seed, index, *more]).generate_state(1)[0])


class Mixture:
    """Maps (step, global row) -> (dataset index, window index).

    A dataset of length None is a stream (read in order): its rows are allocated the same way,
    its window index is just its running sample count."""

    def __init__(
        self,
        lengths: Sequence[int | None],
        weights: Sequence[float],
        global_batch: int,
        seed: int,
        shuffle: bool = True,
    ):
        if len(lengths) != len(weights):
            raise ValueError(f"{len(lengths)} datasets but {len(weights)} weights")
        self.lengths = [None if n is None else int(n) for n in lengths]
        self.counts = batch_allocation(weights, global_batch)
        self.first_row = np.concatenate([[0], np.cumsum(self.counts)])
        self.global_batch = global_batch
        self.seed = seed
        self.shuffle = shuffle
        self._orders = [
            grain.MapDataset.range(n).shuffle(seed=dataset_seed(seed, i))
            if shuffle and n is not None
            else None
            for i, n in enumerate(self.lengths)
        ]

    @functools.lru_cache(maxsize=64)  # noqa: B019 -- a few recent steps, per instance
    def _row_permutation(self, step: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.global_batch)
        return np.random.default_rng([self.seed, step]).permutation(self.global_batch)

    def locate(self, step: int, row: int) -> tuple[int, int]:
        slot = int(self._row_permutation(step)[row])
        dataset = int(np.searchsorted(self.first_row, slot, side="right")) - 1
        sample = step * int(self.counts[dataset]) + slot - int(self.first_row[dataset])
        n = self.lengths[dataset]
        if n is None:
            return dataset, sample
        window = self._orders[dataset][sample] if self.shuffle else sample % n
        return dataset, int(window)

    def epochs(self, step: int) -> list[float | None]:
        """Epochs of each dataset consumed before `step` (None for streams)."""
        return [None if n is None else step * int(c) / n for c, n in zip(self.counts, self.lengths)]
