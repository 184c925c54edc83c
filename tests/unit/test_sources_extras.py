"""`--format tfds` and `--format seqio` on the real packages (`[tfds]`, `[seqio]` extras).

TFDS: the fixture builders (tests/fixtures/tfds_mini) prepared under temporary data dirs, read by
directory and by name (version, config, split) through `prepare()`, `sources` and the CLI in a
fresh process (which reads the prepared files without the builder code).
seqio: tasks and mixtures registered here (unique names, removed after) over text files written
here, tokenised with `seqio.SentencePieceVocabulary`s of the shipped models. Expected ids come
from `sentencepiece` run directly on the model files, never from the code under test. Each test
skips when its extra is missing; seqio brings TensorFlow (~10 s to import, once per process).
"""

from __future__ import annotations

import collections
import functools
import json
import pathlib
import subprocess
import sys
import uuid

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader

from illada_jax.cli import main as cli_main
from illada_jax.data.preparation.prepare import prepare, tokenize_documents
from illada_jax.data.sources import formats, records, tfds_source
from illada_jax.data.tokenizers.tokenizer import Tokenizer, default_model_path, shipped_model_path

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
EOS, MASK = 3, 4  # the shipped tokenizers' ids
SP8K, SP1K = default_model_path(), shipped_model_path("sp1k")
# An empty line and a whitespace-only one: text documents drop both (empty_skipped); as token ids
# the whitespace line is three "▁" pieces and is kept (the shipped models keep whitespace).
LINES = [
    "The cat sat on the mat.",
    "Deux chats, très bien — ünïcode.",
    "",
    "   ",
    "Numbers 12345 and punctuation?!",
]


def sp_ids(model: pathlib.Path, texts) -> list[list[int]]:
    """The reference: SentencePiece itself on the model file."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(model))
    return [processor.encode(text, out_type=int) for text in texts]


def read_records(out: pathlib.Path) -> list[list[int]]:
    """Every record of every shard, in shard order, read with ArrayRecord directly."""
    records = []
    for path in sorted(out.glob("shard-*.arrayrecord")):
        reader = ArrayRecordReader(str(path))
        records.extend(np.frombuffer(r, "<i4").tolist() for r in reader.read_all())
        reader.close()
    return records


def write_lines(path: pathlib.Path, lines) -> pathlib.Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------ tfds


@pytest.fixture(scope="module")
def tfds_dirs(tmp_path_factory):
    """TFDS data dirs: `array_record` holds tfds_mini and tfds_mini_configs small and big (all
    1.0.0); `empty` holds nothing."""
    pytest.importorskip("tensorflow_datasets")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(FIXTURES))  # TFDS builders must live in a package
        import tfds_mini

        root = tmp_path_factory.mktemp("tfds")
        data_dir = str(root / "array_record")
        builders = [
            tfds_mini.TfdsMini(data_dir=data_dir, file_format="array_record"),
            tfds_mini.TfdsMiniConfigs(
                config="small", data_dir=data_dir, file_format="array_record"
            ),
            tfds_mini.TfdsMiniConfigs(config="big", data_dir=data_dir, file_format="array_record"),
        ]
        for builder in builders:
            builder.download_and_prepare()
        (root / "empty").mkdir()
        yield {"array_record": data_dir, "empty": str(root / "empty"), "module": tfds_mini}


def configs_texts(config: str, split: str, version: str, count: int) -> list[str]:
    """What TfdsMiniConfigs writes (see the fixture)."""
    return [f"{config} {split} v{version} document {i}" for i in range(count)]


def test_tfds_array_record_dataset(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.syspath_prepend(str(FIXTURES))  # TFDS builders must live in a package
    from tfds_mini import TEXTS, TfdsMini

    builder = TfdsMini(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    stats = collections.Counter()
    docs = list(formats.iter_documents("tfds", [f"{builder.data_dir}:train"], stats, field="text"))
    # TFDS shuffles examples on write: compare as sets; the empty text is dropped and counted.
    assert sorted(docs) == sorted(t for t in TEXTS if t)
    assert stats == {"empty_skipped": 1}


def test_tfds_by_name_with_version_config_and_split(tmp_path, tfds_dirs):
    data_dir = tfds_dirs["array_record"]
    inputs = ["tfds_mini_configs/small:1.0.0:test", "tfds_mini_configs/big"]
    manifest = prepare(
        inputs, "tfds", tmp_path / "out", data_dir=data_dir, workers=1, progress=False
    )
    records = read_records(tmp_path / "out")
    small_test = configs_texts("small", "test", "1.0.0", 2)
    big_train = configs_texts("big", "train", "1.0.0", 6)  # default version and split
    # Inputs in order; within one, TFDS's stored (write-shuffled) order: compare as sets.
    assert sorted(records[:2]) == sorted(ids + [EOS] for ids in sp_ids(SP8K, small_test))
    assert sorted(records[2:]) == sorted(ids + [EOS] for ids in sp_ids(SP8K, big_train))
    described = manifest["source"]["tfds"]
    assert [d["dataset"] for d in described] == [
        "tfds_mini_configs/small/1.0.0",
        "tfds_mini_configs/big/1.0.0",
    ]
    assert [d["split"] for d in described] == ["test", "train"]
    assert [d["examples"] for d in described] == [2, 6]
    assert {d["file_format"] for d in described} == {"array_record"}
    assert all(d["data_dir"].startswith(data_dir) for d in described)
    assert manifest["source"]["data_dir"] == data_dir

    # TFDS's split slicing; a version wildcard.
    docs = list(
        formats.iter_documents(
            "tfds", ["tfds_mini_configs/big:1.*.*:train[:50%]"], collections.Counter(),
            data_dir=data_dir,
        )
    )  # fmt: skip
    assert len(docs) == 3 and set(docs) <= set(big_train)


def test_tfds_by_name_through_the_cli_in_a_fresh_process(tmp_path, tfds_dirs):
    """A fresh `illada prepare` never imports the builder code: TFDS reads the prepared files."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "illada_jax.cli", "prepare", "--format", "tfds", "--input",
               "tfds_mini:1.0.0", "--data-dir", tfds_dirs["array_record"], "--output", str(out),
               "--workers", "1", "--quiet"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    texts = [t for t in tfds_dirs["module"].TEXTS if t]
    assert sorted(read_records(out)) == sorted(ids + [EOS] for ids in sp_ids(SP8K, texts))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["tfds"][0]["dataset"] == "tfds_mini/1.0.0"
    assert manifest["bad_records"]["empty_skipped"] == 1


def test_tfds_name_not_prepared_is_a_clear_error(tmp_path, tfds_dirs):
    empty = tfds_dirs["empty"]
    # Registered (its builder code is imported) but not prepared under this data dir.
    with pytest.raises(formats.SourceError, match="not prepared under") as err:
        prepare(["tfds_mini"], "tfds", tmp_path / "out", data_dir=empty, progress=False)
    assert empty in str(err.value) and "tfds build tfds_mini" in str(err.value)
    assert "download_and_prepare" in str(err.value)
    assert not (tmp_path / "out").exists()  # refused before anything is written
    # The same through the CLI: exit status 2 and the message.
    argv = ["prepare", "--format", "tfds", "--input", "tfds_mini:1.0.0:train", "--data-dir",
            empty, "--output", str(tmp_path / "cli"), "--quiet"]  # fmt: skip
    assert cli_main(argv) == 2
    # Neither registered nor prepared: a short message (not TFDS's list of every dataset).
    with pytest.raises(formats.SourceError, match="not registered and not prepared") as err:
        formats.describe("tfds", ["no_such_dataset_xyz:train"], data_dir=empty)
    assert "tfds build no_such_dataset_xyz" in str(err.value) and len(str(err.value)) < 1000
    data_dir = tfds_dirs["array_record"]
    for spec, pattern in [
        ("tfds_mini:9.9.9", "cannot be loaded at version 9.9.9"),
        ("tfds_mini:1.0.0:validation", "no split 'validation'"),
        ("tfds_mini:1.0.0:train:extra", "expected NAME"),
    ]:
        with pytest.raises(formats.SourceError, match=pattern):
            formats.describe("tfds", [spec], data_dir=data_dir)
    with pytest.raises(formats.SourceError, match="no feature 'body'.*'text'"):
        formats.describe("tfds", ["tfds_mini"], field="body", data_dir=data_dir)


def test_tfds_tfrecord_dataset_is_read_with_tf_data(tmp_path, tfds_dirs):
    """No random access in tfrecord: `as_dataset` (TensorFlow) instead of `as_data_source`."""
    pytest.importorskip("tensorflow")
    data_dir = str(tmp_path / "tfrecord")
    tfds_dirs["module"].TfdsMini(data_dir=data_dir, file_format="tfrecord").download_and_prepare()
    stats = collections.Counter()
    docs = list(formats.iter_documents("tfds", ["tfds_mini"], stats, data_dir=data_dir))
    assert sorted(docs) == sorted(t for t in tfds_dirs["module"].TEXTS if t)
    assert stats == {"empty_skipped": 1}
    assert (
        formats.describe("tfds", ["tfds_mini"], data_dir=data_dir)["tfds"][0]["file_format"]
        == "tfrecord"
    )


def test_tfds_and_seqio_input_grammar():
    assert records.spec_parts("gs://bucket/ds/1.0.0:test") == ["gs://bucket/ds/1.0.0", "test"]
    assert records.spec_parts("wiki/20230601.en:1.0.0:train[:10%]") == [
        "wiki/20230601.en",
        "1.0.0",
        "train[:10%]",
    ]
    assert records.spec_parts("mnist:3.*.*") == ["mnist", "3.*.*"]
    assert tfds_source._TFDS_VERSION.fullmatch("3.*.*") and tfds_source._TFDS_VERSION.fullmatch(
        "1.10.0"
    )
    assert not tfds_source._TFDS_VERSION.fullmatch(
        "train"
    ) and not tfds_source._TFDS_VERSION.fullmatch("1.0")


def test_tfds_without_the_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import -> ImportError
    with pytest.raises(formats.SourceError, match=r"\[tfds\] extra"):
        list(formats.iter_documents("tfds", ["mnist"], collections.Counter()))


# ------------------------------------------------------------------------------ seqio


class SeqioRegistry:
    """Tasks and mixtures under names unique to one test (seqio's registries are global)."""

    def __init__(self, seqio):
        self.seqio = seqio
        self.prefix = f"illada_test_{uuid.uuid4().hex[:10]}"
        self.tasks: list[str] = []
        self.mixtures: list[str] = []

    def name(self, suffix: str) -> str:
        return f"{self.prefix}_{suffix}"

    def task(self, suffix: str, **kwargs) -> str:
        name = self.name(suffix)
        self.tasks.append(name)
        self.seqio.TaskRegistry.add(name, **kwargs)
        return name

    def line_task(
        self,
        suffix: str,
        path: pathlib.Path,
        vocab=None,
        *,
        keys=("targets",),
        copy_pretokenized: bool = True,
        after=(),
    ) -> str:
        """Each line of `path` as the features `keys` (`inputs` gets a "Q: " prefix); with a
        vocabulary, tokenised (`seqio.preprocessors.tokenize`) and EOS-terminated (`append_eos`).
        `after`: preprocessors run last."""
        import tensorflow as tf

        def to_features(dataset):
            return dataset.map(
                lambda line: {
                    k: tf.strings.join(["Q: ", line]) if k == "inputs" else line for k in keys
                }  # fmt: skip
            )

        preprocessors, features = [to_features], {}
        if vocab is not None:
            preprocessors += [
                functools.partial(
                    self.seqio.preprocessors.tokenize, copy_pretokenized=copy_pretokenized
                ),
                self.seqio.preprocessors.append_eos,
            ]
            features = {k: self.seqio.Feature(vocab, add_eos=True) for k in keys}
        return self.task(
            suffix,
            source=self.seqio.TextLineDataSource({"train": str(path)}),
            preprocessors=[*preprocessors, *after],
            output_features=features,
        )

    def close(self):
        for name in self.mixtures:
            self.seqio.MixtureRegistry.remove(name)
        for name in self.tasks:
            self.seqio.TaskRegistry.remove(name)


@pytest.fixture
def registry():
    seqio = pytest.importorskip("seqio")
    registry = SeqioRegistry(seqio)
    yield registry
    registry.close()
    seqio.set_tfds_data_dir_override(None)


def vocabulary(seqio, model: pathlib.Path, **kwargs):
    return seqio.SentencePieceVocabulary(str(model), **kwargs)


def garble_pretokenized(dataset):
    """Change the `_pretokenized` copy after tokenising: records that still match the reference
    were built from the ids, not re-tokenised from this text."""
    import tensorflow as tf

    return dataset.map(lambda ex: {**ex, "targets_pretokenized": tf.constant("garbled")})


def test_seqio_task_in_our_vocabulary_is_read_as_ids(tmp_path, registry):
    lines = write_lines(tmp_path / "lines.txt", LINES)
    vocab = vocabulary(registry.seqio, SP8K)
    task = registry.line_task("ids", lines, vocab, after=[garble_pretokenized])
    manifest = prepare([f"{task}:train"], "seqio", tmp_path / "out", workers=1, progress=False)
    # Default --field: `text` is absent, so `targets`. seqio's EOS is dropped and ours appended
    # once; the whitespace line is ids ("▁▁▁"), only the empty line is skipped.
    expected = [ids + [EOS] for ids in sp_ids(SP8K, LINES) if ids]
    assert [ids for ids in sp_ids(SP8K, ["   "])] == [[8109, 8109, 8109]]
    assert read_records(tmp_path / "out") == expected
    described = manifest["source"]["seqio"]
    assert described["mode"] == "ids" and described["features"] == ["targets"]
    assert described["vocabulary"]["same_as_tokenizer"] is True
    assert described["vocabulary"]["file"] == str(SP8K)
    assert described["tasks"][0]["task"] == task and described["tasks"][0]["split"] == "train"
    assert manifest["bad_records"]["empty_skipped"] == 1
    assert manifest["documents"] == len(expected)


def test_seqio_task_in_another_vocabulary_is_retokenized(tmp_path, registry):
    lines = write_lines(tmp_path / "lines.txt", LINES)
    task = registry.line_task("sp1k", lines, vocabulary(registry.seqio, SP1K))
    manifest = prepare([task], "seqio", tmp_path / "out", workers=1, progress=False)
    expected = [ids + [EOS] for line, ids in zip(LINES, sp_ids(SP8K, LINES)) if line.strip()]
    assert sp_ids(SP1K, LINES[:1]) != sp_ids(SP8K, LINES[:1])  # the task's ids are not ours
    assert read_records(tmp_path / "out") == expected
    described = manifest["source"]["seqio"]
    assert described["mode"] == "retokenized"
    assert described["vocabulary"]["same_as_tokenizer"] is False
    assert described["vocabulary"]["vocab_size"] == 1024
    assert manifest["bad_records"]["empty_skipped"] == 2


def test_seqio_vocabulary_comparison(tmp_path, registry):
    """Same model proto -> ids; extra ids, another model or an HF tokenizer -> re-tokenised."""
    seqio = registry.seqio
    lines = write_lines(tmp_path / "lines.txt", LINES)
    sp1k = Tokenizer.load("shipped:sp1k")
    cases = [
        (vocabulary(seqio, SP8K), Tokenizer.default(), "ids"),
        (vocabulary(seqio, SP8K, extra_ids=10), Tokenizer.default(), "retokenized"),
        (vocabulary(seqio, SP1K), Tokenizer.default(), "retokenized"),
        (vocabulary(seqio, SP1K), sp1k, "ids"),
        (seqio.ByteVocabulary(), Tokenizer.default(), "retokenized"),
    ]
    for index, (vocab, tokenizer, mode) in enumerate(cases):
        task = registry.line_task(f"v{index}", lines, vocab)
        described = formats.describe("seqio", [task], tokenizer=tokenizer)["seqio"]
        assert described["mode"] == mode, (index, described)


def test_seqio_other_vocabulary_without_pretokenized_text_is_refused(tmp_path, registry):
    lines = write_lines(tmp_path / "lines.txt", LINES)
    task = registry.line_task(
        "nocopy", lines, vocabulary(registry.seqio, SP1K), copy_pretokenized=False
    )
    with pytest.raises(formats.SourceError, match="copy_pretokenized=True") as err:
        prepare([task], "seqio", tmp_path / "out", progress=False)
    assert "targets_pretokenized" in str(err.value) and "--field" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_seqio_text_only_task(tmp_path, registry):
    lines = write_lines(tmp_path / "lines.txt", LINES)
    task = registry.line_task("text", lines, keys=("text",))
    manifest = prepare([task], "seqio", tmp_path / "out", workers=1, progress=False)
    expected = [ids + [EOS] for line, ids in zip(LINES, sp_ids(SP8K, LINES)) if line.strip()]
    assert read_records(tmp_path / "out") == expected
    described = manifest["source"]["seqio"]
    assert described["mode"] == "text" and described["features"] == ["text"]
    assert described["vocabulary"] is None
    assert manifest["bad_records"]["empty_skipped"] == 2


def test_seqio_features_make_one_document(tmp_path, registry):
    """`--field inputs,targets`: each feature tokenised on its own, concatenated, one EOS; a text
    feature (`inputs_pretokenized`) and an ids feature mix."""
    lines = write_lines(tmp_path / "lines.txt", LINES)
    task = registry.line_task(
        "pair", lines, vocabulary(registry.seqio, SP8K), keys=("inputs", "targets")
    )
    prefixed, plain = sp_ids(SP8K, [f"Q: {line}" for line in LINES]), sp_ids(SP8K, LINES)
    expected = [p + t + [EOS] for p, t in zip(prefixed, plain)]
    tokenizer = Tokenizer.default()
    for field in ("inputs,targets", "inputs_pretokenized, targets"):
        stats = collections.Counter()
        docs = list(
            formats.iter_documents("seqio", [task], stats, field=field, tokenizer=tokenizer)
        )
        records, _ = tokenize_documents(tokenizer, docs, 1 << 20)
        assert [r.tolist() for r in records] == expected, field
        assert stats == {}
    with pytest.raises(formats.SourceError, match="no feature 'answers'.*inputs_pretokenized"):
        formats.describe("seqio", [task], field="inputs,answers", tokenizer=tokenizer)


def test_seqio_ids_holding_the_mask_id_are_refused(tmp_path, registry):
    import tensorflow as tf

    def add_mask(dataset):
        return dataset.map(lambda ex: {**ex, "targets": tf.concat([ex["targets"], [MASK]], 0)})

    lines = write_lines(tmp_path / "lines.txt", LINES[:1])
    task = registry.line_task("mask", lines, vocabulary(registry.seqio, SP8K), after=[add_mask])
    documents = formats.iter_documents(
        "seqio", [task], collections.Counter(), tokenizer=Tokenizer.default()
    )
    with pytest.raises(formats.SourceError, match=f"mask id {MASK}"):
        list(documents)


def test_seqio_mixture_by_name_through_the_cli(tmp_path, registry, monkeypatch):
    """A mixture registered by `--seqio-module`: its tasks in full, by name, rates recorded."""
    first = write_lines(tmp_path / "a.txt", LINES[:2])
    second = write_lines(tmp_path / "b.txt", LINES[4:])
    module = f"{registry.prefix}_tasks"
    a, b, mixture = registry.name("a"), registry.name("b"), registry.name("mix")
    registry.tasks += [a, b]
    registry.mixtures.append(mixture)
    (tmp_path / f"{module}.py").write_text(
        f"""import seqio

vocab = seqio.SentencePieceVocabulary({str(SP8K)!r})
for name, path in [({b!r}, {str(second)!r}), ({a!r}, {str(first)!r})]:
    seqio.TaskRegistry.add(
        name,
        source=seqio.TextLineDataSource({{"train": path}}),
        preprocessors=[lambda ds: ds.map(lambda line: {{"targets": line}}),
                       seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={{"targets": seqio.Feature(vocab)}},
    )
seqio.MixtureRegistry.add({mixture!r}, [({b!r}, 3), ({a!r}, 1)])
"""
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    argv = ["prepare", "--format", "seqio", "--input", f"{mixture}:train", "--seqio-module",
            module, "--output", str(out), "--workers", "1", "--quiet"]  # fmt: skip
    assert cli_main(argv) == 0
    expected = [ids + [EOS] for ids in sp_ids(SP8K, LINES[:2] + LINES[4:])]  # task a, then b
    assert read_records(out) == expected
    described = json.loads((out / "manifest.json").read_text())["source"]["seqio"]
    assert [(t["task"], t["rate"], t["mode"]) for t in described["tasks"]] == [
        (a, 1.0, "ids"),
        (b, 3.0, "ids"),
    ]
    assert cli_main([*argv[:4], registry.name("nothing"), *argv[5:]]) == 2  # not registered


def test_seqio_task_reading_tfds_under_data_dir(tmp_path, registry, tfds_dirs):
    """`--data-dir` is seqio's TFDS data dir (T5X's --tfds_data_dir) for a TfdsDataSource task;
    seqio reads TFDS with tf.data, so the dataset is prepared as tfrecord."""
    data_dir = str(tmp_path / "tfrecord")
    tfds_dirs["module"].TfdsMini(data_dir=data_dir, file_format="tfrecord").download_and_prepare()
    seqio = registry.seqio
    task = registry.task(
        "tfds", source=seqio.TfdsDataSource("tfds_mini:1.0.0"), preprocessors=[],
        output_features={},
    )  # fmt: skip
    stats = collections.Counter()
    docs = list(formats.iter_documents("seqio", [task], stats, data_dir=data_dir))
    assert sorted(docs) == sorted(t for t in tfds_dirs["module"].TEXTS if t)
    assert stats == {"empty_skipped": 1}


def test_seqio_without_the_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "seqio", None)  # import seqio -> ImportError
    with pytest.raises(formats.SourceError, match=r"\[seqio\] extra"):
        list(formats.iter_documents("seqio", ["t"], collections.Counter()))
