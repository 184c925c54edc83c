"""Preference batches for objective=vrpo (docs/algorithms.md#preference-optimisation-vrpo).

Reads a prepared preference dataset (`illada prepare --format pref`); pairs whose prompt plus
longer answer exceed `seq_len` are dropped and counted (`dropped`), as SFT drops over-long pairs.
The same determinism contract as `Pipeline`: the pair of row r at step s is a pure function of
(seed, s, r) (grain's index shuffle, reshuffled per epoch), and process p owns rows
[p·G/P, (p+1)·G/P) of every global batch, so the step is the whole data position.

Output per process, rows `[prompt, answer, pad...]` padded with EOS to a static `seq_len`:
`chosen`, `rejected [B_p, seq_len] int32`; `prompt_lengths`, `chosen_lengths`,
`rejected_lengths [B_p] int32`.
"""

from __future__ import annotations

import grain
import numpy as np

from illada_jax.data.pipeline.batches import StepIndexedPipeline
from illada_jax.data.pipeline.packing import DataError


class PreferencePipeline(StepIndexedPipeline):
    output_keys = ("chosen", "rejected", "prompt_lengths", "chosen_lengths", "rejected_lengths")

    def __init__(self, dataset: str, seq_len: int, global_batch: int, seed: int, *,
                 process_index: int = 0, process_count: int = 1):  # fmt: skip
        from illada_jax.data.preparation.post_training import load_pref_arrays
        from illada_jax.data.preparation.prepare import PrepareError

        if global_batch % process_count:
            raise DataError(
                f"global batch {global_batch} does not divide over {process_count} processes"
            )
        try:
            self.tokens, offsets, self.manifest = load_pref_arrays(dataset)
        except PrepareError as error:
            raise DataError(str(error)) from None
        self.dataset, self.seq_len = dataset, seq_len
        lengths = np.diff(offsets, axis=1)  # [N, 3]: prompt, chosen, rejected
        fits = lengths[:, 0] + lengths[:, 1:].max(axis=1) <= seq_len
        self.pairs = offsets[fits]  # [N', 4] offsets of the pairs that fit
        self.dropped = int((~fits).sum())
        if not len(self.pairs):
            raise DataError(f"{dataset}: no preference pair fits train.seq_len={seq_len} "
                            f"({self.dropped} dropped); raise train.seq_len")  # fmt: skip
        self.order = grain.MapDataset.range(len(self.pairs)).shuffle(seed=seed)
        self.global_batch = global_batch
        self.per_process_batch = global_batch // process_count
        self.first_row = process_index * self.per_process_batch
        self.eos_id = int(self.manifest["tokenizer"]["special_ids"]["eos"])

    def check_compatible(self, model_cfg) -> None:
        """Refuse pairs tokenised for another vocabulary or with other special ids."""
        from illada_jax.data.preparation.post_training import check_tokenizer

        check_tokenizer(self.manifest, model_cfg, self.dataset, DataError)

    def process_batch(self, step: int) -> dict[str, np.ndarray]:
        rows = self.per_process_batch
        batch = {key: np.zeros((rows,), np.int32) for key in self.output_keys}
        for side in ("chosen", "rejected"):
            batch[side] = np.full((rows, self.seq_len), self.eos_id, np.int32)
        first = step * self.global_batch + self.first_row
        for row in range(rows):
            start, chosen, rejected, end = self.pairs[self.order[first + row]]
            prompt = self.tokens[start:chosen]
            batch["prompt_lengths"][row] = len(prompt)
            for side, (a, b) in (("chosen", (chosen, rejected)), ("rejected", (rejected, end))):
                batch[side][row, : len(prompt)] = prompt
                batch[side][row, len(prompt) : len(prompt) + b - a] = self.tokens[a:b]
                batch[f"{side}_lengths"][row] = b - a
        return batch
