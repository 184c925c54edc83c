"""`illada prepare --runner beam` (`illada_jax.data.preparation.beam_prepare`) against the single-host path.

Beam runs on the DirectRunner's engine with 2 worker processes; module fixtures share one Beam run
per input set, since worker start-up dominates. The oracle is independent of the Beam code: the
single-host `prepare()` output of the same inputs, shards decoded here with ArrayRecord
(`test_prepare.read_shards`), and token ids computed from the texts (`expected_records`).
"""

from __future__ import annotations

import collections
import filecmp
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("apache_beam")

from test_prepare import (  # noqa: E402 (after the skip)
    BAD_KEYS,
    expected_records,
    messy_jsonl_lines,
    read_manifest,
    read_shards,
    write,
)

from illada_jax.cli import main as cli_main  # noqa: E402
from illada_jax.data.pipeline.batches import Pipeline, PipelineSpec  # noqa: E402
from illada_jax.data.pipeline.packing import PreparedDataset  # noqa: E402
from illada_jax.data.preparation.beam_prepare import pipeline_options, prepare_beam  # noqa: E402
from illada_jax.data.preparation.prepare import PrepareError, prepare  # noqa: E402
from illada_jax.data.sources.corpus import embedded_documents  # noqa: E402
from illada_jax.data.sources.formats import SourceError  # noqa: E402
from illada_jax.data.tokenizers.tokenizer import Tokenizer  # noqa: E402

SHARD_CHARS = 150_000  # several shards per big file, several files per unit for small ones
MAX_DOC_TOKENS = 512  # most embedded documents are longer: many overlong splits
COUNTS = ("documents", "records", "tokens")
SINGLE = dict(shard_chars=60_000, max_doc_tokens=MAX_DOC_TOKENS)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.default()


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return [d.text for d in embedded_documents("train")]


def jsonl(texts) -> bytes:
    return b"".join(json.dumps({"text": t}).encode() + b"\n" for t in texts)


def take(docs: list[str], start: int, chars: int) -> tuple[list[str], int]:
    """Documents from `start` until they hold `chars` characters; (documents, next start)."""
    stop, size = start, 0
    while size < chars:
        size += len(docs[stop])
        stop += 1
    return docs[start:stop], stop


def run_both(inputs, fmt, root: pathlib.Path, **kwargs) -> tuple[pathlib.Path, pathlib.Path]:
    """(single-host output, Beam output with 2 worker processes) of the same inputs."""
    prepare(inputs, fmt, root / "local", workers=2, progress=False, **kwargs)
    prepare_beam(inputs, fmt, root / "beam", progress=False, **kwargs)
    return root / "local", root / "beam"


@pytest.fixture(scope="module")
def multi_jsonl(tmp_path_factory, docs):
    """About 2 MB of jsonl in 7 files, with the messy records of test_prepare.py, a file of bad
    records only and an empty file: several work units, and units of several files."""
    root = tmp_path_factory.mktemp("multi")
    long_text = " ".join(f"word{i} and sentence number {i}." for i in range(300))
    write(root / "in/a_messy.jsonl", b"\n".join(messy_jsonl_lines(long_text, "at the edge")))
    b, start = take(docs, 0, 600_000)
    write(root / "in/b.jsonl", jsonl(b))
    write(root / "in/c_bad_only.jsonl", b'{"text": ""}\nnot json\n{"body": 1}\n\xff\xfe\n')
    write(root / "in/d_empty.jsonl", b"")
    e, start = take(docs, start, 500_000)
    write(root / "in/e.jsonl", jsonl(e[:5]) + b'{"text": "bad \xff byte"}\n' + jsonl(e[5:]))
    f, start = take(docs, start, 400_000)
    write(root / "in/sub/f.jsonl", jsonl(f) + b'{"text": null}\n')
    g, _ = take(docs, start, 200_000)
    write(root / "g.jsonl", jsonl(g))
    inputs = [str(root / "in"), str(root / "g.jsonl")]
    kwargs = dict(shard_chars=SHARD_CHARS, max_doc_tokens=MAX_DOC_TOKENS)
    local, beam = run_both(inputs, "jsonl", root, **kwargs)
    one = root / "beam_1"  # one worker, in this process
    options = ["--direct_running_mode=in_memory"]
    prepare_beam(inputs, "jsonl", one, beam_options=options, workers=1, progress=False, **kwargs)
    return dict(inputs=inputs, kwargs=kwargs, local=local, beam=beam, one_worker=one)


@pytest.fixture(scope="module")
def single_jsonl(tmp_path_factory, docs):
    """One jsonl file (one work unit) cut into several shards."""
    root = tmp_path_factory.mktemp("single")
    texts, _ = take(docs, 100, 400_000)
    write(root / "one.jsonl", jsonl(texts))
    local, beam = run_both([str(root / "one.jsonl")], "jsonl", root, **SINGLE)
    return dict(input=str(root / "one.jsonl"), texts=texts, local=local, beam=beam)


@pytest.fixture(scope="module")
def parquet_pair(tmp_path_factory, docs):
    """Two parquet files of a binary column: documents, nulls, empty and invalid UTF-8 values."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("parquet")
    a, start = take(docs, 300, 150_000)
    b, _ = take(docs, start, 150_000)
    values_a = (
        [t.encode() for t in a[:3]] + [None, b"", b"caf\xe9 latin-1"] + [t.encode() for t in a[3:]]
    )
    values_b = [b"  \n", *(t.encode() for t in b), None]
    for name, values in (("a", values_a), ("b", values_b)):
        table = pa.table({"id": list(range(len(values))), "body": pa.array(values, pa.binary())})
        (root / "in").mkdir(exist_ok=True)
        pq.write_table(table, root / f"in/{name}.parquet", row_group_size=7)
    local, beam = run_both(
        [str(root / "in")], "parquet", root, field="body", shard_chars=50_000,
        max_doc_tokens=MAX_DOC_TOKENS,
    )  # fmt: skip
    return dict(local=local, beam=beam)


def records(out: pathlib.Path) -> list[list[int]]:
    return [r for shard in read_shards(out) for r in shard]


def check_same_data(local: pathlib.Path, beam: pathlib.Path) -> dict:
    """The Beam output has the single-host manifest counts and records (in the same order, shard
    by shard); its manifest agrees with its shards. Returns the Beam manifest."""
    want, got = read_manifest(local), read_manifest(beam)
    for key in (*COUNTS, "bad_records", "tokenizer", "source", "format_version", "rules"):
        assert got[key] == want[key], key
    assert got["options"] == {**want["options"], "runner": "beam"}
    local_records, beam_records = records(local), records(beam)
    assert collections.Counter(map(tuple, beam_records)) == collections.Counter(
        map(tuple, local_records)
    )
    assert beam_records == local_records  # the order guarantee: same records, same order
    shards = read_shards(beam)
    table = got["shards"]  # columnar: shard i is shard-{i:05d}
    assert table["count"] == len(shards)
    assert table["records"] == [len(s) for s in shards]
    assert table["tokens"] == [sum(map(len, s)) for s in shards]
    assert got["records"] == len(beam_records)
    assert got["tokens"] == sum(map(len, beam_records))
    for i, (n_records, n_tokens) in enumerate(zip(table["records"], table["tokens"])):
        lengths = np.load(beam / f"shard-{i:05d}.lengths.npy")
        assert lengths.sum() == n_tokens and len(lengths) == n_records
    # Nothing but shards and the manifest is left behind (no summary, no temporary files).
    names = {p.name for p in beam.iterdir()}
    assert names == {"manifest.json"} | {
        f"shard-{i:05d}.{ext}"
        for i in range(len(shards))
        for ext in ("arrayrecord", "lengths.npy", "stats.json")
    }
    return got


def test_several_files_same_counts_and_records_as_single_host(multi_jsonl):
    manifest = check_same_data(multi_jsonl["local"], multi_jsonl["beam"])
    # Every bad-record rule fired, and was summed over the workers' units.
    assert all(manifest["bad_records"][key] > 0 for key in BAD_KEYS), manifest["bad_records"]
    assert manifest["bad_records"]["bad_json_skipped"] >= 4 + 2
    assert manifest["tokens"] > 400_000 and manifest["records"] > manifest["documents"]
    # Shards never span work units, so they are cut differently from the single-host ones.
    assert manifest["shards"]["count"] > read_manifest(multi_jsonl["local"])["shards"]["count"]


def test_worker_count_does_not_change_a_byte(multi_jsonl):
    two, one = multi_jsonl["beam"], multi_jsonl["one_worker"]
    names = sorted(p.name for p in two.iterdir())
    assert names == sorted(p.name for p in one.iterdir())
    mismatch = filecmp.cmpfiles(two, one, names, shallow=False)[1:]
    assert mismatch == ([], [])


def test_parquet_same_counts_and_records_as_single_host(parquet_pair):
    manifest = check_same_data(parquet_pair["local"], parquet_pair["beam"])
    bad = manifest["bad_records"]
    assert bad["missing_field_skipped"] == 2 and bad["empty_skipped"] == 2
    assert bad["invalid_utf8_replaced"] == 1 and bad["overlong_split"] > 0


def test_one_file_gives_the_single_host_shards_and_batches(single_jsonl, tok):
    local, beam = single_jsonl["local"], single_jsonl["beam"]
    check_same_data(local, beam)
    manifest = read_manifest(beam)
    assert manifest["shards"]["count"] >= 4
    for i in range(manifest["shards"]["count"]):
        for name in (f"shard-{i:05d}.arrayrecord", f"shard-{i:05d}.lengths.npy"):
            assert (beam / name).read_bytes() == (local / name).read_bytes(), name
    assert read_shards(beam) == read_shards(local)
    assert records(beam) == expected_records(tok, single_jsonl["texts"], MAX_DOC_TOKENS)
    for aware in (False, True):
        spec = PipelineSpec(
            datasets=("x",), weights=(), seq_len=128, global_batch=8, seed=3,
            document_aware=aware, read_threads=1,
        )  # fmt: skip
        pipelines = [Pipeline(spec, [PreparedDataset(out)]) for out in (local, beam)]
        for step in (0, 1, 7):
            want, got = (p.global_batch(step) for p in pipelines)
            assert want.keys() == got.keys()
            for key in want:
                np.testing.assert_array_equal(got[key], want[key])


def test_cli_writes_to_gcs(single_jsonl, gcs_emulator):
    """`illada prepare --runner beam` in a subprocess, output on gs:// (a local emulator): the
    workers write shards and the summary through `storage`; read back here with gcsfs."""
    from gcsfs.core import GCSFileSystem  # the plain client: no gRPC probe of the bucket

    # epath uses TensorFlow's gfile when TensorFlow is installed (the [seqio] extra), which
    # ignores the emulator; gcsfs honours it.
    env = {**os.environ, **gcs_emulator, "EPATH_USE_TF": "false"}
    out = f"{gcs_emulator['BUCKET']}/beam-prepare"
    illada = pathlib.Path(sys.executable).with_name("illada")
    command = [str(illada), "prepare", "--runner", "beam", "--format", "jsonl", "--input",
               single_jsonl["input"], "--output", f"gs://{out}", "--quiet",
               *(f"--{k.replace('_', '-')}={v}" for k, v in SINGLE.items())]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"-> gs://{out}" in result.stdout
    fs = GCSFileSystem(endpoint_url=gcs_emulator["STORAGE_EMULATOR_HOST"], token="anon")
    manifest = json.loads(fs.cat(f"{out}/manifest.json"))
    assert manifest["shards"] == read_manifest(single_jsonl["beam"])["shards"]
    stems = [f"shard-{i:05d}" for i in range(manifest["shards"]["count"])]
    for name in (f"{stem}.{ext}" for stem in stems for ext in ("arrayrecord", "lengths.npy")):
        assert fs.cat(f"{out}/{name}") == (single_jsonl["local"] / name).read_bytes(), name
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(out)) == sorted(
        ["manifest.json"]
        + [
            f"{stem}.{ext}"
            for stem in stems
            for ext in ("arrayrecord", "lengths.npy", "stats.json")
        ]
    )


def _stamps(out: pathlib.Path) -> dict[str, tuple[int, int]]:
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in out.iterdir()
        if p.name.endswith((".arrayrecord", ".lengths.npy"))
    }


def test_cli_resumes_a_beam_run(multi_jsonl, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(multi_jsonl["beam"], out)
    (out / "manifest.json").unlink()
    (out / "shard-00001.stats.json").unlink()
    stamps = _stamps(out)
    kwargs = multi_jsonl["kwargs"]
    code = cli_main(
        ["prepare", "--runner", "beam", "--format", "jsonl", "--input", *multi_jsonl["inputs"],
         "--output", str(out), "--shard-chars", str(kwargs["shard_chars"]),
         "--max-doc-tokens", str(kwargs["max_doc_tokens"]), "--workers", "1", "--quiet",
         "--beam-option=--direct_running_mode=in_memory"]
    )  # fmt: skip
    assert code == 0
    assert "prepared" in capsys.readouterr().out
    after = _stamps(out)
    changed = sorted(name for name in stamps if after[name] != stamps[name])
    assert changed == ["shard-00001.arrayrecord", "shard-00001.lengths.npy"]
    assert read_manifest(out) == read_manifest(multi_jsonl["beam"])
    rewritten = "shard-00001.arrayrecord"
    assert filecmp.cmp(out / rewritten, multi_jsonl["beam"] / rewritten, shallow=False)


def test_refusals_before_any_pipeline_runs(multi_jsonl, tmp_path, capsys):
    inputs, kwargs = multi_jsonl["inputs"], multi_jsonl["kwargs"]
    # A single-host run's directory is another run (shard numbers may differ).
    with pytest.raises(PrepareError, match="different prepare run"):
        prepare_beam(inputs, "jsonl", multi_jsonl["local"], progress=False, **kwargs)
    with pytest.raises(PrepareError, match="different prepare run"):
        prepare_beam(inputs, "jsonl", multi_jsonl["beam"], progress=False, max_doc_tokens=99)
    # A cluster's workers cannot read this machine's files.
    with pytest.raises(PrepareError, match="gs://"):
        prepare_beam(
            inputs, "jsonl", tmp_path / "o1", beam_options=["--runner=DataflowRunner"],
            progress=False,
        )  # fmt: skip
    with pytest.raises(SourceError, match="missing.jsonl"):
        prepare_beam([str(tmp_path / "missing.jsonl")], "jsonl", tmp_path / "o2", progress=False)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    with pytest.raises(PrepareError, match="max_doc_tokens"):
        prepare_beam(inputs, "jsonl", tmp_path / "o3", max_doc_tokens=1, progress=False)

    base = ["prepare", "--output", str(tmp_path / "o4"), "--quiet"]
    assert cli_main([*base, "--format", "sft", "--input", "demo", "--runner", "beam"]) == 2
    assert "--format sft" in capsys.readouterr().err
    assert cli_main([*base, "--format", "jsonl", "--input", *inputs,
                     "--beam-option=--direct_num_workers=2"]) == 2  # fmt: skip
    assert "--runner beam" in capsys.readouterr().err
    assert not (tmp_path / "o4").exists()


def test_a_workers_error_is_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a document"]}), tmp_path / "a.parquet")
    with pytest.raises(PrepareError, match="SourceError: .*has no column 'nope'"):
        prepare_beam(
            [str(tmp_path / "a.parquet")], "parquet", tmp_path / "out", field="nope",
            beam_options=["--direct_running_mode=in_memory"], workers=1, progress=False,
        )  # fmt: skip


def test_pipeline_options_defaults_and_pass_through():
    def given(options, workers=2):
        return pipeline_options(options, workers).get_all_options(drop_default=True)

    local = given([], workers=3)
    assert local["runner"] == "FnApiRunner"
    assert local["direct_num_workers"] == 3
    assert local["direct_running_mode"] == "multi_processing"
    mine = given(["--direct_num_workers=5", "--direct_running_mode=multi_threading"])
    assert (mine["direct_num_workers"], mine["direct_running_mode"]) == (5, "multi_threading")
    cluster = ["--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/t"]
    dataflow = given(cluster)
    assert dataflow["runner"] == "DataflowRunner" and dataflow["project"] == "p"
    assert "direct_num_workers" not in dataflow and "direct_running_mode" not in dataflow
