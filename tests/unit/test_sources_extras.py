"""`--format tfds` on a real local TFDS ArrayRecord dataset, and the seqio adapter.

seqio itself needs TensorFlow (2.4 GB), so the seqio test substitutes a stand-in module with
seqio's provider API (`get_mixture_or_task(name).get_dataset(...).as_numpy_iterator()`) to check
our adapter: feature extraction, byte decoding, counting; the real package is the `[seqio]` extra.
"""

from __future__ import annotations

import collections
import pathlib
import sys
import types

import numpy as np
import pytest

from illada_jax.data import sources

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"


def test_tfds_array_record_dataset(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))  # TFDS builders must live in a package
    from tfds_mini import TEXTS, TfdsMini

    builder = TfdsMini(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    stats = collections.Counter()
    docs = list(sources.iter_documents("tfds", [f"{builder.data_dir}:train"], stats, field="text"))
    # TFDS shuffles examples on write: compare as sets; the empty text is dropped and counted.
    assert sorted(docs) == sorted(t for t in TEXTS if t)
    assert stats == {"empty_skipped": 1}


def test_seqio_adapter_reads_a_feature_and_decodes_bytes(monkeypatch):
    calls = []

    class FakeDataset:
        def as_numpy_iterator(self):
            yield {"text": b"caf\xc3\xa9", "id": np.int64(1)}
            yield {"text": np.array([1, 2, 3])}  # a tokenised feature: not text
            yield {"text": b"bad \xff byte"}

    class FakeTask:
        def get_dataset(self, **kwargs):
            calls.append(kwargs)
            return FakeDataset()

    fake = types.ModuleType("seqio")
    fake.get_mixture_or_task = lambda name: calls.append(name) or FakeTask()
    monkeypatch.setitem(sys.modules, "seqio", fake)
    stats = collections.Counter()
    docs = list(sources.iter_documents("seqio", ["my_task:validation"], stats, field="text"))
    assert docs == ["café", "bad \ufffd byte"]
    assert stats == {"missing_field_skipped": 1, "invalid_utf8_replaced": 1}
    assert calls[0] == "my_task"
    assert calls[1]["split"] == "validation" and calls[1]["shuffle"] is False
    assert calls[1]["num_epochs"] == 1


def test_seqio_without_the_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "seqio", None)  # import seqio -> ImportError
    with pytest.raises(sources.SourceError, match=r"\[seqio\] extra"):
        list(sources.iter_documents("seqio", ["t"], collections.Counter()))
