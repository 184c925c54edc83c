"""Weights & Biases from the config: `obs.wandb_project` / `obs.wandb_entity` / `obs.wandb_mode`.

A real 2-step run of the tiny preset logs offline; the test reads the run's transaction log
(`run-ID.wandb`, wandb's LevelDB-style record log of `wandb_internal_pb2.Record`s) back and
compares it with `metrics.jsonl` and `config.json`. Everything W&B writes stays under tmp_path.
"""

from __future__ import annotations

import itertools
import json
import struct
import sys

import pytest

from illada_jax.config import flags
from illada_jax.config.schema import ConfigError

FAST = [
    "set:train.steps=2",
    "set:optim.warmup_steps=1",
    "set:train.log_every=1",
    "set:train.seq_len=32",
    "set:train.batch_size=2",
    "set:model.n_layers=2",
    "set:train.sample_length=0",
    "set:train.eval_every=0",
]


def _small_dataset(directory) -> str:
    """A prepared dataset of four embedded-corpus documents (~14k tokens, the tiny preset's
    tokenizer), written in-process in milliseconds instead of preparing the whole corpus."""
    from illada_jax.data.preparation.prepare import prepare_token_documents
    from illada_jax.data.sources.corpus import embedded_documents
    from illada_jax.data.tokenizers.tokenizer import Tokenizer

    tokenizer = Tokenizer.load("shipped:sp1k")
    texts = [doc.text for doc in itertools.islice(embedded_documents("train"), 4)]
    prepare_token_documents(tokenizer.encode_batch(texts), directory,
                            vocab_size=tokenizer.vocab_size, special_ids=tokenizer.special_ids(),
                            identity=tokenizer.identity)  # fmt: skip
    return f"set:data.datasets=('{directory}',)"


_BLOCK, _HEADER = 32768, 7  # the log's block size; file and record headers are both 7 bytes
_FULL, _LAST = 1, 4


def _wandb_records(path):
    """The `Record`s of a `.wandb` file: a `:W&B` header, then records split into 32 KiB blocks
    (each chunk: crc32 uint32, length uint16, type uint8 FULL/FIRST/MIDDLE/LAST, data)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:_HEADER]
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _HEADER:  # a block's zero-filled trailer
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        pending += data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """wandb's directories (runs, cache, config, core logs) under tmp_path."""
    wandb = pytest.importorskip("wandb")
    home = tmp_path / "wandb-home"
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR",
                "WANDB_ARTIFACT_DIR", "XDG_CACHE_HOME"):  # fmt: skip
        (home / var).mkdir(parents=True)
        monkeypatch.setenv(var, str(home / var))
    # Nothing goes online: `disabled` unless the config's obs.wandb_mode reaches wandb.init.
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield wandb
    wandb.teardown()  # stop the wandb-core service started with these directories


def test_offline_run_holds_the_losses_and_the_resolved_config(tmp_path, wandb_env):
    from illada_jax.train.loop import train

    data = _small_dataset(tmp_path / "data")
    experiment = flags.experiment_from_flags(
        [*FAST, data, "set:obs.wandb_project='illada-test'", "set:obs.wandb_mode='offline'"]
    )
    workdir = tmp_path / "run"
    history = train(experiment, workdir, print_fn=lambda *a: None)

    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in logged if "loss" in r and "event" not in r}
    assert sorted(losses) == [1, 2]
    assert losses == {r["step"]: r["loss"] for r in history if "loss" in r}

    # dir=: the run directory; an offline run (the environment says disabled: obs.wandb_mode won)
    (log,) = (workdir / "wandb").glob("offline-run-*/run-*.wandb")
    records = list(_wandb_records(log))
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "exit" in kinds  # the writer finished the run
    history = _history(records)
    # W&B's step counts the records (metrics.jsonl's lines); the training step is a field
    assert [h["_step"] for h in history] == list(range(len(logged)))
    assert [h["train_step"] for h in history] == [r["step"] for r in logged]
    # events (`compiled`) are logged too, as in metrics.jsonl
    wandb_losses = {h["train_step"]: h["loss"] for h in history if "event" not in h}
    assert wandb_losses == losses  # the same floats, not approximately

    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "illada-test"
    assert run.display_name == "run"  # the run directory's name
    config = {i.key: json.loads(i.value_json) for i in run.config.update if i.key != "_wandb"}
    assert config == json.loads((workdir / "config.json").read_text())
    assert config["model"]["d_model"] == experiment.model.d_model
    assert config["obs"]["wandb_mode"] == "offline"


def _history(records) -> list[dict]:
    return [
        {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]


def test_a_resumed_run_continues_the_same_wandb_run_with_steps_that_go_forward(tmp_path, wandb_env):
    """Two steps, then the same command with 4 steps: one W&B run id (kept in the run
    directory), and the resumed process logs at W&B steps after the first one's."""
    from illada_jax.train.loop import train

    data = _small_dataset(tmp_path / "data")
    wandb_flags = ["set:obs.wandb_project='illada-test'", "set:obs.wandb_mode='offline'"]
    workdir = tmp_path / "run"
    train(flags.experiment_from_flags([*FAST, data, *wandb_flags]), workdir, print_fn=print)
    resumed = [*FAST, data, *wandb_flags, "set:train.steps=4"]
    train(flags.experiment_from_flags(resumed), workdir, print_fn=print)

    run_id = (workdir / "wandb_run_id").read_text().strip()
    logs = sorted((workdir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 2 and all(log.name == f"run-{run_id}.wandb" for log in logs)
    first, second = (_history(list(_wandb_records(log))) for log in logs)
    steps = [h["_step"] for h in first + second]
    assert steps == list(range(len(steps)))  # one W&B run, its step only goes forward
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert len(steps) == len(lines)
    trained = [h["train_step"] for h in second if "loss" in h and "event" not in h]
    assert trained == [3, 4]


def test_bad_wandb_mode_is_a_config_error():
    with pytest.raises(ConfigError, match=r"obs\.wandb_mode='cloud'.*online, offline, disabled"):
        flags.experiment_from_flags(["set:obs.wandb_project=p", "set:obs.wandb_mode=cloud"])
    with pytest.raises(ConfigError, match=r"obs\.wandb_entity.*only used with wandb_project"):
        flags.experiment_from_flags(["set:obs.wandb_entity=team"])
    experiment = flags.experiment_from_flags(
        ["set:obs.wandb_project=p", "set:obs.wandb_mode=disabled"]
    )
    assert (experiment.obs.wandb_project, experiment.obs.wandb_mode) == ("p", "disabled")
    assert flags.experiment_from_flags([]).obs.wandb_project is None  # off by default


def test_a_config_without_the_obs_section_still_loads(tmp_path):
    """config.json files written before `obs` existed: the section takes its defaults and
    `set:obs.*` still reaches it."""
    data = flags.to_dict(flags.experiment_from_flags([]))
    del data["obs"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    assert flags.experiment_from_flags([f"file:{path}"]).obs.wandb_project is None
    experiment = flags.experiment_from_flags([f"file:{path}", "set:obs.wandb_project=p"])
    assert experiment.obs.wandb_project == "p"


def test_missing_wandb_stops_the_run_before_it_starts(tmp_path, monkeypatch):
    from illada_jax.train.loop import train

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    experiment = flags.experiment_from_flags([*FAST, "set:obs.wandb_project=p"])
    with pytest.raises(ConfigError, match=r'pip install "illada-jax\[wandb\]".*obs\.wandb_project'):
        train(experiment, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing written, nothing compiled
