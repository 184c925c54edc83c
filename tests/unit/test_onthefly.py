"""On-the-fly datasets (`raw:FORMAT:PATHS`): raw files tokenised and packed inside the grain
pipeline, checked against an independent reference (SentencePiece run directly on the documents,
concatenated and cut by hand), for determinism, kill -9 + resume from the saved position, exact
mixture proportions with a prepared dataset, and a change of process count."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm

from illada_jax.data.pipeline.batches import Pipeline, PipelineSpec
from illada_jax.data.pipeline.mixture import dataset_seed
from illada_jax.data.pipeline.onthefly import RawStream
from illada_jax.data.pipeline.packing import DataError, PreparedDataset, TokenWindows
from illada_jax.data.preparation.prepare import prepare
from illada_jax.data.sources.corpus import embedded_documents
from illada_jax.data.tokenizers.tokenizer import Tokenizer

SEQ = 64


def _documents() -> list[str]:
    return [d.text[:3000] for d, _ in zip(embedded_documents("train"), range(24))]


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory) -> pathlib.Path:
    """The documents as 3 jsonl files (with a bad line and an empty record, dropped) and the
    same documents as 3 parquet files."""
    directory = tmp_path_factory.mktemp("raw")
    docs = _documents()
    for part in range(3):
        lines = [json.dumps({"text": t}) for t in docs[part::3]]
        lines.insert(1, "{not json")
        lines.insert(2, json.dumps({"text": "   "}))
        (directory / f"part-{part}.jsonl").write_text("\n".join(lines) + "\n")
        pq.write_table(pa.table({"text": docs[part::3]}), directory / f"part-{part}.parquet",
                       row_group_size=3)  # fmt: skip
    return directory


def _reference_stream(files_docs: list[list[str]]) -> np.ndarray:
    """The token stream by hand: every document encoded by SentencePiece itself, EOS after it,
    files in the given order."""
    tok = Tokenizer.default()
    sp = spm.SentencePieceProcessor(model_file=str(tok.path))
    ids = []
    for docs in files_docs:
        for text in docs:
            ids.extend(sp.encode(text))
            ids.append(tok.eos_id)
    return np.asarray(ids, np.int64)


def _spec(name, **overrides) -> PipelineSpec:
    fields = dict(datasets=(name,), weights=(), seq_len=SEQ, global_batch=4, seed=7)
    fields.update(overrides)
    return PipelineSpec(**fields)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_windows_are_the_documents_tokenised_concatenated_and_cut(raw_dir, fmt):
    """Unshuffled, one process, no workers: window k is tokens [k·L, (k+1)·L) of the stream."""
    docs = _documents()
    stream = RawStream(f"raw:{fmt}:{raw_dir}/*.{fmt}", seq_len=SEQ, document_aware=False,
                       workers=0, shuffle=False)  # fmt: skip
    assert [pathlib.Path(f).name for f in stream.files] == [f"part-{i}.{fmt}" for i in range(3)]
    reference = _reference_stream([docs[part::3] for part in range(3)])
    iterator = iter(stream.windows(0, 1, seed=0))
    n = len(reference) // SEQ
    for k in range(n):
        window = next(iterator)
        np.testing.assert_array_equal(window["tokens"], reference[k * SEQ : (k + 1) * SEQ])
        np.testing.assert_array_equal(window["segment_ids"], np.ones(SEQ))
        np.testing.assert_array_equal(window["positions"], np.arange(SEQ))
    # Then the files repeat: the next window starts with what the first window held.
    rest = len(reference) - n * SEQ
    np.testing.assert_array_equal(next(iterator)["tokens"][rest:], reference[: SEQ - rest])
    iterator.close()


def test_document_aware_windows_segment_every_document(raw_dir):
    docs = _documents()
    stream = RawStream(f"raw:jsonl:{raw_dir}/part-0.jsonl", seq_len=SEQ, document_aware=True,
                       workers=0, shuffle=False)  # fmt: skip
    tok = Tokenizer.default()
    sp = spm.SentencePieceProcessor(model_file=str(tok.path))
    lengths = [len(sp.encode(t)) + 1 for t in docs[0::3]]
    # Reference segment ids: documents numbered along the stream, renumbered from 1 per window.
    doc_of_token = np.repeat(np.arange(len(lengths)), lengths)
    iterator = iter(stream.windows(0, 1, seed=0))
    for k in range(len(doc_of_token) // SEQ):
        window = next(iterator)
        docs_here = doc_of_token[k * SEQ : (k + 1) * SEQ]
        expected_segments = docs_here - docs_here[0] + 1
        np.testing.assert_array_equal(window["segment_ids"], expected_segments)
        starts = np.flatnonzero(np.diff(docs_here, prepend=-1))
        expected_positions = (
            np.arange(SEQ) - starts[np.searchsorted(starts, np.arange(SEQ), "right") - 1]
        )
        np.testing.assert_array_equal(window["positions"], expected_positions)
    iterator.close()


def _batches(pipeline: Pipeline, start: int, count: int, state=None):
    iterator = pipeline.iterator(start, state)
    out = [next(iterator) for _ in range(count)]
    saved = iterator.state()
    iterator.close()
    return out, saved


def test_batches_depend_on_the_step_only_and_resume_from_the_saved_state(raw_dir):
    spec = _spec(f"raw:jsonl:{raw_dir}", tokenize_workers=2)
    first, _ = _batches(Pipeline(spec), 0, 6)
    again, _ = _batches(Pipeline(spec), 0, 6)
    head, saved = _batches(Pipeline(spec), 0, 3)
    tail, _ = _batches(Pipeline(spec), 3, 3, saved)
    for a, b, c in zip(first, again, head + tail):
        for key in Pipeline.output_keys:
            np.testing.assert_array_equal(a[key], b[key])
            np.testing.assert_array_equal(a[key], c[key])
    assert json.loads(saved)["step"] == 3
    with pytest.raises(DataError, match="saved at step 3"):
        Pipeline(spec).iterator(5, saved)


def test_a_changed_process_count_restarts_the_streams_at_a_fresh_shuffle(raw_dir, caplog):
    spec = _spec(f"raw:jsonl:{raw_dir}", tokenize_workers=0)
    _, saved = _batches(Pipeline(spec, process_index=0, process_count=2), 0, 2)
    with caplog.at_level(logging.WARNING):
        resumed, _ = _batches(Pipeline(spec, process_index=0, process_count=1), 2, 2, saved)
    assert "start over at a fresh shuffle" in caplog.text
    # The stream a 1-process run opens at step 2: all files, shuffled with the step-2 seed.
    stream = Pipeline(spec).datasets[0]
    windows = iter(stream.windows(0, 1, dataset_seed(spec.seed, 0, 2)))
    for batch in resumed:
        for row in range(spec.global_batch):
            np.testing.assert_array_equal(batch["tokens"][row], next(windows)["tokens"])
    windows.close()


def test_a_mixture_with_a_prepared_dataset_keeps_exact_proportions(raw_dir, tmp_path):
    """Weights 3:1 over 8 rows: every global batch holds exactly 6 prepared and 2 raw rows."""
    digits = tmp_path / "digits"
    digits.mkdir()
    for part in range(2):  # one file per process
        lines = "".join(json.dumps({"text": "0123456789 " * 40}) + "\n" for _ in range(20))
        (digits / f"{part}.jsonl").write_text(lines)
    prepared_dir = tmp_path / "prepared"
    prepare([str(raw_dir / "part-0.jsonl")], "jsonl", prepared_dir, progress=False, workers=1)
    prepared = PreparedDataset(prepared_dir)
    windows = TokenWindows(prepared, SEQ, document_aware=False)
    all_prepared = {windows[i]["tokens"].tobytes() for i in range(len(windows))}
    spec = _spec(str(prepared_dir), global_batch=8, tokenize_workers=0)
    spec = PipelineSpec(**{**spec.__dict__, "datasets": (str(prepared_dir), f"raw:jsonl:{digits}"),
                           "weights": (3.0, 1.0)})  # fmt: skip
    tok = Tokenizer.default()
    digit_ids = set(tok.encode("0123456789 " * 3)) | {tok.eos_id}
    halves = [Pipeline(spec, process_index=p, process_count=2).iterator(0) for p in range(2)]
    for _ in range(5):
        rows = np.concatenate([next(h)["tokens"] for h in halves])
        from_prepared = [r.tobytes() in all_prepared for r in rows]
        from_raw = [set(r.tolist()) <= digit_ids for r in rows]
        assert sum(from_prepared) == 6 and sum(from_raw) == 2
        assert all(p != r for p, r in zip(from_prepared, from_raw))
    for h in halves:
        h.close()


def test_bad_names_and_too_few_files_are_clear_errors(raw_dir):
    with pytest.raises(DataError, match="raw:FORMAT:PATHS"):
        RawStream("raw:csv:/x", seq_len=SEQ, document_aware=False)
    with pytest.raises(DataError, match="matches no file"):
        RawStream(f"raw:jsonl:{raw_dir}/*.txt", seq_len=SEQ, document_aware=False)
    stream = RawStream(f"raw:jsonl:{raw_dir}/part-0.jsonl", seq_len=SEQ, document_aware=False)
    with pytest.raises(DataError, match="at least 2 files"):
        stream.windows(1, 2, seed=0)


_KILLABLE = """
import hashlib, json, pathlib, sys
from illada_jax.data.pipeline.batches import Pipeline, PipelineSpec
def main():
    out, raw = pathlib.Path(sys.argv[1]), sys.argv[2]
    spec = PipelineSpec(datasets=(raw,), weights=(), seq_len=64, global_batch=4, seed=7,
                        tokenize_workers=2)
    state_file = out / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else None
    iterator = Pipeline(spec).iterator(state["step"] if state else 0, state and state["data"])
    with open(out / "hashes.txt", "a") as log:
        for _ in range(int(sys.argv[3])):
            batch = next(iterator)
            step = json.loads(iterator.state())["step"]
            digest = hashlib.sha256(b"".join(batch[k].tobytes() for k in sorted(batch)))
            log.write(f"{step} {digest.hexdigest()}\\n")
            log.flush()
            tmp = out / "state.tmp"
            tmp.write_text(json.dumps({"step": step, "data": iterator.state()}))
            tmp.replace(state_file)
if __name__ == "__main__":
    main()
"""


def _children(pid: int) -> list[int]:
    """Direct child processes of `pid` (Linux /proc)."""
    found = []
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_kill_9_then_resume_gives_the_uninterrupted_batches(raw_dir, tmp_path):
    script = tmp_path / "reader.py"
    script.write_text(_KILLABLE)
    raw = f"raw:jsonl:{raw_dir}"
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    reference.mkdir(), interrupted.mkdir()
    subprocess.run([sys.executable, script, reference, raw, "30"], check=True, timeout=120)
    proc = subprocess.Popen([sys.executable, script, interrupted, raw, "100000"])
    deadline = time.monotonic() + 120
    while (
        not (interrupted / "hashes.txt").exists()
        or len((interrupted / "hashes.txt").read_text().splitlines()) < 12
    ):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    workers = _children(proc.pid)
    assert workers, "the tokeniser worker processes were not found"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while any(pathlib.Path(f"/proc/{pid}").exists() for pid in workers):
        assert time.monotonic() < deadline, f"worker processes {workers} outlived the kill"
        time.sleep(0.1)
    done = json.loads((interrupted / "state.json").read_text())["step"]
    print(f"killed after step {done}")
    assert done < 30
    subprocess.run([sys.executable, script, interrupted, raw, str(30 - done)], check=True,
                   timeout=120)  # fmt: skip
    # A batch logged after the last saved state is logged again by the resumed run: keep the last.
    resumed = dict(line.split() for line in (interrupted / "hashes.txt").read_text().splitlines())
    expected = dict(line.split() for line in (reference / "hashes.txt").read_text().splitlines())
    assert resumed == expected and len(expected) == 30


def test_a_wrong_field_is_an_error_not_a_hang(raw_dir):
    stream = RawStream(f"raw:jsonl:{raw_dir}/*.jsonl", seq_len=SEQ, document_aware=False,
                       field="content", workers=0)  # fmt: skip
    iterator = iter(stream.windows(0, 1, seed=0))
    with pytest.raises(DataError, match="no usable document.*'content'"):
        next(iterator)
    iterator.close()


def test_every_epoch_reads_every_file_once_in_a_new_order(tmp_path):
    """One single-line file per letter: the documents of each epoch are a permutation."""
    for letter in "abcdefgh":
        (tmp_path / f"{letter}.jsonl").write_text(json.dumps({"text": letter * 3}) + "\n")
    (tmp_path / "_SUCCESS").write_text("")  # a marker file under a directory is not data
    stream = RawStream(f"raw:jsonl:{tmp_path}", seq_len=SEQ, document_aware=True, workers=0)
    assert len(stream.files) == 8
    tok = Tokenizer.default()
    first_token = {tok.encode(letter * 3)[0]: letter for letter in "abcdefgh"}
    window = next(iter(stream.windows(0, 1, seed=3)))
    starts = np.flatnonzero(np.diff(window["segment_ids"], prepend=0))
    order = "".join(first_token[int(window["tokens"][s])] for s in starts)
    assert len(order) >= 16, order
    epochs = [order[0:8], order[8:16]]
    assert all(sorted(epoch) == list("abcdefgh") for epoch in epochs), order
    assert len(set(epochs)) > 1, order  # reshuffled


def test_a_saved_position_is_not_applied_to_other_files(raw_dir, tmp_path, caplog):
    for part in range(3):
        (tmp_path / f"part-{part}.jsonl").write_text((raw_dir / f"part-{part}.jsonl").read_text())
    spec = _spec(f"raw:jsonl:{tmp_path}/*.jsonl", tokenize_workers=0)
    _, saved = _batches(Pipeline(spec), 0, 2)
    (tmp_path / "part-3.jsonl").write_text(json.dumps({"text": "new file"}) + "\n")
    with caplog.at_level(logging.WARNING):
        _batches(Pipeline(spec), 2, 1, saved)
    assert "start over at a fresh shuffle" in caplog.text


def test_held_out_evaluation_refuses_a_raw_dataset():
    from illada_jax.config.schema import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="eval_dataset"):
        TrainConfig(eval_dataset="raw:jsonl:/data/x.jsonl")
