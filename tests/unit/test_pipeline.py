"""The data pipeline on prepared token shards: determinism, process slices, resume, epochs,
mixtures, document-aware windows, and clear errors for broken or mismatched data.

Datasets are written from known token ids (`prepare_token_documents`), so every expectation is
computed independently from the ids the test chose, not from the pipeline.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from illada_jax.config.schema import ModelConfig
from illada_jax.data.pipeline.batches import Pipeline, PipelineSpec
from illada_jax.data.pipeline.packing import DataError, PreparedDataset, TokenWindows
from illada_jax.data.preparation.prepare import PrepareError, prepare_token_documents

SPECIAL = {"pad": 0, "unk": 1, "bos": 2, "eos": 3, "mask": 4, "eot": None}
VOCAB = 1_000_000


def make_docs(
    n_docs: int,
    first_id: int,
    rng: np.random.Generator,
    max_len: int = 40,
    fixed_len: int | None = None,
):
    """Documents of distinct, increasing token ids starting at `first_id` (ids never repeat)."""
    docs, next_id = [], first_id
    for _ in range(n_docs):
        length = fixed_len or int(rng.integers(1, max_len))
        docs.append(list(range(next_id, next_id + length)))
        next_id += length
    return docs


def write_dataset(path, docs, per_shard=7):
    prepare_token_documents(
        docs, path, vocab_size=VOCAB, special_ids=SPECIAL, documents_per_shard=per_shard
    )
    return PreparedDataset(path)


def stream_of(docs):
    """The token stream a prepared dataset holds: each document followed by EOS."""
    return [t for d in docs for t in [*d, SPECIAL["eos"]]]


@pytest.fixture
def dataset(tmp_path):
    docs = make_docs(60, 1000, np.random.default_rng(0))
    return write_dataset(tmp_path / "a", docs), docs


def spec(**kw):
    base = dict(datasets=("unused",), weights=(), seq_len=16, global_batch=8, seed=3)
    return PipelineSpec(**{**base, **kw})


def test_windows_cover_each_shard_stream_with_padding(dataset):
    ds, docs = dataset
    windows = TokenWindows(ds, 16, document_aware=False)
    # Reference: per shard (7 documents each), cut the stream into 16-token windows, pad the last.
    expected = []
    for first in range(0, len(docs), 7):
        stream = stream_of(docs[first : first + 7])
        for start in range(0, len(stream), 16):
            piece = stream[start : start + 16]
            expected.append(piece + [SPECIAL["pad"]] * (16 - len(piece)))
    assert len(windows) == len(expected)
    for i, want in enumerate(expected):
        w = windows[i]
        np.testing.assert_array_equal(w["tokens"], want)
        real = sum(t != SPECIAL["pad"] for t in want)
        np.testing.assert_array_equal(w["segment_ids"], [1] * real + [0] * (16 - real))
        np.testing.assert_array_equal(w["positions"], np.arange(16))


def test_deterministic_and_seed_dependent(dataset):
    ds, _ = dataset
    a = Pipeline(spec(), [ds])
    b = Pipeline(spec(), [ds])
    c = Pipeline(spec(seed=4), [ds])
    for step in range(4):
        np.testing.assert_array_equal(
            a.global_batch(step)["tokens"], b.global_batch(step)["tokens"]
        )
    assert not np.array_equal(a.global_batch(0)["tokens"], c.global_batch(0)["tokens"])


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_process_slices_are_disjoint_and_cover_the_global_batch(dataset, processes):
    ds, _ = dataset
    whole = Pipeline(spec(), [ds])
    for step in (0, 5):
        parts = [
            Pipeline(spec(), [ds], process_index=p, process_count=processes).process_batch(step)
            for p in range(processes)
        ]
        for key in ("tokens", "segment_ids", "positions"):
            np.testing.assert_array_equal(
                np.concatenate([part[key] for part in parts]), whole.global_batch(step)[key]
            )


@pytest.mark.parametrize("before, after", [(1, 2), (2, 4), (4, 1), (2, 2)])
def test_resume_with_any_process_count_reproduces_the_batches(dataset, before, after):
    ds, _ = dataset
    # The uninterrupted run: steps 0..5 from `before` processes through the real iterator.
    its = [
        Pipeline(spec(), [ds], process_index=p, process_count=before).iterator(0)
        for p in range(before)
    ]
    uninterrupted = [np.concatenate([next(it)["tokens"] for it in its]) for _ in range(6)]
    # Interrupted at step 3, resumed with `after` processes.
    resumed_its = [
        Pipeline(spec(), [ds], process_index=p, process_count=after).iterator(3)
        for p in range(after)
    ]
    resumed = [np.concatenate([next(it)["tokens"] for it in resumed_its]) for _ in range(3)]
    for got, want in zip(resumed, uninterrupted[3:]):
        np.testing.assert_array_equal(got, want)


def test_one_epoch_yields_every_token_exactly_once(tmp_path):
    docs = make_docs(50, 1000, np.random.default_rng(1))
    ds = write_dataset(tmp_path / "e", docs)
    pipe = Pipeline(spec(global_batch=1), [ds])
    n_windows = len(pipe.windows[0])
    seen = []
    for step in range(n_windows):  # batch 1: one window per step, one epoch
        batch = pipe.global_batch(step)
        seen.extend(batch["tokens"][batch["segment_ids"] != 0].tolist())
    expected = stream_of(docs)
    # Content ids are unique, EOS repeats once per document: compare as multisets.
    assert sorted(seen) == sorted(expected)
    # The next epoch starts over in a different order.
    second = [pipe.global_batch(n_windows + s)["tokens"][0].tolist() for s in range(n_windows)]
    first = [pipe.global_batch(s)["tokens"][0].tolist() for s in range(n_windows)]
    assert sorted(map(tuple, first)) == sorted(map(tuple, second)) and first != second
    assert pipe.epochs(n_windows) == [1.0]


@pytest.mark.parametrize(
    "weights, batch, counts", [((0.75, 0.25), 8, (6, 2)), ((1, 1, 1), 8, (3, 3, 2))]
)
def test_mixture_proportions_are_exact_in_every_batch(tmp_path, weights, batch, counts):
    rng = np.random.default_rng(2)
    datasets = [
        # 15 tokens + EOS: every 16-token window holds content of exactly one dataset.
        write_dataset(tmp_path / f"m{i}", make_docs(30, 100_000 * (i + 1), rng, fixed_len=15))
        for i in range(len(weights))
    ]
    pipe = Pipeline(
        spec(global_batch=batch, weights=weights, datasets=("x",) * len(weights)), datasets
    )
    for step in range(20):
        tokens = pipe.global_batch(step)["tokens"]
        # Each row comes from one dataset; its content ids lie in that dataset's id range.
        row_source = [int(row[row > 4].max()) // 100_000 - 1 for row in tokens]
        assert tuple(np.bincount(row_source, minlength=len(weights))) == counts


def test_document_aware_windows_never_mix_documents(dataset):
    ds, docs = dataset
    doc_of = {t: i for i, d in enumerate(docs) for t in d}
    windows = TokenWindows(ds, 16, document_aware=True)
    for i in range(len(windows)):
        w = windows[i]
        for seg in np.unique(w["segment_ids"][w["segment_ids"] != 0]):
            where = np.flatnonzero(w["segment_ids"] == seg)
            assert np.all(np.diff(where) == 1)  # contiguous
            content = [t for t in w["tokens"][where] if t != SPECIAL["eos"]]
            assert len({doc_of[t] for t in content}) <= 1
            # An EOS may only close the segment.
            eos = np.flatnonzero(w["tokens"][where] == SPECIAL["eos"])
            assert all(e == len(where) - 1 for e in eos)
            np.testing.assert_array_equal(w["positions"][where], np.arange(len(where)))


def test_missing_manifest_and_missing_shard_are_clear_errors(dataset, tmp_path):
    with pytest.raises(DataError, match="no manifest.json.*illada prepare"):
        PreparedDataset(tmp_path / "nothing")
    ds, _ = dataset
    (ds.directory / "shard-00001.arrayrecord").unlink()
    fresh = PreparedDataset(ds.directory)  # start-up reads the manifest only
    TokenWindows(fresh, 16, document_aware=False)[0]  # shard 0 is fine
    first_of_shard_1 = -(-int(fresh.shard_tokens[0]) // 16)
    with pytest.raises(
        DataError, match=r"shard-00001.arrayrecord listed in the manifest is missing"
    ):
        TokenWindows(fresh, 16, document_aware=False)[first_of_shard_1]
    (ds.directory / "shard-00000.lengths.npy").unlink()
    with pytest.raises(
        DataError, match=r"shard-00000.lengths.npy listed in the manifest is missing"
    ):
        TokenWindows(PreparedDataset(ds.directory), 16, document_aware=False)[0]


def test_a_version_1_manifest_reads_the_same_batches(dataset):
    """Directories prepared before the columnar shard table (one JSON object per shard naming
    its files) still train, batch for batch."""
    ds, _ = dataset
    manifest_path = ds.directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    table = manifest["shards"]
    want = Pipeline(spec(), [PreparedDataset(ds.directory)])
    manifest["format_version"] = 1
    manifest["shards"] = [
        {"file": f"shard-{i:05d}.arrayrecord", "lengths_file": f"shard-{i:05d}.lengths.npy",
         "documents": table["documents"][i], "records": table["records"][i],
         "tokens": table["tokens"][i]}
        for i in range(table["count"])
    ]  # fmt: skip
    manifest_path.write_text(json.dumps(manifest))
    got = Pipeline(spec(), [PreparedDataset(ds.directory)])
    for step in (0, 5):
        for key, value in want.global_batch(step).items():
            np.testing.assert_array_equal(got.global_batch(step)[key], value)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda m: m.update(format_version=4), "format_version 4, this code reads 1, 2, 3"),
        (lambda m: m["shards"]["tokens"].pop(), "damaged shard table.*do not all have 9 rows"),
        (lambda m: m["shards"].pop("records"), "damaged shard table.*records"),
        (lambda m: m["shards"].pop("crc32"), "damaged shard table.*crc32"),
        (lambda m: m["shards"]["bytes"].pop(), "damaged shard table.*do not all have 9 rows"),
    ],
)
def test_damaged_or_unknown_manifest_is_a_clear_error(dataset, damage, message):
    ds, _ = dataset
    manifest_path = ds.directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["shards"]["count"] == 9  # 60 documents, 7 per shard
    damage(manifest)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=message):
        PreparedDataset(ds.directory)


def test_corrupt_shard_is_a_clear_error(dataset):
    ds, _ = dataset
    path = ds.directory / "shard-00000.arrayrecord"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    fresh = PreparedDataset(ds.directory)
    with pytest.raises(DataError, match=r"shard-00000.arrayrecord.*(damaged|truncated)"):
        TokenWindows(fresh, 16, document_aware=False)[0]


def test_a_shard_of_the_wrong_size_is_refused_when_opened(dataset):
    """The cheap check on open: the file's size against the manifest's (format 3)."""
    ds, _ = dataset
    path = ds.directory / "shard-00001.arrayrecord"
    size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(b"appended")
    fresh = PreparedDataset(ds.directory)
    with pytest.raises(DataError, match=f"shard-00001.arrayrecord is {size + 8} bytes, the "
                       f"manifest says {size}"):  # fmt: skip
        fresh.read(1, 0, 4)
    fresh.read(0, 0, 4)  # the other shards still read


def test_verify_reads_every_byte(dataset):
    """`illada prepare --verify`: a flipped byte (same size) is found by its CRC-32; an
    intact dataset passes; the CRC-32 is zlib's over the whole file."""
    import zlib

    from illada_jax.data.preparation.verify import verify_dataset

    ds, _ = dataset
    manifest = json.loads((ds.directory / "manifest.json").read_text())
    for i in range(manifest["shards"]["count"]):
        raw = (ds.directory / f"shard-{i:05d}.arrayrecord").read_bytes()
        assert manifest["shards"]["crc32"][i] == zlib.crc32(raw)
        assert manifest["shards"]["bytes"][i] == len(raw)
    report = verify_dataset(ds.directory)
    assert report.ok and report.checksums and report.shards == 9
    path = ds.directory / "shard-00004.arrayrecord"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    path.write_bytes(bytes(raw))
    report = verify_dataset(ds.directory)
    assert len(report.damaged) == 1 and report.damaged[0].startswith("shard-00004.arrayrecord: CRC")


def test_mask_id_in_data_is_refused(tmp_path, dataset):
    with pytest.raises(PrepareError, match="mask id 4"):
        prepare_token_documents(
            [[10, 4, 11]], tmp_path / "bad", vocab_size=VOCAB, special_ids=SPECIAL
        )
    # Data whose manifest claims a mask id that occurs in the tokens is refused at read time.
    ds, docs = dataset
    manifest_path = ds.directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["tokenizer"]["special_ids"]["mask"] = docs[0][0]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="contains the mask id"):
        TokenWindows(PreparedDataset(ds.directory), 16, document_aware=False)[0]


def test_manifest_mismatch_with_model_is_a_clear_error(dataset):
    ds, _ = dataset
    model = ModelConfig(vocab_size=8192)
    with pytest.raises(DataError, match=r"vocab_size 1000000 != model.vocab_size 8192"):
        ds.check_compatible(model)
    model = ModelConfig(vocab_size=VOCAB, mask_token_id=5)
    with pytest.raises(DataError, match=r"mask id 4 != model.mask_token_id 5"):
        ds.check_compatible(model)
    ds.check_compatible(ModelConfig(vocab_size=VOCAB))  # matching: no error


def test_global_batch_must_divide_over_processes(dataset):
    ds, _ = dataset
    with pytest.raises(DataError, match="does not divide over 3 processes"):
        Pipeline(spec(global_batch=8), [ds], process_count=3)
