"""`illada prepare` (`illada_jax.data.preparation.prepare`): shards, manifest, bad-record rules, re-runs.

Expected token ids are computed here from the documents' texts with `Tokenizer.default()` (plus
EOS), and shards are read back with ArrayRecord directly, not through the code under test.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader

from illada_jax.data.pipeline.packing import PreparedDataset
from illada_jax.data.preparation.prepare import PrepareError, prepare
from illada_jax.data.sources.corpus import embedded_documents
from illada_jax.data.sources.formats import SourceError
from illada_jax.data.tokenizers.tokenizer import Tokenizer, default_model_path

BAD_KEYS = (
    "invalid_utf8_replaced",
    "empty_skipped",
    "bad_json_skipped",
    "missing_field_skipped",
    "overlong_split",
)
EOS = 3


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.default()


def expected_records(tok: Tokenizer, texts, max_doc_tokens: int | None = None) -> list[list[int]]:
    """One record per text (ids + EOS), cut into pieces of `max_doc_tokens` when longer."""
    records = []
    for text in texts:
        ids = [*tok.encode(text), EOS]
        if max_doc_tokens is None or len(ids) <= max_doc_tokens:
            records.append(ids)
        else:
            records.extend(ids[i : i + max_doc_tokens] for i in range(0, len(ids), max_doc_tokens))
    return records


def shard_files(out: pathlib.Path) -> list[pathlib.Path]:
    return sorted(out.glob("shard-*.arrayrecord"))


def read_shards(out: pathlib.Path) -> list[list[list[int]]]:
    """Records of every shard (in file-name order) as lists of ints."""
    shards = []
    for path in shard_files(out):
        reader = ArrayRecordReader(str(path))
        shards.append([np.frombuffer(r, "<i4").tolist() for r in reader.read_all()])
        reader.close()
    return shards


def read_manifest(out: pathlib.Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def bad(**counts) -> dict:
    return {key: counts.get(key, 0) for key in BAD_KEYS}


def write(path: pathlib.Path, data: bytes | str) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def check_manifest_counts(manifest: dict, shards: list[list[list[int]]], documents: list[int]):
    """Per-shard and total counts of `manifest` agree with the records read back."""
    table = manifest["shards"]  # columnar: shard i is shard-{i:05d}
    assert table["count"] == len(shards)
    assert table["records"] == [len(s) for s in shards]
    assert table["tokens"] == [sum(map(len, s)) for s in shards]
    assert table["documents"] == documents
    assert manifest["documents"] == sum(documents)
    assert manifest["records"] == sum(len(s) for s in shards)
    assert manifest["tokens"] == sum(len(r) for s in shards for r in s)


# ------------------------------------------------------------------------------ text


FILE_TEXTS = {
    "docs/b.txt": "The second file, read after a.txt.\nIt has two lines.\n",
    "docs/a.txt": "Alpha comes first: files in a directory are read in sorted order.",
    "docs/sub/c.txt": "naïve café — 東京, Ωμέγα\r\nwith CRLF kept\r\n",
    "extra.txt": "An input named after the directory comes after all of its files.",
}


def test_text_file_mode_records_and_manifest(tmp_path, tok):
    for name, text in FILE_TEXTS.items():
        write(tmp_path / name, text)
    out = tmp_path / "out"
    manifest = prepare(
        [str(tmp_path / "docs"), str(tmp_path / "extra.txt")],
        "text",
        out,
        workers=1,
        progress=False,
    )
    order = ["docs/a.txt", "docs/b.txt", "docs/sub/c.txt", "extra.txt"]
    want = expected_records(tok, [FILE_TEXTS[name] for name in order])
    shards = read_shards(out)
    assert shards == [want]
    assert all(r[-1] == EOS and EOS not in r[:-1] for r in shards[0])
    assert manifest == read_manifest(out)
    check_manifest_counts(manifest, shards, [4])
    assert manifest["tokens"] == sum(len(tok.encode(t)) + 1 for t in FILE_TEXTS.values())
    assert manifest["bad_records"] == bad()
    lengths = np.load(out / "shard-00000.lengths.npy")
    assert lengths.tolist() == [len(r) for r in want]

    info = manifest["tokenizer"]
    sha = hashlib.sha256(default_model_path().read_bytes()).hexdigest()
    assert info["identity"] == Tokenizer.default().identity
    assert info["sha256"] == sha and sha in info["identity"]
    assert info["vocab_size"] == 8192
    assert {k: info["special_ids"][k] for k in ("pad", "bos", "eos", "mask")} == {
        "pad": 0,
        "bos": 2,
        "eos": 3,
        "mask": 4,
    }
    assert manifest["source"]["format"] == "text"
    assert manifest["source"]["inputs"] == [str(tmp_path / "docs"), str(tmp_path / "extra.txt")]
    assert set(manifest["rules"]) == set(BAD_KEYS)


def test_text_block_mode_one_record_per_block(tmp_path, tok):
    write(
        tmp_path / "in/blocks.txt",
        "first block\nline two of it\n\nsecond block\r\n\r\nthird: the last, no newline",
    )
    write(tmp_path / "in/more.txt", "fourth block\n  \t\nfifth block")
    out = tmp_path / "out"
    manifest = prepare(
        [str(tmp_path / "in")], "text", out, text_unit="block", workers=1, progress=False
    )
    texts = [
        "first block\nline two of it",
        "second block",
        "third: the last, no newline",
        "fourth block",
        "fifth block",
    ]
    shards = read_shards(out)
    assert shards == [expected_records(tok, texts)]
    check_manifest_counts(manifest, shards, [5])
    assert manifest["bad_records"] == bad()
    assert manifest["source"]["text_unit"] == "block"


def test_block_mode_run_of_blank_lines_is_one_separator(tmp_path, tok):
    write(tmp_path / "runs.txt", "a block\n\n\nb block\n\n\n\nc block")
    out = tmp_path / "out"
    manifest = prepare(
        [str(tmp_path / "runs.txt")], "text", out, text_unit="block", workers=1, progress=False
    )
    assert manifest["bad_records"] == bad()
    assert read_shards(out) == [expected_records(tok, ["a block", "b block", "c block"])]


# ------------------------------------------------------------------------------ bad records


def test_text_invalid_utf8_and_empty_files(tmp_path, tok):
    files = {
        "1.txt": b"caf\xe9 with a latin-1 byte\n",
        "2.txt": b"  \n\t\n",
        "3.txt": b"",
        "4.txt": "good text ✓\n".encode(),
        "5.txt": b"\xff\xfe bad \x80 again",
    }
    for name, raw in files.items():
        write(tmp_path / "in" / name, raw)
    out = tmp_path / "out"
    manifest = prepare([str(tmp_path / "in")], "text", out, workers=1, progress=False)
    texts = ["caf\ufffd with a latin-1 byte\n", "good text ✓\n", "\ufffd\ufffd bad \ufffd again"]
    shards = read_shards(out)
    assert shards == [expected_records(tok, texts)]
    assert manifest["bad_records"] == bad(invalid_utf8_replaced=2, empty_skipped=2)
    check_manifest_counts(manifest, shards, [3])


def test_block_mode_invalid_utf8_and_whitespace_blocks(tmp_path, tok):
    # U+3000 (ideographic space) is whitespace but not a blank-line character: its block is a
    # whitespace-only document.
    write(tmp_path / "in/a.txt", b"alpha\n\n\xe3\x80\x80\n\nbeta \xff\n\ngamma")
    write(tmp_path / "in/b.txt", b"   ")
    out = tmp_path / "out"
    manifest = prepare(
        [str(tmp_path / "in")], "text", out, text_unit="block", workers=1, progress=False
    )
    assert read_shards(out) == [expected_records(tok, ["alpha", "beta \ufffd", "gamma"])]
    assert manifest["bad_records"] == bad(invalid_utf8_replaced=1, empty_skipped=2)
    assert manifest["documents"] == 3


def messy_jsonl_lines(long_text: str, edge_text: str) -> list[bytes]:
    """jsonl lines with every kind of bad record around the documents "one", "caf\ufffd",
    `long_text`, `edge_text`, "three" (also used by test_beam_prepare.py). Bad records:
    invalid_utf8_replaced=1, empty_skipped=1, bad_json_skipped=4, missing_field_skipped=4."""
    return [
        b'{"text": "one"}',
        b"",
        b'{"text": "two"',  # broken json
        b"[1, 2]",  # not an object
        b'"just a string"',  # not an object
        b"   \t ",  # blank: not a record, not counted
        b'{"body": "no text field"}',
        b'{"text": 5}',
        b'{"text": null}',
        b'{"text": ["a", "list"]}',
        b'{"text": "   "}',  # empty document
        b'{"text": "caf\xe9"}',  # invalid UTF-8 inside the line
        json.dumps({"text": long_text, "id": 7}).encode(),
        b"not json at all",
        json.dumps({"text": edge_text}).encode(),
        b'{"text": "three", "other": {"nested": true}}',
    ]


def test_jsonl_bad_lines_and_overlong_documents(tmp_path, tok):
    long_text = " ".join(f"word{i} and sentence number {i}." for i in range(40))
    long_ids = [*tok.encode(long_text), EOS]
    assert len(long_ids) > 120 and len(long_ids) % 50 != 0
    # 49 tokens + EOS = 50: at the limit, not split.
    edge_text = next(
        text
        for text in (f"at the limit{' x' * k}{'.' * d}" for k in range(60) for d in range(3))
        if len(tok.encode(text)) == 49
    )
    lines = messy_jsonl_lines(long_text, edge_text)
    write(tmp_path / "in.jsonl", b"\n".join(lines) + b"\n\n")
    write(tmp_path / "in2.jsonl", b'{"text": "four"}\r\n{"text": ""}\r\n')
    out = tmp_path / "out"
    manifest = prepare(
        [str(tmp_path / "in.jsonl"), str(tmp_path / "in2.jsonl")],
        "jsonl",
        out,
        max_doc_tokens=50,
        workers=1,
        progress=False,
    )
    texts = ["one", "caf\ufffd", long_text, edge_text, "three", "four"]
    assert manifest["bad_records"] == bad(
        invalid_utf8_replaced=1,
        empty_skipped=2,
        bad_json_skipped=4,
        missing_field_skipped=4,
        overlong_split=1,
    )
    shards = read_shards(out)
    assert len(shards) == 1
    records = shards[0]
    assert records == expected_records(tok, texts, max_doc_tokens=50)
    assert all(len(r) <= 50 for r in records)
    # The long document: consecutive pieces whose concatenation is its ids + EOS; EOS only last.
    pieces = records[2 : 2 + -(-len(long_ids) // 50)]
    assert sum(pieces, []) == long_ids
    assert [p[-1] == EOS for p in pieces] == [False] * (len(pieces) - 1) + [True]
    assert records[2 + len(pieces)] == [*tok.encode(edge_text), EOS]
    check_manifest_counts(manifest, shards, [len(texts)])
    assert manifest["records"] == len(texts) - 1 + len(pieces)


@pytest.mark.parametrize(
    "line",
    [b'{"text": "big", "n": ' + b"9" * 5000 + b"}", b"[" * 5000 + b"]" * 5000],
    ids=["huge-int", "deep-nesting"],
)
def test_jsonl_unparsable_lines_python_rejects_are_counted(tmp_path, tok, line):
    write(tmp_path / "in.jsonl", b'{"text": "kept"}\n' + line + b"\n")
    out = tmp_path / "out"
    manifest = prepare([str(tmp_path / "in.jsonl")], "jsonl", out, workers=1, progress=False)
    assert manifest["bad_records"] == bad(bad_json_skipped=1)
    assert read_shards(out) == [expected_records(tok, ["kept"])]


# ------------------------------------------------------------------------------ parquet


def test_parquet_column_and_missing_column(tmp_path, tok):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": [1, 2, 3, 4, 5],
            "content": ["first parquet doc", None, "second doc, ünïcode", "  ", "third"],
        }
    )
    pq.write_table(table, tmp_path / "data.parquet", row_group_size=2)
    out = tmp_path / "out"
    manifest = prepare(
        [str(tmp_path / "data.parquet")],
        "parquet",
        out,
        field="content",
        workers=1,
        progress=False,
    )
    texts = ["first parquet doc", "second doc, ünïcode", "third"]
    shards = read_shards(out)
    assert shards == [expected_records(tok, texts)]
    assert manifest["bad_records"] == bad(missing_field_skipped=1, empty_skipped=1)
    check_manifest_counts(manifest, shards, [3])
    assert manifest["source"]["field"] == "content"

    with pytest.raises(SourceError, match="'nope'"):
        prepare(
            [str(tmp_path / "data.parquet")],
            "parquet",
            tmp_path / "out2",
            field="nope",
            workers=1,
            progress=False,
        )


# ------------------------------------------------------------------------------ shards, re-runs


def _many_documents(directory: pathlib.Path, count: int) -> list[str]:
    texts = []
    for i in range(count):
        text = f"Document {i}: " + " ".join(f"token{(i * 7 + j) % 31}" for j in range(5 + i % 9))
        write(directory / f"doc{i:03d}.txt", text)
        texts.append(text)
    return texts


def test_several_shards_by_two_workers(tmp_path, tok):
    texts = _many_documents(tmp_path / "in", 40)
    out = tmp_path / "out"
    manifest = prepare(
        [str(tmp_path / "in")], "text", out, shard_chars=300, workers=2, progress=False
    )
    shards = read_shards(out)
    assert len(shards) >= 3
    assert manifest["shards"]["count"] == len(shards)
    want = expected_records(tok, texts)
    assert [r for s in shards for r in s] == want
    check_manifest_counts(manifest, shards, [len(s) for s in shards])
    assert manifest["documents"] == 40

    dataset = PreparedDataset(out)
    assert dataset.vocab_size == 8192 and dataset.tokens == sum(map(len, want))
    stream = []
    for index, count in enumerate(dataset.shard_tokens):
        tokens, _ = dataset.read(index, 0, int(count))
        stream.extend(tokens.tolist())
    assert stream == sum(want, [])


def _stamps(out: pathlib.Path) -> dict[str, tuple[int, int]]:
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(out.iterdir())
        if p.name.endswith((".arrayrecord", ".lengths.npy"))
    }


def test_rerun_skips_finished_shards_and_refuses_another_run(tmp_path, tok):
    texts = _many_documents(tmp_path / "in", 12)
    out = tmp_path / "out"
    args = ([str(tmp_path / "in")], "text", out)
    first = prepare(*args, shard_chars=150, workers=1, progress=False)
    assert first["shards"]["count"] >= 3
    manifest_text = (out / "manifest.json").read_text()
    stamps = _stamps(out)

    again = prepare(*args, shard_chars=150, workers=2, progress=False)
    assert _stamps(out) == stamps
    assert again == first
    assert (out / "manifest.json").read_text() == manifest_text

    (out / "shard-00001.stats.json").unlink()
    third = prepare(*args, shard_chars=150, workers=1, progress=False)
    after = _stamps(out)
    changed = sorted(name for name in stamps if after[name] != stamps[name])
    assert changed == ["shard-00001.arrayrecord", "shard-00001.lengths.npy"]
    assert (out / "shard-00001.stats.json").is_file()
    assert third == first
    assert [r for s in read_shards(out) for r in s] == expected_records(tok, texts)

    with pytest.raises(PrepareError, match="different prepare run"):
        prepare(*args, shard_chars=150, max_doc_tokens=20, workers=1, progress=False)
    assert _stamps(out) == after


# ------------------------------------------------------------------------------ embedded, errors


def test_embedded_split(tmp_path, tok):
    out = tmp_path / "out"
    manifest = prepare(["heldout"], "embedded", out, workers=1, progress=False)
    docs = [doc.text for doc in embedded_documents("heldout")]
    assert manifest["documents"] == len(docs) > 0
    assert manifest["source"]["format"] == "embedded"
    shards = read_shards(out)
    assert [r for s in shards for r in s] == expected_records(tok, docs)

    with pytest.raises(SourceError, match="validation"):
        prepare(["validation"], "embedded", tmp_path / "bad", workers=1, progress=False)


def test_input_and_option_errors(tmp_path):
    missing = tmp_path / "does-not-exist.txt"
    with pytest.raises(SourceError, match="does-not-exist.txt"):
        prepare([str(missing)], "text", tmp_path / "o1", workers=1, progress=False)
    with pytest.raises(PrepareError, match="csv"):
        prepare([str(missing)], "csv", tmp_path / "o2", workers=1, progress=False)
    write(tmp_path / "a.txt", "some text")
    with pytest.raises(PrepareError, match="max_doc_tokens"):
        prepare([str(tmp_path / "a.txt")], "text", tmp_path / "o3", max_doc_tokens=1)
    with pytest.raises(SourceError, match="text_unit"):
        prepare([str(tmp_path / "a.txt")], "text", tmp_path / "o4", text_unit="line", workers=1)


def test_bom_edited_inputs_and_missing_inputs(tmp_path, tok):
    # A UTF-8 byte-order mark (Windows editors) is not part of the first record.
    bom = write(tmp_path / "bom.jsonl", b'\xef\xbb\xbf{"text": "first"}\n{"text": "second"}\n')
    manifest = prepare([str(bom)], "jsonl", tmp_path / "bom_out", workers=1, progress=False)
    assert read_shards(tmp_path / "bom_out") == [expected_records(tok, ["first", "second"])]
    assert manifest["bad_records"] == bad()
    # Re-running after the input was edited is refused instead of keeping stale shards.
    doc = write(tmp_path / "in" / "a.txt", "old text")
    prepare([str(doc)], "text", tmp_path / "edit_out", workers=1, progress=False)
    write(doc, "new and longer text")
    with pytest.raises(PrepareError, match="different prepare run"):
        prepare([str(doc)], "text", tmp_path / "edit_out", workers=1, progress=False)
    # A missing input fails before the output directory is created.
    with pytest.raises(SourceError, match="missing.txt"):
        prepare([str(tmp_path / "missing.txt")], "text", tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()


def test_heldout_fraction_splits_documents_by_their_hash(tmp_path, tok):
    """`illada prepare --heldout-fraction F`: OUTPUT-heldout holds exactly the documents whose
    SHA-256, read as a number in [0, 1), is below F (a float64 reference computed here), OUTPUT
    the others, whatever the input order."""
    import subprocess
    import sys

    texts = [f"document number {k}: " + "the word " * (k % 5 + 1) for k in range(40)]
    for order, name in ((texts, "a.jsonl"), (texts[::-1], "b.jsonl")):
        (tmp_path / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in order))
    expected = {t for t in texts
                if int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big") / 2.0**64 < 0.25}  # fmt: skip
    assert 0 < len(expected) < len(texts)
    for name in ("a.jsonl", "b.jsonl"):
        out = tmp_path / name.replace(".jsonl", "")
        result = subprocess.run(
            [sys.executable, "-m", "illada_jax.cli", "prepare", "--format", "jsonl", "--input",
             str(tmp_path / name), "--output", str(out), "--heldout-fraction", "0.25", "--quiet"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr

        def records(directory):
            return sorted(tuple(r) for shard in read_shards(directory) for r in shard)

        held_texts = [t for t in texts if t in expected]
        rest_texts = [t for t in texts if t not in expected]
        assert records(pathlib.Path(f"{out}-heldout")) == sorted(
            tuple(r) for r in expected_records(tok, held_texts)
        )
        assert records(out) == sorted(tuple(r) for r in expected_records(tok, rest_texts))


def test_a_heldout_fraction_that_selects_nothing_is_one_clear_error(tmp_path):
    """One document whose hash is above the fraction: the held-out part (prepared first) is
    empty, which is refused naming the option and the fix; the training part is not written."""
    import subprocess
    import sys

    text = "only one document here"
    assert int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0**64 >= 0.05
    (tmp_path / "one.jsonl").write_text(json.dumps({"text": text}) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "illada_jax.cli", "prepare", "--format", "jsonl", "--input",
         str(tmp_path / "one.jsonl"), "--output", str(tmp_path / "out"),
         "--heldout-fraction", "0.05", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--heldout-fraction 0.05 left the heldout part" in result.stderr
    assert "raise the fraction" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
