"""The training input pipeline: deterministic global batches, each process reading its slice.

The global batch of step `s` is a pure function of (seed, s): `Mixture.locate` names the window of
every row, `TokenWindows` reads it. Process p of P owns rows [p·G/P, (p+1)·G/P) of every global
batch, so resuming at step s — with the same or any other number of processes — yields exactly the
batches an uninterrupted run would have seen; the only state to checkpoint is the step.

Reading runs in a grain pipeline over this process's rows (`MapDataset` → `batch` →
`to_iter_dataset` with reader threads and prefetch), so batches are assembled while the
accelerator computes. Output per process: numpy `tokens`, `segment_ids`, `positions`, each
`[per_process_batch, seq_len] int32` (segment id 0 = padding; see `packing.py`).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator, Sequence

import grain
import numpy as np

from illada_jax.data.manifest import MANIFEST
from illada_jax.data.mixture import Mixture
from illada_jax.data.packing import DataError, PreparedDataset, TokenWindows
from illada_jax.storage import default_cache_dir

EMBEDDED = "embedded"  # dataset name: the embedded corpus, prepared on first use into a cache


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    """What the pipeline needs (the runner builds it from `DataConfig` and `TrainConfig`)."""

    datasets: tuple[str, ...]
    weights: tuple[float, ...]
    seq_len: int
    global_batch: int
    seed: int
    document_aware: bool = False
    shuffle: bool = True
    read_threads: int = 4
    # The tokenizer the embedded corpus is prepared with (empty = the shipped default); prepared
    # dataset directories carry their own.
    tokenizer: str = ""


def embedded_dataset_dir(
    split: str = "train",
    cache_dir: str | pathlib.Path | None = None,
    progress: bool = False,
    tokenizer: str = "",
) -> pathlib.Path:
    """The embedded corpus prepared with `tokenizer` (a SentencePiece .model or HF
    tokenizer.json; empty = the shipped default), prepared once into the cache, then reused.
    The cache directory is named after the tokenizer's content hash."""
    from illada_jax.data.prepare import prepare
    from illada_jax.data.tokenizer import Tokenizer

    loaded = Tokenizer.load(tokenizer) if tokenizer else Tokenizer.default()
    identity = loaded.identity.split(":")[-1][:12]
    directory = pathlib.Path(cache_dir or default_cache_dir()) / f"embedded-{identity}" / split
    if not (directory / MANIFEST).is_file():
        prepare([split], "embedded", directory, tokenizer_path=tokenizer or None,
                progress=progress)  # fmt: skip
    return directory


def resolve_dataset(name: str, cache_dir=None, tokenizer: str = "") -> PreparedDataset:
    """A prepared dataset directory, or `embedded` / `embedded:train` / `embedded:heldout`:
    the embedded corpus prepared with `tokenizer` on first use."""
    if name in (EMBEDDED, f"{EMBEDDED}:train"):
        return PreparedDataset(embedded_dataset_dir("train", cache_dir, tokenizer=tokenizer))
    if name == f"{EMBEDDED}:heldout":
        return PreparedDataset(embedded_dataset_dir("heldout", cache_dir, tokenizer=tokenizer))
    return PreparedDataset(name)


class Pipeline:
    """Global batches for a process; see the module docstring for the contract."""

    output_keys = ("tokens", "segment_ids", "positions")

    def __init__(
        self,
        spec: PipelineSpec,
        datasets: Sequence[PreparedDataset] | None = None,
        *,
        process_index: int = 0,
        process_count: int = 1,
        cache_dir=None,
    ):
        if spec.global_batch % process_count:
            raise DataError(
                f"global batch {spec.global_batch} does not divide over "
                f"{process_count} processes; choose a multiple of {process_count}"
            )
        if not 0 <= process_index < process_count:
            raise DataError(f"process_index {process_index} not in [0, {process_count})")
        weights = spec.weights or (1.0,) * len(spec.datasets)
        if len(weights) != len(spec.datasets):
            raise DataError(f"{len(spec.datasets)} datasets but {len(weights)} weights")
        self.spec = spec
        self.datasets = list(
            datasets or [resolve_dataset(n, cache_dir, spec.tokenizer) for n in spec.datasets]
        )
        self.windows = [
            TokenWindows(d, spec.seq_len, document_aware=spec.document_aware) for d in self.datasets
        ]
        self.mixture = Mixture(
            [len(w) for w in self.windows], weights, spec.global_batch, spec.seed, spec.shuffle
        )
        self.process_index, self.process_count = process_index, process_count
        self.per_process_batch = spec.global_batch // process_count

    def check_compatible(self, model_cfg) -> None:
        for dataset in self.datasets:
            dataset.check_compatible(model_cfg)

    def window(self, step: int, row: int) -> dict[str, np.ndarray]:
        """Row `row` of global batch `step`."""
        dataset, window = self.mixture.locate(step, row)
        return self.windows[dataset][window]

    def global_batch(self, step: int) -> dict[str, np.ndarray]:
        """The whole global batch of `step` (for tests and single-process tools)."""
        rows = [self.window(step, r) for r in range(self.spec.global_batch)]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    def process_batch(self, step: int) -> dict[str, np.ndarray]:
        first = self.process_index * self.per_process_batch
        rows = [self.window(step, first + j) for j in range(self.per_process_batch)]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    def _process_row(self, k: int) -> dict[str, np.ndarray]:
        step, j = divmod(k, self.per_process_batch)
        return self.window(step, self.process_index * self.per_process_batch + j)

    def iterator(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """This process's batches for steps start_step, start_step + 1, … (prefetched)."""
        bp = self.per_process_batch
        rows = grain.MapDataset.range(start_step * bp, np.iinfo(np.int64).max // 2)
        batches = rows.map(self._process_row).batch(bp, drop_remainder=True)
        options = grain.ReadOptions(num_threads=self.spec.read_threads, prefetch_buffer_size=4 * bp)
        return iter(batches.to_iter_dataset(options))

    def epochs(self, step: int) -> list[float]:
        return self.mixture.epochs(step)


class LladaSftPipeline:
    """`sft_llada` batches (docs/algorithms.md#sft-llada-style): every (prompt, answer) pair of the
    SFT dialogues, pairs longer than `seq_len` dropped (counted in `dropped`), EOS-padded to a
    static `seq_len`.

    Same determinism contract as `Pipeline`: the pair of row r at step s is a pure function of
    (seed, s, r) (grain's index shuffle, reshuffled per epoch); process p owns its rows.
    Output per process: `tokens [B_p, seq_len] int32`, `prompt_lengths [B_p] int32`.
    """

    output_keys = ("tokens", "prompt_lengths")

    def __init__(
        self,
        source: str,
        seq_len: int,
        global_batch: int,
        seed: int,
        tokenizer,
        *,
        process_index: int = 0,
        process_count: int = 1,
    ):
        from illada_jax.data.sft import (
            ChatFormatter,
            filter_long_pairs,
            llada_pairs,
            load_dialogues,
        )

        if global_batch % process_count:
            raise DataError(
                f"global batch {global_batch} does not divide over {process_count} processes"
            )
        self.tokenizer, self.seq_len = tokenizer, seq_len
        formatter = ChatFormatter(tokenizer)
        self.pairs, self.dropped = filter_long_pairs(
            llada_pairs(load_dialogues(source), formatter), seq_len
        )
        if not self.pairs:
            raise DataError(
                f"{source}: no SFT pair fits train.seq_len={seq_len} "
                f"({self.dropped} dropped); raise train.seq_len"
            )
        self.order = grain.MapDataset.range(len(self.pairs)).shuffle(seed=seed)
        self.global_batch = global_batch
        self.per_process_batch = global_batch // process_count
        self.first_row = process_index * self.per_process_batch

    def check_compatible(self, model_cfg) -> None:
        try:
            self.tokenizer.check_model_config(model_cfg)
        except ValueError as err:
            raise DataError(f"SFT tokenizer does not match the model: {err}") from err

    def process_batch(self, step: int) -> dict[str, np.ndarray]:
        from illada_jax.data.sft import llada_sft_batch

        first = step * self.global_batch + self.first_row
        rows = [self.pairs[self.order[first + j]] for j in range(self.per_process_batch)]
        return llada_sft_batch(rows, self.tokenizer, self.seq_len, pad_multiple=self.seq_len)

    def iterator(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        step = start_step
        while True:
            yield self.process_batch(step)
            step += 1

    def epochs(self, step: int) -> list[float]:
        return [step * self.global_batch / len(self.pairs)]
