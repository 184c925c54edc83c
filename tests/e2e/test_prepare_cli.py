"""`illada prepare` and `illada tokenizer train` run as a user would (a subprocess per command)."""

from __future__ import annotations

import hashlib
import json
import pathlib

import numpy as np
import pytest
from _cli import FAST_TRAIN, illada
from array_record.python.array_record_module import ArrayRecordReader

from illada_jax.data.tokenizers.tokenizer import Tokenizer
from illada_jax.data.tokenizers.tokenizer_train import train_tokenizer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A tokenizer splits text into pieces that a model can read.",
    "Masked diffusion models predict hidden tokens from the visible ones.",
    "Shards of token ids are written with a manifest beside them.",
    "Numbers like 12, 345 and 6789 appear now and then.",
]


def training_text(kilobytes: int = 4) -> str:
    lines, size, i = [], 0, 0
    while size < kilobytes * 1024:
        line = f"{SENTENCES[i % len(SENTENCES)]} ({i})\n"
        lines.append(line)
        size += len(line)
        i += 1
    return "".join(lines)


def records(out: pathlib.Path) -> list[list[int]]:
    result = []
    for path in sorted(out.glob("shard-*.arrayrecord")):
        reader = ArrayRecordReader(str(path))
        result.extend(np.frombuffer(r, "<i4").tolist() for r in reader.read_all())
        reader.close()
    return result


def test_prepare_prints_summary_and_writes_manifest(tmp_path):
    texts = {"a.txt": "First document.\n", "b.txt": "Second document, a bit longer.\n"}
    for name, text in texts.items():
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_text(text)
    (tmp_path / "in" / "c.txt").write_text(" \n")  # whitespace only: counted, not kept
    out = tmp_path / "out"
    result = illada(
        "prepare",
        "--format",
        "text",
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(out),
        "--workers",
        "1",
    )
    assert result.returncode == 0, result.stderr
    tok = Tokenizer.default()
    tokens = sum(len(tok.encode(t)) + 1 for t in texts.values())
    assert result.stdout.splitlines() == [
        f"prepared 2 documents, {tokens} tokens in 1 shards -> {out}",
        "bad records: {'empty_skipped': 1}",
    ]
    assert "prepare" in result.stderr  # the progress bar (no --quiet)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["documents"] == 2 and manifest["tokens"] == tokens
    assert manifest["bad_records"]["empty_skipped"] == 1
    assert records(out) == [[*tok.encode(t), tok.eos_id] for t in texts.values()]


def test_prepare_missing_input_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-input.jsonl"
    result = illada(
        "prepare",
        "--format",
        "jsonl",
        "--input",
        str(missing),
        "--output",
        str(tmp_path / "out"),
        "--quiet",
    )
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_tokenizer_train_cli(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(training_text())
    result = illada(
        "tokenizer",
        "train",
        "--input",
        str(corpus),
        "--vocab-size",
        "300",
        "--type",
        "bpe",
        "--output",
        str(tmp_path / "tok"),
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    assert "vocab_size=300" in result.stdout
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.vocab_size == 300 and (loaded.mask_id, loaded.eos_id) == (4, 3)


@pytest.fixture
def tiny_bpe(tmp_path) -> pathlib.Path:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(training_text())
    train_tokenizer([corpus], tmp_path / "bpe300", 300, kind="bpe")
    return tmp_path / "bpe300"


def test_train_refuses_data_prepared_with_another_tokenizer(tmp_path, tiny_bpe):
    (tmp_path / "in.jsonl").write_text(
        "\n".join(json.dumps({"text": s * 3}) for s in SENTENCES) + "\n"
    )
    data = tmp_path / "data"
    result = illada(
        "prepare",
        "--format",
        "jsonl",
        "--input",
        str(tmp_path / "in.jsonl"),
        "--output",
        str(data),
        "--tokenizer",
        str(tiny_bpe),
        "--workers",
        "1",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((data / "manifest.json").read_text())
    sha = hashlib.sha256((tiny_bpe / "tokenizer.json").read_bytes()).hexdigest()
    assert manifest["tokenizer"]["vocab_size"] == 300
    assert manifest["tokenizer"]["sha256"] == sha
    assert manifest["tokenizer"]["identity"] == f"hf:{sha}"
    bpe = Tokenizer.load(tiny_bpe)
    assert records(data) == [[*bpe.encode(s * 3), bpe.eos_id] for s in SENTENCES]

    run = illada(
        "train",
        *FAST_TRAIN,
        f"--config=set:data.datasets=({str(data)!r},)",
        f"--workdir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "vocab_size 300 != model.vocab_size 1024" in run.stderr  # the tiny demo model
    assert str(data) in run.stderr
    assert "Traceback" not in run.stderr
