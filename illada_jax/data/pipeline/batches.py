"""The training input pipeline: deterministic global batches, each process reading its slice.

The global batch of step `s` is a pure function of (seed, s): `Mixture.locate` names the window of
every row, `TokenWindows` reads it. Process p of P owns rows [p·G/P, (p+1)·G/P) of every global
batch, so resuming at step s — with the same or any other number of processes — yields exactly the
batches an uninterrupted run would have seen; the only state to checkpoint is the step.

Reading runs in a grain pipeline over this process's rows (`MapDataset` → `batch` →
`to_iter_dataset` with reader threads and prefetch), so batches are assembled while the
accelerator computes. Output per process: numpy `tokens`, `segment_ids`, `positions`, each
`[per_process_batch, seq_len] int32` (segment id 0 = padding; see `packing.py`).

On-the-fly datasets (`raw:FORMAT:PATHS`, `onthefly.py`) take part in the same mixture: the rows
each one fills in every batch are still a pure function of (seed, step), so proportions stay
exact, but their windows are read in order from a stream (raw files tokenised while training).
Such a pipeline's iterator (`StreamBatches`) therefore has a position beyond the step: grain's
iterator state of every stream, saved in checkpoints (`state()`) and given back to `iterator`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from collections.abc import Iterator, Sequence

import grain
import numpy as np

from illada_jax.data.pipeline import onthefly
from illada_jax.data.pipeline.mixture import Mixture, dataset_seed
from illada_jax.data.pipeline.packing import DataError, PreparedDataset, TokenWindows
from illada_jax.data.preparation.manifest import MANIFEST
from illada_jax.storage import default_cache_dir

log = logging.getLogger(__name__)

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
    # The tokenizer the embedded corpus is prepared with and on-the-fly datasets are tokenised
    # with (empty = the shipped default); prepared dataset directories carry their own.
    tokenizer: str = ""
    # On-the-fly datasets: the jsonl field / parquet column, text documents per file or block,
    # and the tokeniser worker processes per stream (0 = in the reading thread).
    raw_field: str = "text"
    raw_text_unit: str = "file"
    tokenize_workers: int = 2
    # raw:seqio: datasets: the module registering the tasks, seqio's TFDS data dir.
    seqio_module: str = ""
    tfds_data_dir: str = ""


def embedded_dataset_dir(
    split: str = "train",
    cache_dir: str | pathlib.Path | None = None,
    progress: bool = False,
    tokenizer: str = "",
) -> pathlib.Path:
    """The embedded corpus prepared with `tokenizer` (a SentencePiece .model or HF
    tokenizer.json; empty = the shipped default), prepared once into the cache, then reused.
    The cache directory is named after the tokenizer's content hash."""
    from illada_jax.data.preparation.prepare import prepare
    from illada_jax.data.tokenizers.tokenizer import Tokenizer

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
        self.datasets = list(datasets or [self._open(n, cache_dir) for n in spec.datasets])
        self.windows = [
            TokenWindows(d, spec.seq_len, document_aware=spec.document_aware)
            if isinstance(d, PreparedDataset)
            else None  # an on-the-fly stream: read in order, not by index
            for d in self.datasets
        ]
        self.streams = [i for i, w in enumerate(self.windows) if w is None]
        self.mixture = Mixture(
            [None if w is None else len(w) for w in self.windows],
            weights,
            spec.global_batch,
            spec.seed,
            spec.shuffle,
        )
        self.process_index, self.process_count = process_index, process_count
        self.per_process_batch = spec.global_batch // process_count

    def _open(self, name: str, cache_dir) -> PreparedDataset | onthefly.RawStream:
        spec = self.spec
        if not onthefly.is_raw(name):
            return resolve_dataset(name, cache_dir, spec.tokenizer)
        return onthefly.RawStream(
            name,
            seq_len=spec.seq_len,
            document_aware=spec.document_aware,
            tokenizer=spec.tokenizer,
            field=spec.raw_field,
            text_unit=spec.raw_text_unit,
            workers=spec.tokenize_workers,
            shuffle=spec.shuffle,
            seqio_module=spec.seqio_module,
            tfds_data_dir=spec.tfds_data_dir,
        )

    def check_compatible(self, model_cfg) -> None:
        for dataset in self.datasets:
            dataset.check_compatible(model_cfg)

    def window(self, step: int, row: int) -> dict[str, np.ndarray]:
        """Row `row` of global batch `step`."""
        dataset, window = self.mixture.locate(step, row)
        if self.windows[dataset] is None:
            raise DataError(
                f"{self.spec.datasets[dataset]} is read on the fly, in order: its rows come "
                "from iterator(), not by step"
            )
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

    def _mixed_row(self, k: int) -> dict[str, np.ndarray]:
        """A prepared row as `_process_row`, or for a stream's row an empty placeholder; the
        `stream` key names the dataset filling it (-1: already filled)."""
        step, j = divmod(k, self.per_process_batch)
        dataset, window = self.mixture.locate(step, self.process_index * self.per_process_batch + j)
        if self.windows[dataset] is not None:
            return {**self.windows[dataset][window], "stream": np.int32(-1)}
        empty = np.zeros(self.spec.seq_len, np.int32)
        return {key: empty for key in self.output_keys} | {"stream": np.int32(dataset)}

    def _row_batches(self, start_step: int, row_fn) -> Iterator[dict[str, np.ndarray]]:
        bp = self.per_process_batch
        rows = grain.MapDataset.range(start_step * bp, np.iinfo(np.int64).max // 2)
        batches = rows.map(row_fn).batch(bp, drop_remainder=True)
        options = grain.ReadOptions(num_threads=self.spec.read_threads, prefetch_buffer_size=4 * bp)
        return iter(batches.to_iter_dataset(options))

    def iterator(
        self, start_step: int = 0, state: str | None = None
    ) -> Iterator[dict[str, np.ndarray]]:
        """This process's batches for steps start_step, start_step + 1, … (prefetched).

        With on-the-fly datasets: a `StreamBatches`, resumed at `state` (its `state()` saved
        at `start_step`) when given."""
        if not self.streams:
            return self._row_batches(start_step, self._process_row)
        return StreamBatches(self, start_step, state)

    def stream_identity(self) -> dict:
        """What a saved on-the-fly position is only valid for: the process and worker counts,
        the streams' files (a hash of the expanded list: new files under a glob move every
        position) and every setting that changes their windows."""
        import hashlib

        spec = self.spec
        files = [self.datasets[i].files for i in self.streams]
        settings = [spec.seed, spec.shuffle, spec.seq_len, spec.document_aware, spec.tokenizer,
                    spec.raw_field, spec.raw_text_unit, spec.seqio_module,
                    spec.tfds_data_dir]  # fmt: skip
        digest = hashlib.sha256(json.dumps([files, settings]).encode()).hexdigest()[:16]
        return {
            "process_count": self.process_count,
            "tokenize_workers": spec.tokenize_workers,
            "datasets": [spec.datasets[i] for i in self.streams],
            "inputs": digest,
        }

    def epochs(self, step: int) -> list[float | None]:
        """Epochs of each dataset consumed before `step` (None for on-the-fly datasets)."""
        return self.mixture.epochs(step)


class StreamBatches:
    """The batches of a pipeline with on-the-fly datasets (see the module docstring).

    Prepared rows come from grain by step as in `Pipeline`; each stream's rows are filled, in
    row order, with that stream's next windows. `state()` is a JSON string: the step, the
    process and worker counts, the inputs' identity and every stream's grain iterator state. A
    state saved for other counts, files or settings (or none, past step 0) cannot place them:
    they start at a fresh shuffle of their files, seeded by this step, and a warning says so."""

    def __init__(self, pipeline: Pipeline, start_step: int, state: str | None):
        self.pipeline, self.step = pipeline, start_step
        saved = json.loads(state) if state else None
        here = pipeline.stream_identity()
        if saved is not None and {k: saved.get(k) for k in here} == here:
            if saved["step"] != start_step:
                raise DataError(
                    f"on-the-fly data position saved at step {saved['step']} given for step "
                    f"{start_step}"
                )
            self.reshard_step = int(saved["reshard_step"])
        else:
            self.reshard_step = start_step
            if saved is not None or start_step:
                log.warning(
                    "on-the-fly datasets %s: no saved position for this run's %s at step %d "
                    "(saved: %s); their streams start over at a fresh shuffle of their files, "
                    "so documents read before may be read again",
                    here["datasets"], here, start_step, saved and {k: saved.get(k) for k in here},
                )  # fmt: skip
            saved = None
        self.streams = {}
        for position, index in enumerate(pipeline.streams):
            seed = dataset_seed(pipeline.spec.seed, index, self.reshard_step)
            windows = pipeline.datasets[index].windows(
                pipeline.process_index, pipeline.process_count, seed
            )
            iterator = iter(windows)
            if saved is not None:
                iterator.set_state(saved["streams"][position])
            self.streams[index] = iterator
        self.rows = pipeline._row_batches(start_step, pipeline._mixed_row)

    def __iter__(self) -> StreamBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self.rows)
        stream = batch.pop("stream")
        for row in np.flatnonzero(stream >= 0):
            window = next(self.streams[int(stream[row])])
            for key in self.pipeline.output_keys:
                batch[key][row] = window[key]
        self.step += 1
        return batch

    def state(self) -> str:
        """The position after the batches returned so far (JSON)."""
        return json.dumps(
            {
                "step": self.step,
                "reshard_step": self.reshard_step,
                **self.pipeline.stream_identity(),
                "streams": [self.streams[i].get_state() for i in self.pipeline.streams],
            }
        )

    def close(self) -> None:
        self.rows.close()
        for iterator in self.streams.values():
            iterator.close()


class StepIndexedPipeline:
    """A pipeline of `pairs` whose step is its whole data position: `process_batch(step)` is a
    pure function of (seed, step), so it needs no iterator state in checkpoints."""

    def iterator(self, start_step: int = 0, state: None = None) -> Iterator[dict[str, np.ndarray]]:
        """Batches from `start_step` on (`state`: always None, the step is the whole position)."""
        step = start_step
        while True:
            yield self.process_batch(step)
            step += 1

    def epochs(self, step: int) -> list[float]:
        return [step * self.global_batch / len(self.pairs)]


class LladaSftPipeline(StepIndexedPipeline):
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
        from illada_jax.data.chat.sft import (
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
        from illada_jax.data.chat.sft import llada_sft_batch

        first = step * self.global_batch + self.first_row
        rows = [self.pairs[self.order[first + j]] for j in range(self.per_process_batch)]
        return llada_sft_batch(rows, self.tokenizer, self.seq_len, pad_multiple=self.seq_len)
