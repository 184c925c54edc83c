"""Every `illada` subcommand given a wrong argument or a bad input file: one line naming the
argument or the file, exit code 2, no Python traceback (docs/troubleshooting.md).

Cases run in this process (`illada_jax.cli.main(argv)`): a subprocess per case would spend seconds
importing JAX each time. A few run as a real `illada` process to check what the shell sees, and
`--debug` / `ILLADA_DEBUG=1` are checked to show the traceback.

Placeholders `{name}` in a case's arguments and expected text are the fixture paths built below
(`{name.name}`: the file's base name, which the message must contain).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from _cli import FAST_TRAIN

from illada_jax.cli import main

# Bytes that are neither text nor any format read here: NUL bytes, invalid UTF-8.
GARBAGE = bytes(range(256)) * 16
HF_CONFIG = {  # a small, valid iLLaDA-layout config.json (the weights are what is damaged)
    "model_type": "illada",
    "hidden_size": 64,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "num_hidden_layers": 1,
    "intermediate_size": 128,
    "vocab_size": 1024,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
}
TEXT = "In the beginning God created the heaven and the earth.\n\nAnd the earth was void.\n"


def run_cli(argv: list[str], capfd) -> tuple[int, str]:
    """(exit code, stdout + stderr) of `illada ARGV` run in this process."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse: usage line and code 2
        code = exit_.code
    captured = capfd.readouterr()
    return code, captured.out + captured.err


# ---------------------------------------------------------------------------------------------
# Input files: the cheap ones once per module, the prepared dataset and run once per module.
# ---------------------------------------------------------------------------------------------


def _write(path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict:
    return build_inputs(tmp_path_factory.mktemp("inputs"))


def build_inputs(root) -> dict:
    """Bad inputs of every kind (nothing here needs JAX); `out`: a directory for outputs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = {
        "out": root / "outputs",
        "missing": root / "missing_input.txt",
        "text": root / "doc.txt",
        "empty": root / "empty_file.txt",
        "empty_dir": root / "empty_dir",
        "nonempty_dir": root / "nonempty_dir",
        "binary": root / "binary_garbage.txt",
        "not_utf8": root / "not_utf8.txt",
        "jsonl_no_field": root / "no_text_field.jsonl",
        "jsonl_garbage": root / "garbage.jsonl",
        "jsonl_empty": root / "empty.jsonl",
        "parquet": root / "good.parquet",
        "fake_parquet": root / "not_really.parquet",
        "empty_parquet": root / "empty.parquet",
        "truncated_parquet": root / "truncated.parquet",
        "bad_json": root / "bad_config.json",
        "empty_json": root / "empty_config.json",
        "list_json": root / "list_config.json",
        "unknown_field_json": root / "unknown_field.json",
        "wrong_type_json": root / "wrong_type.json",
        "garbage_model": root / "garbage_tokenizer.model",
        "empty_model": root / "empty_tokenizer.model",
        "garbage_tok_dir": root / "garbage_tok_dir",
        "sft_garbage": root / "sft_garbage.jsonl",
        "hf_garbage": root / "hf_garbage_weights",
        "hf_empty": root / "hf_empty_weights",
        "hf_truncated_header": root / "hf_truncated_header",
        "hf_bad_config": root / "hf_bad_config",
        "hf_no_weights": root / "hf_no_weights",
        "hf_bad_index": root / "hf_bad_index",
    }
    p["out"].mkdir()
    _write(p["text"], TEXT)
    _write(p["empty"], "")
    p["empty_dir"].mkdir()
    _write(p["nonempty_dir"] / "keep.txt", "x")
    _write(p["binary"], GARBAGE)
    _write(p["not_utf8"], b"\xff\xfe\xfd" * 300)
    _write(p["jsonl_no_field"], "".join(json.dumps({"body": f"doc {i}"}) + "\n" for i in range(5)))
    _write(p["jsonl_garbage"], GARBAGE)
    _write(p["jsonl_empty"], "")
    pq.write_table(pa.table({"text": [TEXT] * 4}), p["parquet"])
    _write(p["fake_parquet"], TEXT)
    _write(p["empty_parquet"], b"")
    _write(p["truncated_parquet"], p["parquet"].read_bytes()[:-40])
    _write(p["bad_json"], '{"train": {"steps": 3,')
    _write(p["empty_json"], "")
    _write(p["list_json"], "[1, 2]")
    _write(p["unknown_field_json"], json.dumps({"model": {"no_such_field": 1}}))
    _write(p["wrong_type_json"], json.dumps({"train": {"steps": "many"}}))
    _write(p["garbage_model"], GARBAGE)
    _write(p["empty_model"], b"")
    _write(p["garbage_tok_dir"] / "tokenizer.json", GARBAGE)
    _write(p["sft_garbage"], GARBAGE)
    config = json.dumps(HF_CONFIG)
    _write(p["hf_garbage"] / "config.json", config)
    _write(p["hf_garbage"] / "model.safetensors", GARBAGE)
    _write(p["hf_empty"] / "config.json", config)
    _write(p["hf_empty"] / "model.safetensors", b"")
    # A header length that promises more bytes than the file has.
    _write(p["hf_truncated_header"] / "config.json", config)
    _write(p["hf_truncated_header"] / "model.safetensors", (10**6).to_bytes(8, "little") + b"{")
    _write(p["hf_bad_config"] / "config.json", "{not json")
    _write(p["hf_bad_config"] / "model.safetensors", GARBAGE)
    _write(p["hf_no_weights"] / "config.json", config)
    _write(p["hf_bad_index"] / "config.json", config)
    _write(p["hf_bad_index"] / "model.safetensors.index.json", "{not json")
    _write(p["hf_bad_index"] / "model-00001-of-00001.safetensors", GARBAGE)
    return p


def _truncate_files(directory, keep_fraction: float) -> None:
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * keep_fraction)])


@pytest.fixture(scope="module")
def run_paths(tmp_path_factory) -> dict:
    return build_runs(tmp_path_factory.mktemp("runs"))


def build_runs(root) -> dict:
    """A prepared dataset and a real 2-step run (in this process), then damaged copies of each.

    The dataset is tokenised here with the tiny model's tokenizer and written by the library
    (`illada prepare` would spend seconds starting a tokeniser process)."""
    import numpy as np

    from illada_jax.data.preparation.prepare import prepare_token_documents
    from illada_jax.data.tokenizers.tokenizer import Tokenizer

    tokenizer = Tokenizer.load("shipped:sp1k")
    data, run = root / "data", root / "run"
    documents = [tokenizer.encode(TEXT * 30)] * 10
    prepare_token_documents(documents, data, vocab_size=tokenizer.vocab_size,
                            special_ids=tokenizer.special_ids())  # fmt: skip
    dataset = f"--config=set:data.datasets=('{data}',)"
    train = ["train", *FAST_TRAIN, "--config=set:train.steps=2", "--config=set:model.n_layers=1",
             dataset, f"--config=set:train.eval_dataset={data}", f"--workdir={run}"]  # fmt: skip
    assert main(train) == 0
    assert (run / "checkpoints" / "2" / "state").is_dir()

    p = {"data": data, "run": run}

    def data_copy(name):
        p[name] = root / name
        shutil.copytree(data, p[name])
        return p[name]

    manifest = json.loads((data / "manifest.json").read_text())
    (data_copy("data_no_manifest") / "manifest.json").unlink()
    (data_copy("data_garbage_manifest") / "manifest.json").write_bytes(GARBAGE)
    (data_copy("data_empty_manifest") / "manifest.json").write_text("")
    (data_copy("data_list_manifest") / "manifest.json").write_text("[]")
    (data_copy("data_keyless_manifest") / "manifest.json").write_text('{"format_version": 3}')
    no_tokenizer = {k: v for k, v in manifest.items() if k != "tokenizer"}
    (data_copy("data_manifest_no_tokenizer") / "manifest.json").write_text(json.dumps(no_tokenizer))
    other_vocab = json.loads(json.dumps(manifest))
    other_vocab["tokenizer"]["vocab_size"] = 8192
    (data_copy("data_other_vocab") / "manifest.json").write_text(json.dumps(other_vocab))
    shard = "shard-00000.arrayrecord"
    truncated = data_copy("data_truncated_shard") / shard
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    garbage = data_copy("data_garbage_shard") / shard
    garbage.write_bytes((GARBAGE * (garbage.stat().st_size // len(GARBAGE) + 1))[
        : garbage.stat().st_size])  # fmt: skip
    (data_copy("data_missing_shard") / shard).unlink()
    (data_copy("data_garbage_lengths") / "shard-00000.lengths.npy").write_bytes(GARBAGE)
    lengths = data_copy("data_wrong_lengths") / "shard-00000.lengths.npy"
    np.save(lengths, np.ones(3, np.int32))

    def run_copy(name):
        p[name] = root / name
        shutil.copytree(run, p[name])
        return p[name] / "checkpoints" / "2"

    _truncate_files(run_copy("run_truncated_state") / "state", 0.5)
    _truncate_files(run_copy("run_emptied_state") / "state", 0.0)
    shutil.rmtree(run_copy("run_no_state") / "state")
    step = run_copy("run_no_array_data")
    for path in (step / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.unlink()
    (run_copy("run_garbage_meta") / "meta" / "metadata").write_bytes(GARBAGE)
    step = run_copy("run_no_config")
    shutil.rmtree(step / "meta")
    (p["run_no_config"] / "config.json").unlink()
    shutil.rmtree(run_copy("run_no_checkpoints").parent)
    return p


def _fill(template: str, p: dict) -> str:
    return template.format(**p)


# ---------------------------------------------------------------------------------------------
# The cases: (arguments, texts the output must contain). Every case expects exit code 2 and no
# traceback.
# ---------------------------------------------------------------------------------------------


def case(case_id: str, argv: str, *expected: str, marks=()):
    return pytest.param(argv.split(), expected, id=case_id, marks=marks)


# fmt: off
CASES = [
    # --- no or unknown subcommand
    case("no-command", "", "COMMAND"),
    case("unknown-command", "frobnicate", "frobnicate"),
    # --- train
    case("train-workdir-is-file", "train --workdir={text}", "--workdir", "{text.name}"),
    case("train-workdir-under-file", "train --workdir={text}/run", "--workdir", "{text.name}"),
    case("train-config-file-missing", "train --config=file:{missing}", "{missing.name}"),
    case("train-config-file-garbage", "train --config=file:{bad_json}", "{bad_json.name}"),
    case("train-config-file-empty", "train --config=file:{empty_json}", "{empty_json.name}"),
    case("train-config-file-not-object", "train --config=file:{list_json}", "{list_json.name}"),
    case("train-config-file-unknown-field", "train --config=file:{unknown_field_json}",
         "no_such_field"),
    case("train-config-file-wrong-type", "train --config=file:{wrong_type_json}", "train.steps"),
    case("train-config-file-is-dir", "train --config=file:{empty_dir}", "{empty_dir.name}"),
    case("train-config-file-binary", "train --config=file:{binary}", "{binary.name}"),
    case("train-config-unknown-fiddler", "train --config=fiddler:no_such_fiddler",
         "no_such_fiddler"),
    case("train-config-unknown-name", "train --config=config:no_such_recipe", "no_such_recipe"),
    case("train-config-bad-directive", "train --config=tiny", "--config", "tiny"),
    case("train-config-set-no-value", "train --config=set:train.steps", "set:train.steps"),
    case("train-config-set-unknown-field", "train --config=set:train.no_such=1", "no_such"),
    case("train-config-set-wrong-type", "train --config=set:train.steps=abc", "train.steps"),
    case("train-config-set-out-of-range", "train --config=set:train.steps=0", "train.steps"),
    case("train-config-indivisible-heads", "train --config=set:model.n_kv_heads=3",
         "model.n_kv_heads"),
    case("train-dataset-missing", "train --config=set:data.datasets=('{missing}',)",
         "{missing.name}"),
    case("train-dataset-is-file", "train --config=set:data.datasets=('{text}',)", "{text.name}"),
    case("train-dataset-no-manifest",
         "train --config=set:data.datasets=('{data_no_manifest}',)", "data_no_manifest"),
    case("train-dataset-garbage-manifest",
         "train --config=set:data.datasets=('{data_garbage_manifest}',)",
         "data_garbage_manifest"),
    case("train-dataset-other-vocab",
         "train --config=set:data.datasets=('{data_other_vocab}',)", "data_other_vocab"),
    # (These name the good dataset for training and evaluation: the default, the embedded
    # corpus, takes seconds to prepare on first use.)
    case("train-eval-dataset-missing", "train --config=set:data.datasets=('{data}',) "
         "--config=set:train.eval_every=1 --config=set:train.eval_dataset={missing}",
         "{missing.name}"),
    case("train-init-from-missing", "train --config=set:data.datasets=('{data}',) "
         "--config=set:train.eval_dataset={data} --config=set:checkpoint.init_from={missing}",
         "{missing.name}"),
    case("train-init-from-not-a-run", "train --config=set:data.datasets=('{data}',) "
         "--config=set:train.eval_dataset={data} --config=set:checkpoint.init_from={empty_dir}",
         "{empty_dir.name}"),
    # --- prepare
    case("prepare-unknown-format", "prepare --format=csv --input={text} --output={missing}",
         "--format"),
    case("prepare-no-input", "prepare --format=text --output={missing}", "--input"),
    case("prepare-input-missing", "prepare --format=text --input={missing} "
         "--output={out}/out1", "{missing.name}"),
    case("prepare-input-empty-dir", "prepare --format=text --input={empty_dir} "
         "--output={out}/out2", "{empty_dir.name}"),
    case("prepare-text-empty-file", "prepare --format=text --input={empty} "
         "--output={out}/out3", "{empty.name}"),
    case("prepare-text-binary", "prepare --format=text --input={binary} "
         "--output={out}/out4", "{binary.name}"),
    case("prepare-text-not-utf8", "prepare --format=text --input={not_utf8} "
         "--output={out}/out5", "{not_utf8.name}"),
    case("prepare-jsonl-no-field", "prepare --format=jsonl --field=text --input={jsonl_no_field} "
         "--output={out}/out6", "{jsonl_no_field.name}", "--field"),
    case("prepare-jsonl-garbage", "prepare --format=jsonl --input={jsonl_garbage} "
         "--output={out}/out7", "{jsonl_garbage.name}"),
    case("prepare-jsonl-empty", "prepare --format=jsonl --input={jsonl_empty} "
         "--output={out}/out8", "{jsonl_empty.name}"),
    case("prepare-parquet-not-parquet", "prepare --format=parquet --input={text} "
         "--output={out}/out9", "{text.name}", "parquet"),
    case("prepare-parquet-fake", "prepare --format=parquet --input={fake_parquet} "
         "--output={out}/out10", "{fake_parquet.name}"),
    case("prepare-parquet-empty", "prepare --format=parquet --input={empty_parquet} "
         "--output={out}/out11", "{empty_parquet.name}"),
    case("prepare-parquet-truncated", "prepare --format=parquet --input={truncated_parquet} "
         "--output={out}/out12", "{truncated_parquet.name}"),
    case("prepare-parquet-no-column", "prepare --format=parquet --field=body --input={parquet} "
         "--output={out}/out13", "{parquet.name}", "--field"),
    case("prepare-output-is-file", "prepare --format=text --input={text} --output={text}",
         "--output"),
    case("prepare-tokenizer-missing", "prepare --format=text --input={text} "
         "--tokenizer={missing} --output={out}/out14", "--tokenizer"),
    case("prepare-tokenizer-garbage", "prepare --format=text --input={text} "
         "--tokenizer={garbage_model} --output={out}/out15",
         "{garbage_model.name}"),
    case("prepare-tokenizer-empty", "prepare --format=text --input={text} "
         "--tokenizer={empty_model} --output={out}/out16",
         "{empty_model.name}"),
    case("prepare-tokenizer-not-a-tokenizer", "prepare --format=text --input={text} "
         "--tokenizer={text} --output={out}/out17", "{text.name}"),
    case("prepare-tokenizer-dir-garbage", "prepare --format=text --input={text} "
         "--tokenizer={garbage_tok_dir} --output={out}/out18",
         "tokenizer.json"),
    case("prepare-tokenizer-empty-dir", "prepare --format=text --input={text} "
         "--tokenizer={empty_dir} --output={out}/out19", "{empty_dir.name}"),
    case("prepare-workers-zero", "prepare --format=text --input={text} --workers=0 "
         "--output={missing}", "--workers"),
    case("prepare-workers-not-int", "prepare --format=text --input={text} --workers=two "
         "--output={missing}", "--workers"),
    case("prepare-max-doc-tokens-1", "prepare --format=text --input={text} --max-doc-tokens=1 "
         "--output={missing}", "--max-doc-tokens"),
    case("prepare-shard-chars-negative", "prepare --format=text --input={text} "
         "--shard-chars=-5 --output={missing}", "--shard-chars"),
    case("prepare-text-unit-unknown", "prepare --format=text --input={text} --text-unit=line "
         "--output={missing}", "--text-unit"),
    case("prepare-embedded-unknown-split", "prepare --format=embedded --input=validation "
         "--output={out}/out20", "validation"),
    case("prepare-sft-missing", "prepare --format=sft --input={missing} "
         "--output={out}/out21", "{missing.name}"),
    case("prepare-sft-garbage", "prepare --format=sft --input={sft_garbage} "
         "--output={out}/out22", "{sft_garbage.name}"),
    case("prepare-unknown-runner", "prepare --format=text --input={text} --runner=spark "
         "--output={out}/out24", "--runner"),
    case("prepare-beam-option-without-beam", "prepare --format=text --input={text} "
         "--beam-option=--runner=DirectRunner --output={out}/out23",
         "--beam-option"),
    # --- tokenizer train
    case("tokenizer-no-subcommand", "tokenizer", "COMMAND"),
    case("tokenizer-input-missing", "tokenizer train --input={missing} --output={out}/t",
         "--input", "{missing.name}"),
    case("tokenizer-input-is-dir", "tokenizer train --input={empty_dir} --output={out}/t",
         "--input", "{empty_dir.name}"),
    case("tokenizer-no-input", "tokenizer train --output={out}/t", "--input"),
    case("tokenizer-input-empty-file", "tokenizer train --input={empty} --vocab-size=300 "
         "--output={out}/tok1", "{empty.name}"),
    case("tokenizer-input-binary", "tokenizer train --input={binary} --vocab-size=300 "
         "--output={out}/tok2", "{binary.name}"),
    case("tokenizer-jsonl-garbage", "tokenizer train --input={jsonl_garbage} --vocab-size=300 "
         "--output={out}/tok4", "{jsonl_garbage.name}"),
    case("tokenizer-jsonl-no-text", "tokenizer train --input={jsonl_no_field} --vocab-size=300 "
         "--output={out}/tok5", "{jsonl_no_field.name}"),
    case("tokenizer-vocab-size-zero", "tokenizer train --input={text} --vocab-size=0 "
         "--output=t", "--vocab-size"),
    case("tokenizer-vocab-size-not-int", "tokenizer train --input={text} --vocab-size=8k "
         "--output=t", "--vocab-size"),
    case("tokenizer-vocab-size-too-small", "tokenizer train --input={text} --vocab-size=5 "
         "--output={out}/tok3", "--vocab-size"),
    case("tokenizer-unknown-type", "tokenizer train --input={text} --type=wordpiece "
         "--output=t", "--type"),
    case("tokenizer-threads-zero", "tokenizer train --input={text} --num-threads=0 "
         "--output=t", "--num-threads"),
    case("tokenizer-bpe-output-is-file", "tokenizer train --input={text} --vocab-size=300 "
         "--type=bpe --output={nonempty_dir}/keep.txt", "--output", "keep.txt"),
    # --- params
    case("params-unknown-config", "params --config=config:no_such_recipe", "no_such_recipe"),
    case("params-config-file-garbage", "params --config=file:{bad_json}", "{bad_json.name}"),
    case("params-bad-value", "params --config=set:model.d_model=-1", "model.d_model"),
    # --- convert
    case("convert-unknown-from", "convert --from=gguf --to=native --src={empty_dir} "
         "--dst={missing}", "--from"),
    case("convert-same-format", "convert --from=hf --to=hf --src={hf_garbage} "
         "--dst={missing}", "--from", "--to"),
    case("convert-src-missing", "convert --from=hf --to=native --src={missing} "
         "--dst={out}/c1", "--src", "{missing.name}"),
    case("convert-src-is-file", "convert --from=hf --to=native --src={text} "
         "--dst={out}/c2", "--src", "{text.name}"),
    case("convert-dst-is-file", "convert --from=hf --to=native --src={hf_garbage} "
         "--dst={text}", "--dst", "{text.name}"),
    case("convert-dst-not-empty", "convert --from=hf --to=native --src={hf_garbage} "
         "--dst={nonempty_dir}", "--dst", "{nonempty_dir.name}"),
    case("convert-shard-size-bad", "convert --from=native --to=hf --src={empty_dir} "
         "--dst={missing} --shard-size=lots", "--shard-size"),
    case("convert-param-dtype-unknown", "convert --from=hf --to=native --src={empty_dir} "
         "--dst={missing} --param-dtype=int8", "--param-dtype"),
    case("convert-layout-unknown", "convert --from=native --to=hf --src={empty_dir} "
         "--dst={missing} --layout=gpt2", "--layout"),
    case("convert-hf-no-config", "convert --from=hf --to=native --src={empty_dir} "
         "--dst={out}/c3", "config.json"),
    case("convert-hf-garbage-config", "convert --from=hf --to=native --src={hf_bad_config} "
         "--dst={out}/c4", "config.json", "{hf_bad_config.name}"),
    case("convert-hf-no-weights", "convert --from=hf --to=native --src={hf_no_weights} "
         "--dst={out}/c5", "{hf_no_weights.name}", "safetensors"),
    case("convert-hf-garbage-safetensors", "convert --from=hf --to=native --src={hf_garbage} "
         "--dst={out}/c6", "{hf_garbage.name}", "model.safetensors"),
    case("convert-hf-empty-safetensors", "convert --from=hf --to=native --src={hf_empty} "
         "--dst={out}/c7", "{hf_empty.name}", "model.safetensors"),
    case("convert-hf-truncated-safetensors", "convert --from=hf --to=native "
         "--src={hf_truncated_header} --dst={out}/c8", "{hf_truncated_header.name}",
         "model.safetensors"),
    case("convert-hf-garbage-index", "convert --from=hf --to=native --src={hf_bad_index} "
         "--dst={out}/c9", "model.safetensors.index.json"),
    case("convert-native-not-a-run", "convert --from=native --to=hf --src={empty_dir} "
         "--dst={out}/c10", "{empty_dir.name}"),
    case("convert-native-truncated-checkpoint", "convert --from=native --to=hf "
         "--src={run_truncated_state} --dst={out}/c11",
         "run_truncated_state"),
    case("convert-native-garbage-meta", "convert --from=native --to=hf "
         "--src={run_garbage_meta} --dst={out}/c12", "run_garbage_meta"),
    # --- compile
    case("compile-batch-not-dividing", "compile --config=config:tiny --topology=v5e-16 "
         "--global-batch 3 --no-probes", "train.batch_size=3"),
    case("compile-unknown-topology", "compile --config=config:tiny --topology=v9z-8 "
         "--no-probes", "v9z-8"),
    case("compile-global-batch-zero", "compile --topology=v5e-16 --global-batch=0",
         "--global-batch"),
    case("compile-seq-len-zero", "compile --topology=v5e-16 --seq-len=0", "--seq-len"),
    case("compile-tokens-zero", "compile --topology=v5e-16 --tokens=0", "--tokens"),
    case("compile-mfu-above-one", "compile --topology=v5e-16 --mfu=1.5", "--mfu"),
    case("compile-num-slices-zero", "compile --topology=v5e-16 --num-slices=0", "--num-slices"),
    case("compile-search-batches-bad", "compile --topology=v5e-16 --search-batches=a,b",
         "--search-batches"),
    case("compile-search-remat-unknown", "compile --topology=v5e-16 --search-remat=most",
         "--search-remat"),
    case("compile-json-is-dir", "compile --topology=v5e-16 --json={empty_dir}", "--json"),
    case("compile-dump-hlo-no-dir", "compile --topology=v5e-16 --dump-hlo={missing}/x.txt",
         "--dump-hlo"),
    case("compile-no-topology", "compile --config=config:tiny", "--topology"),
    # --- sweep
    case("sweep-without-config", "sweep --config=set:train.steps=1", "config:"),
    case("sweep-no-config-at-all", "sweep", "config:"),
    case("sweep-unknown", "sweep --config=config:no_such_sweep", "no_such_sweep"),
    case("sweep-not-a-sweep", "sweep --config=config:tiny --print", "config:tiny"),
    case("sweep-launcher-without-print", "sweep --config=config:tiny_lr --launcher=srun",
         "--launcher"),
    case("sweep-workdir-is-file", "sweep --config=config:tiny_lr --workdir={text}", "--workdir"),
    # --- generate
    case("generate-steps-zero", "generate --checkpoint={run} --prompt=x --steps 0", "--steps"),
    case("generate-steps-not-int", "generate --checkpoint={run} --prompt=x --steps=many",
         "--steps"),
    case("generate-gen-length-zero", "generate --checkpoint={run} --prompt=x --gen-length=0",
         "--gen-length"),
    case("generate-block-not-dividing", "generate --checkpoint={run} --prompt=x "
         "--gen-length=10 --block-length=4", "--block-length", "--gen-length"),
    case("generate-steps-not-dividing", "generate --checkpoint={run} --prompt=x "
         "--gen-length=8 --block-length=4 --steps=3", "--steps"),
    case("generate-gen-length-not-int", "generate --checkpoint={run} --prompt=x "
         "--gen-length=lots", "--gen-length"),
    case("generate-threshold-above-one", "generate --checkpoint={run} --prompt=x "
         "--threshold 1.5", "--threshold"),
    case("generate-threshold-zero", "generate --checkpoint={run} --prompt=x --threshold=0",
         "--threshold"),
    case("generate-temperature-negative", "generate --checkpoint={run} --prompt=x "
         "--temperature -1", "--temperature"),
    case("generate-temperature-nan", "generate --checkpoint={run} --prompt=x "
         "--temperature=nan", "--temperature"),
    case("generate-cfg-negative", "generate --checkpoint={run} --prompt=x --cfg-scale=-2",
         "--cfg-scale"),
    case("generate-seed-negative", "generate --checkpoint={run} --prompt=x --seed=-1", "--seed"),
    case("generate-think-boost-negative", "generate --checkpoint={run} --prompt=x "
         "--think-boost=-1", "--think-boost"),
    case("generate-think-power-zero", "generate --checkpoint={run} --prompt=x "
         "--think-power=0", "--think-power"),
    case("generate-unknown-remasking", "generate --checkpoint={run} --prompt=x "
         "--remasking=top_k", "--remasking"),
    case("generate-unknown-cache", "generate --checkpoint={run} --prompt=x --cache=full",
         "--cache"),
    case("generate-no-prompt", "generate --checkpoint={run}", "--prompt"),
    case("generate-empty-prompt", "generate --checkpoint={run} --prompt=", "--prompt"),
    case("generate-checkpoint-missing", "generate --checkpoint={missing} --prompt=x",
         "--checkpoint", "{missing.name}"),
    case("generate-checkpoint-is-file", "generate --checkpoint={text} --prompt=x",
         "--checkpoint", "{text.name}"),
    case("generate-checkpoint-empty-dir", "generate --checkpoint={empty_dir} --prompt=x",
         "{empty_dir.name}"),
    case("generate-checkpoint-no-checkpoints", "generate --checkpoint={run_no_checkpoints} "
         "--prompt=x", "run_no_checkpoints"),
    case("generate-checkpoint-truncated", "generate --checkpoint={run_truncated_state} "
         "--prompt=x", "run_truncated_state"),
    case("generate-checkpoint-emptied", "generate --checkpoint={run_emptied_state} "
         "--prompt=x", "run_emptied_state"),
    case("generate-checkpoint-no-state", "generate --checkpoint={run_no_state} --prompt=x",
         "run_no_state"),
    case("generate-checkpoint-no-array-data", "generate --checkpoint={run_no_array_data} "
         "--prompt=x", "run_no_array_data"),
    case("generate-checkpoint-garbage-meta", "generate --checkpoint={run_garbage_meta} "
         "--prompt=x", "run_garbage_meta"),
    case("generate-checkpoint-no-config", "generate --checkpoint={run_no_config} --prompt=x",
         "run_no_config"),
    case("generate-hf-garbage-safetensors", "generate --checkpoint={hf_garbage} --prompt=x",
         "{hf_garbage.name}", "model.safetensors"),
    case("generate-hf-empty-safetensors", "generate --checkpoint={hf_empty} --prompt=x",
         "{hf_empty.name}", "model.safetensors"),
    case("generate-hf-garbage-config", "generate --checkpoint={hf_bad_config} --prompt=x",
         "{hf_bad_config.name}", "config.json"),
    # --- chat
    case("chat-checkpoint-missing", "chat --checkpoint={missing}", "--checkpoint",
         "{missing.name}"),
    case("chat-no-checkpoint", "chat", "--checkpoint"),
    case("chat-checkpoint-truncated", "chat --checkpoint={run_truncated_state}",
         "run_truncated_state"),
    case("chat-temperature-negative", "chat --checkpoint={run} --temperature=-0.5",
         "--temperature"),
    case("chat-gen-length-zero", "chat --checkpoint={run} --gen-length=0", "--gen-length"),
    case("chat-block-not-dividing", "chat --checkpoint={run} --block-length=48",
         "--block-length"),
    # --- eval
    case("eval-unknown-task", "eval --checkpoint={run} --tasks=no_such_task", "no_such_task"),
    case("eval-empty-tasks", "eval --checkpoint={run} --tasks=,", "--tasks"),
    case("eval-checkpoint-missing", "eval --checkpoint={missing}", "--checkpoint"),
    case("eval-checkpoint-truncated", "eval --checkpoint={run_truncated_state}",
         "run_truncated_state"),
    case("eval-dataset-is-file", "eval --checkpoint={run} --dataset={text}", "--dataset",
         "{text.name}"),
    case("eval-dataset-missing", "eval --checkpoint={run} --dataset={missing}", "--dataset"),
    case("eval-dataset-no-manifest", "eval --checkpoint={run} --dataset={data_no_manifest}",
         "data_no_manifest", "manifest.json"),
    case("eval-dataset-garbage-manifest", "eval --checkpoint={run} "
         "--dataset={data_garbage_manifest}", "data_garbage_manifest"),
    case("eval-dataset-empty-manifest", "eval --checkpoint={run} "
         "--dataset={data_empty_manifest}", "data_empty_manifest"),
    case("eval-dataset-manifest-not-object", "eval --checkpoint={run} "
         "--dataset={data_list_manifest}", "data_list_manifest"),
    case("eval-dataset-manifest-missing-keys", "eval --checkpoint={run} "
         "--dataset={data_keyless_manifest}", "data_keyless_manifest"),
    case("eval-dataset-manifest-no-tokenizer", "eval --checkpoint={run} "
         "--dataset={data_manifest_no_tokenizer}", "data_manifest_no_tokenizer"),
    case("eval-dataset-other-vocab", "eval --checkpoint={run} --dataset={data_other_vocab}",
         "data_other_vocab", "vocab_size"),
    case("eval-dataset-truncated-shard", "eval --checkpoint={run} "
         "--dataset={data_truncated_shard}", "data_truncated_shard",
         "shard-00000.arrayrecord"),
    case("eval-dataset-garbage-shard", "eval --checkpoint={run} --dataset={data_garbage_shard}",
         "data_garbage_shard", "shard-00000.arrayrecord"),
    case("eval-dataset-missing-shard", "eval --checkpoint={run} --dataset={data_missing_shard}",
         "data_missing_shard", "shard-00000.arrayrecord"),
    case("eval-dataset-garbage-lengths", "eval --checkpoint={run} "
         "--dataset={data_garbage_lengths}", "data_garbage_lengths",
         "shard-00000.lengths.npy"),
    case("eval-dataset-wrong-lengths", "eval --checkpoint={run} "
         "--dataset={data_wrong_lengths}", "shard-00000.lengths.npy"),
    case("eval-batches-zero", "eval --checkpoint={run} --batches=0", "--batches"),
    case("eval-batch-size-zero", "eval --checkpoint={run} --batch-size=0", "--batch-size"),
    case("eval-seq-len-zero", "eval --checkpoint={run} --seq-len=0", "--seq-len"),
    case("eval-seq-len-too-long", "eval --checkpoint={run} --seq-len=100000", "seq_len=100000"),
    case("eval-limit-not-int", "eval --checkpoint={run} --tasks=x --limit=some", "--limit"),
    case("eval-mc-num-zero", "eval --checkpoint={run} --tasks=x --mc-num=0", "--mc-num"),
    case("eval-unknown-method", "eval --checkpoint={run} --tasks=x --method=ppl", "--method"),
    case("eval-include-path-is-file", "eval --checkpoint={run} --tasks=x "
         "--include-path={text}", "--include-path"),
]
# fmt: on


@pytest.fixture(scope="module")
def all_paths(paths, run_paths) -> dict:
    return {**paths, **run_paths}


@pytest.mark.parametrize(("argv", "expected"), CASES)
def test_mistake_is_one_clear_line(argv, expected, all_paths, capfd, monkeypatch):
    monkeypatch.chdir(all_paths["out"])  # train without --workdir writes runs/NAME here
    argv = [_fill(arg, all_paths) for arg in argv]
    code, output = run_cli(argv, capfd)
    assert "Traceback" not in output, output
    assert code == 2, output
    for text in expected:
        assert _fill(text, all_paths) in output, output


# ---------------------------------------------------------------------------------------------
# As a process: what a shell sees, and the traceback only on request.
# ---------------------------------------------------------------------------------------------


def _illada(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "illada_jax.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


ERROR_LINE = ("illada ", "illada: ")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(
            "generate --checkpoint={empty_dir} --prompt=x --steps 0", "--steps", id="argparse"
        ),
        pytest.param(
            "convert --from=hf --to=native --src={hf_garbage} --dst={out}/p2",
            "model.safetensors",
            id="convert-garbage-safetensors",
        ),
        pytest.param(
            "prepare --format=parquet --input={text} --output={out}/p1",
            "{text.name}",
            id="prepare-not-parquet",
        ),
    ],
)
def test_as_a_process_exit_2_one_line_no_traceback(argv, expected, paths):
    result = _illada(*[_fill(arg, paths) for arg in argv.split()])
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert _fill(expected, paths) in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(ERROR_LINE) and _fill(expected, paths) in last, result.stderr


def test_debug_shows_the_traceback(paths):
    argv = ["prepare", "--format=parquet", f"--input={paths['text']}",
            f"--output={paths['out'] / 'debug_out'}"]  # fmt: skip
    flag = _illada("--debug", *argv)
    assert flag.returncode == 1 and "Traceback" in flag.stderr, flag.stderr
    assert paths["text"].name in flag.stderr


def test_debug_environment_reraises_in_process(paths, monkeypatch):
    monkeypatch.setenv("ILLADA_DEBUG", "1")
    from illada_jax.errors import IlladaError

    argv = ["prepare", "--format=parquet", f"--input={paths['text']}",
            f"--output={paths['out'] / 'debug_out2'}"]  # fmt: skip
    with pytest.raises(IlladaError, match=paths["text"].name):
        main(argv)
    flag_after = ["prepare", "--debug", "--format=parquet", f"--input={paths['text']}",
                  f"--output={paths['out'] / 'debug_out3'}"]  # fmt: skip
    monkeypatch.delenv("ILLADA_DEBUG")
    with pytest.raises(IlladaError):
        main(flag_after)
