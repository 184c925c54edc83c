"""On-the-fly seqio datasets (`raw:seqio:TASK[:SPLIT]`): real seqio tasks, registered by a module
written here (grain's worker processes import it), read while training. Checked against an
independent reference (SentencePiece run directly on the lines, concatenated and cut by hand), for
how the readers (processes × workers) share the examples, determinism, resume from the saved
position, and clear errors. Skipped without the [seqio] extra (TensorFlow: ~10 s per process)."""

from __future__ import annotations

import collections
import json
import sys
import textwrap
import uuid

import numpy as np
import pytest
import sentencepiece as spm

from illada_jax.data.pipeline.batches import Pipeline, PipelineSpec
from illada_jax.data.pipeline.onthefly import RawStream
from illada_jax.data.pipeline.packing import DataError
from illada_jax.data.pipeline.seqio_stream import SeqioExamples
from illada_jax.data.sources.corpus import embedded_documents
from illada_jax.data.tokenizers.tokenizer import Tokenizer

seqio = pytest.importorskip("seqio")

SEQ = 64
TOK = Tokenizer.default()  # the task's SentencePiece model is the same file: ids are used as is
SP = spm.SentencePieceProcessor(model_file=str(TOK.path))

_MODULE = '''
"""Registers {name}_ids (tokenised with our model) and {name}_text (text only) over {path}."""
import functools

import seqio

_SOURCE = seqio.TextLineDataSource({{"train": {path!r}}})


def _targets(dataset):
    return dataset.map(lambda line: {{"targets": line}})


_VOCAB = seqio.SentencePieceVocabulary({model!r})
seqio.TaskRegistry.add(
    "{name}_ids",
    source=_SOURCE,
    preprocessors=[_targets, functools.partial(seqio.preprocessors.tokenize,
                   copy_pretokenized=True), seqio.preprocessors.append_eos],
    output_features={{"targets": seqio.Feature(_VOCAB, add_eos=True)}},
)
seqio.TaskRegistry.add("{name}_text", source=_SOURCE, preprocessors=[_targets],
                       output_features={{}})
'''


def _lines() -> list[str]:
    """40 one-line documents and an empty line (dropped both as text and as ids)."""
    texts = [" ".join(d.text.split())[:400] for d, _ in zip(embedded_documents("train"), range(40))]
    return texts[:7] + [""] + texts[7:]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """(module name, task name prefix): a module on sys.path registering two tasks."""
    directory = tmp_path_factory.mktemp("seqio_tasks")
    lines = directory / "lines.txt"
    lines.write_text("\n".join(_lines()) + "\n")
    module = f"illada_test_tasks_{uuid.uuid4().hex[:8]}"
    (directory / f"{module}.py").write_text(
        textwrap.dedent(_MODULE.format(name=module, path=str(lines), model=str(TOK.path)))
    )
    sys.path.insert(0, str(directory))  # spawned grain workers start with this sys.path
    yield module, module
    sys.path.remove(str(directory))
    for suffix in ("ids", "text"):
        if f"{module}_{suffix}" in seqio.TaskRegistry.names():
            seqio.TaskRegistry.remove(f"{module}_{suffix}")


def _documents() -> list[list[int]]:
    """The reference documents: SentencePiece on each non-empty line, EOS appended."""
    return [SP.encode(line) + [TOK.eos_id] for line in _lines() if line]


@pytest.mark.parametrize("kind", ["ids", "text"])
def test_windows_are_the_task_documents_concatenated_and_cut(tasks, kind):
    """One process, no workers, unshuffled: window k is tokens [k·L, (k+1)·L) of the stream of
    the task's documents, then the task repeats."""
    module, name = tasks
    stream = RawStream(f"raw:seqio:{name}_{kind}:train", seq_len=SEQ, document_aware=False,
                       workers=0, shuffle=False, seqio_module=module, field="targets")  # fmt: skip
    reference = np.concatenate([np.asarray(d) for d in _documents()])
    iterator = iter(stream.windows(0, 1, seed=0))
    n = len(reference) // SEQ
    for k in range(n):
        np.testing.assert_array_equal(next(iterator)["tokens"], reference[k * SEQ : (k + 1) * SEQ])
    rest = len(reference) - n * SEQ
    np.testing.assert_array_equal(next(iterator)["tokens"][rest:], reference[: SEQ - rest])
    iterator.close()


def _reader_epoch(settings, process: int, processes: int, worker: int, workers: int, epoch: int):
    """The documents one reader yields in `epoch` (as tuples of ids, EOS appended)."""
    source = SeqioExamples(settings, process, processes, seed=5, shuffle=True)
    source.set_slice(slice(worker, None, workers))
    iterator, documents = iter(source), []
    while True:
        document = next(iterator)
        if iterator.get_state()["epoch"] > epoch:
            return documents
        if iterator.get_state()["epoch"] == epoch:
            ids = TOK.encode(document) if isinstance(document, str) else document.tolist()
            documents.append((*ids, TOK.eos_id))


def test_readers_share_every_epoch_exactly_and_reshuffle_it(tasks):
    """2 processes × 2 workers: the four readers' documents of an epoch are the task's documents,
    each once; the next epoch is the same documents in another order."""
    module, name = tasks
    stream = RawStream(f"raw:seqio:{name}_ids", seq_len=SEQ, document_aware=False,
                       seqio_module=module, field="targets")  # fmt: skip
    want = collections.Counter(map(tuple, _documents()))
    epochs = []
    for epoch in (0, 1):
        readers = [_reader_epoch(stream.seqio, p, 2, w, 2, epoch) for p in (0, 1) for w in (0, 1)]
        assert all(readers), "every reader gets examples"
        assert collections.Counter(d for r in readers for d in r) == want
        epochs.append(readers)
    assert epochs[0] != epochs[1]


def test_batches_resume_from_the_saved_state(tasks):
    """Through grain's worker processes (which import the module; each start imports
    TensorFlow, so the test starts two pipelines only): a pipeline resumed from the position
    saved after 7 batches continues exactly as the uninterrupted one, past the end of an
    epoch."""
    module, name = tasks
    spec = PipelineSpec(datasets=(f"raw:seqio:{name}_text",), weights=(), seq_len=SEQ,
                        global_batch=8, seed=3, tokenize_workers=2, seqio_module=module,
                        raw_field="targets")  # fmt: skip
    iterator = Pipeline(spec).iterator(0)
    first = [next(iterator) for _ in range(7)]
    saved = iterator.state()
    first += [next(iterator) for _ in range(5)]
    iterator.close()
    resumed = Pipeline(spec).iterator(7, saved)
    tail = [next(resumed) for _ in range(5)]
    resumed.close()
    for a, b in zip(first[7:], tail, strict=True):
        for key in Pipeline.output_keys:
            np.testing.assert_array_equal(a[key], b[key])
    assert json.loads(saved)["step"] == 7
    # 12 batches of 8 × 64 tokens: more than one epoch of the task (4,650 tokens).
    assert sum(len(d) for d in _documents()) < 12 * 8 * SEQ


def test_unknown_tasks_modules_and_features_are_clear_errors(tasks):
    module, name = tasks
    with pytest.raises(DataError, match="no seqio task or mixture 'nope'.*data.seqio_module"):
        RawStream("raw:seqio:nope", seq_len=SEQ, document_aware=False, seqio_module=module)
    with pytest.raises(DataError, match="data.seqio_module 'no_such_module' cannot be imported"):
        RawStream("raw:seqio:x", seq_len=SEQ, document_aware=False, seqio_module="no_such_module")
    with pytest.raises(DataError, match="no feature 'inputs'.*data.raw_field"):
        RawStream(f"raw:seqio:{name}_ids", seq_len=SEQ, document_aware=False,
                  seqio_module=module, field="inputs")  # fmt: skip
    with pytest.raises(DataError, match="no split 'validation'"):
        RawStream(f"raw:seqio:{name}_ids:validation", seq_len=SEQ, document_aware=False,
                  seqio_module=module)  # fmt: skip


def test_resolving_needs_no_file_listing(tasks):
    """A seqio dataset's `files` are its task specs (what a saved position is checked against)."""
    module, name = tasks
    stream = RawStream(f"raw:seqio:{name}_ids,{name}_text:train", seq_len=SEQ,
                       document_aware=False, seqio_module=module, field="targets")  # fmt: skip
    assert stream.files == [f"{name}_ids", f"{name}_text:train"]
