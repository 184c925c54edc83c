"""On-the-fly seqio datasets: `raw:seqio:TASK_OR_MIXTURE[:SPLIT][,...]` read while training.

The named tasks (a mixture: its tasks in seqio's order, each in full; its rates are not applied,
mix tasks with `data.weights` instead) are read with `sequence_length=None` and each example made
into a document by the rules of `illada prepare --format seqio` (`seqio_source.example_document`:
text features tokenised with our tokenizer, token-id features of our vocabulary used as ids,
others re-tokenised from their `*_pretokenized` text). The rest of the stream (tokenising, packing,
window format, saved positions) is `onthefly.py`'s.

Who reads what: the R = processes × `data.tokenize_workers` readers (one per grain worker; one
per process with no workers) deal every task's examples out, reader r = p + P·w reading examples
r, r + R, r + 2R, … of each task (tf.data `shard`). A reader's position is (epoch, task, examples
of its slice consumed), restored by re-reading the task and skipping that many (tf.data `skip`).
Every epoch reads all tasks again; with `data.shuffle` seqio shuffles each task (its files and a
shuffle buffer) with a seed drawn from (run seed, epoch, task), so the stream stays a pure
function of (seed, process count, worker count).

Each reader imports seqio (so TensorFlow, ~10 s and ~1 GB per grain worker) and
`data.seqio_module`, the module that registers the tasks: grain's workers are fresh processes that
know only the tasks that module registers.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

import grain
import numpy as np

from illada_jax.data.pipeline.mixture import dataset_seed
from illada_jax.data.pipeline.packing import DataError
from illada_jax.data.sources import seqio_source
from illada_jax.data.sources.records import SourceError


@dataclasses.dataclass(frozen=True)
class SeqioSettings:
    """How to find and read the tasks (all picklable: they travel to grain's workers)."""

    specs: tuple[str, ...]  # TASK_OR_MIXTURE[:SPLIT] each
    field: str  # feature(s) making a document, as `--field` of `illada prepare --format seqio`
    tokenizer: str  # our tokenizer's path ("" = the shipped default)
    module: str = ""  # the module that registers the tasks
    data_dir: str = ""  # seqio's TFDS data dir, for tasks that read TFDS

    def resolve(self):
        """(seqio tasks resolved against our tokenizer, our tokenizer). Raises DataError naming
        the fix when a task is unknown or unreadable."""
        from illada_jax.data.tokenizers.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(self.tokenizer) if self.tokenizer else Tokenizer.default()
        try:
            seqio = seqio_source.import_seqio(self.module or None, self.data_dir or None)
            plans = [
                plan
                for spec in self.specs
                for plan in seqio_source.seqio_tasks(seqio, spec, tokenizer, self.field)
            ]
        except ModuleNotFoundError as err:
            raise DataError(
                f"data.seqio_module {self.module!r} cannot be imported ({err}); name an "
                "importable module that registers the tasks"
            ) from err
        except SourceError as err:
            raise DataError(
                f"raw:seqio:{','.join(self.specs)}: {err} (on the fly: data.seqio_module, "
                "data.raw_field, data.tfds_data_dir)"
            ) from err
        return plans, tokenizer


class SeqioExamples(grain.IterDataset):
    """The documents (str, or int32 ids without EOS) of one reader's share of the tasks."""

    def __init__(self, settings: SeqioSettings, process_index: int, process_count: int,
                 seed: int, shuffle: bool):  # fmt: skip
        super().__init__()
        self.settings, self.seed, self.shuffle = settings, seed, shuffle
        self.process_index, self.process_count = process_index, process_count
        self.first, self.step = process_index, process_count  # this reader's examples

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """grain, in worker w of W of `mp_prefetch`: take every W-th of this process's examples
        (interleaved either way: the tasks' lengths are not known up front)."""
        del sequential_slice
        start, step = sl.start or 0, sl.step or 1
        self.first = self.process_index + self.process_count * start
        self.step = self.process_count * step

    def __iter__(self) -> SeqioExamplesIterator:
        return SeqioExamplesIterator(self)


class SeqioExamplesIterator(grain.DatasetIterator):
    def __init__(self, source: SeqioExamples):
        super().__init__()
        self.source = source
        self.epoch, self.task, self.position = 0, 0, 0
        self._plans: Sequence | None = None
        self._tokenizer = None
        self._records = None
        self._documents_in_epoch: int | None = 0  # None: resumed mid-epoch, count unknown
        self._dropped = collections.Counter()  # dropped records (same rules as prepare)

    def _task_records(self):
        plan = self._plans[self.task]
        source = self.source
        seed = dataset_seed(source.seed, self.epoch, self.task) if source.shuffle else None
        dataset = plan.task.get_dataset(sequence_length=None, split=plan.split,
                                        shuffle=source.shuffle, seed=seed, num_epochs=1)  # fmt: skip
        dataset = dataset.shard(source.step, source.first).skip(self.position)
        return dataset.as_numpy_iterator()

    def __next__(self) -> str | np.ndarray:
        if self._plans is None:
            self._plans, self._tokenizer = self.source.settings.resolve()
        while True:
            if self._records is None:
                self._records = self._task_records()
            plan = self._plans[self.task]
            for record in self._records:
                self.position += 1
                document = seqio_source.example_document(plan, record, self._dropped,
                                                         self._tokenizer)  # fmt: skip
                if document is not None:
                    if self._documents_in_epoch is not None:
                        self._documents_in_epoch += 1
                    return document
            self.task, self.position, self._records = self.task + 1, 0, None
            if self.task < len(self._plans):
                continue
            if self._documents_in_epoch == 0:  # the tasks repeat forever: fail, do not spin
                raise DataError(
                    f"raw:seqio:{','.join(self.source.settings.specs)}: reader {self.source.first}"
                    f" of {self.source.step} found no document in a whole epoch (tasks with "
                    f"fewer examples than the {self.source.step} readers, all dropped: "
                    f"{dict(self._dropped)}, or data.raw_field naming an empty feature); lower "
                    "data.tokenize_workers or check the tasks"
                )
            self.epoch, self.task, self._documents_in_epoch = self.epoch + 1, 0, 0

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "task": self.task, "position": self.position}

    def set_state(self, state: dict) -> None:
        self.epoch, self.task = int(state["epoch"]), int(state["task"])
        self.position, self._records = int(state["position"]), None
        self._documents_in_epoch = None
