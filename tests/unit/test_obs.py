"""Observability: FLOPs per token against hand-written formulas, the peak table, measured CPU
peak, MFU arithmetic, metrics.jsonl / TensorBoard events read back, console progress."""

import io
import json
import math
import os
import struct
import subprocess
import sys
import textwrap
import types

import pytest

from illada_jax.config.presets import MODEL_PRESETS
from illada_jax.config.schema import ConfigError, ModelConfig
from illada_jax.obs import flops, progress, writers

pytestmark = pytest.mark.core

# --- FLOPs per token (docs/architecture.md#flops)
# ------------------------------------------------------------------

# Hand numbers: the papers' non-embedding counts (docs/models.md#shapes) plus the output head vocab
# x d.
ILLADA_NON_EMBEDDING = 6_979_588_096
LLADA_NON_EMBEDDING = 6_979_588_096


def test_train_flops_illada_8b_at_8192():
    cfg = ModelConfig(**MODEL_PRESETS["illada_8b"])
    n_matmul = ILLADA_NON_EMBEDDING + 155_136 * 4096  # tied head counted once
    attention = 12 * 32 * 4096 * 8192
    assert flops.train_flops_per_token(cfg, 8192) == 6 * n_matmul + attention
    assert flops.train_flops_per_token(cfg, 8192) == 58_575_052_800
    assert flops.forward_flops_per_token(cfg, 8192) == 2 * n_matmul + 4 * 32 * 4096 * 8192


def test_sampler_forward_flops_counts_the_head_on_the_block_only():
    cfg = ModelConfig(**MODEL_PRESETS["illada_8b"])
    layers_per_position = 2 * ILLADA_NON_EMBEDDING + 4 * 32 * 4096 * 320
    expected = 320 * layers_per_position + 32 * 2 * 155_136 * 4096
    assert flops.sampler_forward_flops(cfg, 320, 32) == expected
    # The head on every position: the plain forward count.
    assert flops.sampler_forward_flops(cfg, 320, 320) == 320 * flops.forward_flops_per_token(
        cfg, 320
    )


def test_block_diffusion_step_runs_every_token_twice_and_the_head_once():
    from illada_jax.config.schema import DiffusionConfig, Experiment, TrainConfig

    cfg = ModelConfig(**MODEL_PRESETS["illada_8b"])
    n_matmul = ILLADA_NON_EMBEDDING + 155_136 * 4096

    def work(block_size):
        return flops.train_step_work(Experiment(
            model=cfg, train=TrainConfig(seq_len=8192, batch_size=2),
            diffusion=DiffusionConfig(objective="block_diffusion", block_size=block_size)))  # fmt: skip

    # Per token: the noisy and the clean copy through the layers, attention over 2·8192 keys,
    # the output head on the noisy copy only.
    layers_twice = 2 * (6 * ILLADA_NON_EMBEDDING + 12 * 32 * 4096 * 16384)
    assert work(32) == (2 * 8192, layers_twice + 6 * 155_136 * 4096)
    # One block is masked diffusion: no clean copy.
    assert work(8192) == (2 * 8192, 6 * n_matmul + 12 * 32 * 4096 * 8192)


def test_train_flops_llada_8b_at_4096():
    cfg = ModelConfig(**MODEL_PRESETS["llada_8b"])
    n_matmul = LLADA_NON_EMBEDDING + 126_464 * 4096  # untied: the head once, the embedding never
    assert flops.train_flops_per_token(cfg, 4096) == 6 * n_matmul + 12 * 32 * 4096 * 4096
    assert flops.forward_flops_per_token(cfg, 4096) == 2 * n_matmul + 4 * 32 * 4096 * 4096


def test_head_counted_once_tied_or_untied_and_gqa_width():
    # A tiny model by hand: d=16, 2 layers, 4 heads of 8 (attention width 32 != d), 2 kv heads.
    shape = dict(vocab_size=64, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8)
    shape.update(mlp_dim=24, max_seq_len=32, use_bias=False)
    per_layer = (
        16 * 32  # q
        + 2 * 16 * 16  # k, v: 2 kv heads x 8
        + 32 * 16  # o
        + 3 * 16 * 24  # gate, up, down
        + 2 * 16  # two RMSNorm scales
    )
    non_embedding = 2 * per_layer + 16  # + final norm
    expected_n = non_embedding + 64 * 16
    for tied in (True, False):
        cfg = ModelConfig(**shape, tie_embeddings=tied)
        assert flops.matmul_params(cfg) == expected_n
        assert flops.train_flops_per_token(cfg, 32) == 6 * expected_n + 12 * 2 * 32 * 32


# --- peak table ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "peak"),
    [
        ("TPU v4", 275e12),
        ("TPU v5 lite", 197e12),
        ("TPU v5e", 197e12),
        ("TPU v5p", 459e12),
        ("TPU v5", 459e12),
        ("TPU v6 lite", 918e12),
        ("TPU v6e", 918e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H800", 989e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
    ],
)
def test_peak_table_lookup(kind, peak):
    device = types.SimpleNamespace(platform="tpu" if "TPU" in kind else "gpu", device_kind=kind)
    value, source = flops.device_peak_flops(device)
    assert value == peak
    assert kind in source


@pytest.mark.parametrize("kind", ["NVIDIA GeForce RTX 4090", "TPU v3", "TPU v7x", "Gaudi2"])
def test_unknown_accelerator_gives_none_and_nan_mfu(kind):
    value, source = flops.device_peak_flops(types.SimpleNamespace(platform="gpu", device_kind=kind))
    assert value is None
    assert "NaN" in source and kind in source
    assert math.isnan(flops.mfu(1000.0, 1e9, value))


def test_cpu_measured_peak_positive_finite_and_cached():
    value, source = flops.device_peak_flops()
    assert value is not None and math.isfinite(value) and value > 1e8
    assert source.startswith("cpu: measured")
    assert flops.device_peak_flops()[0] == value  # measured once per process
    total, _ = flops.total_peak_flops()
    assert total == value  # one CPU device here


def test_virtual_cpu_devices_share_the_host_rate():
    code = textwrap.dedent(
        """
        import jax
        from illada_jax.obs import flops
        assert jax.device_count() == 4, jax.devices()
        per_device, source = flops.device_peak_flops()
        host = flops.measure_matmul_flops()  # the cached host measurement behind per_device
        total, _ = flops.total_peak_flops()
        assert per_device == host / 4, (per_device, host)
        assert total == per_device * 4
        assert "4 local CPU device" in source, source
        print("ok")
        """
    )
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_mfu_arithmetic():
    assert flops.mfu(2_000.0, 3e9, 12e12) == pytest.approx(0.5)
    assert math.isnan(flops.mfu(2_000.0, 3e9, None))
    assert math.isnan(flops.mfu(2_000.0, 3e9, 0.0))
    assert math.isnan(flops.mfu(2_000.0, 3e9, math.inf))
    # docs/architecture.md#flops anchor: LLaDA-8B at ~4.9k tokens/s/GPU on 989 TFLOP/s is 24-27%
    # once bidirectional attention at S=4096 is counted.
    cfg = ModelConfig(**MODEL_PRESETS["llada_8b"])
    value = flops.mfu(4_900.0, flops.train_flops_per_token(cfg, 4096), 989e12)
    assert 0.24 < value < 0.27


# --- writers ------------------------------------------------------------------------------------


def _read_tfrecords(path):
    """Split a TFRecord file by hand: uint64 length, uint32 crc, payload, uint32 crc."""
    with open(path, "rb") as f:
        data = f.read()
    records, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        records.append(data[offset + 12 : offset + 12 + length])
        offset += 12 + length + 4
    assert offset == len(data), "truncated TFRecord file"
    return records


def _tensorboard_events(run_dir):
    from tensorboardX.proto import event_pb2

    files = [f for f in os.listdir(run_dir) if f.startswith("events.out.tfevents.")]
    assert len(files) == 1, os.listdir(run_dir)
    events = []
    for payload in _read_tfrecords(os.path.join(run_dir, files[0])):
        event = event_pb2.Event()
        event.ParseFromString(payload)
        events.append(event)
    return events


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
    import jax.numpy as jnp
    import numpy as np

    run_dir = tmp_path / "run"
    with writers.MetricWriter(run_dir, enabled=True) as writer:
        writer.write_metrics(
            10, {"loss": jnp.float32(2.5), "lr": 1e-3, "tokens": np.int64(4096), "mfu": math.nan}
        )
        writer.write_metrics(20, {"loss": np.array([1.25]), "note": "spike", "skipped": True})
        writer.write_text("config", '{\n  "a": 1\n}', as_code=True)
    writer.close()  # idempotent

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records[0]["step"] == 10 and records[0]["loss"] == 2.5 and records[0]["lr"] == 1e-3
    assert records[0]["tokens"] == 4096 and isinstance(records[0]["tokens"], int)
    assert math.isnan(records[0]["mfu"])
    assert records[1] == {"step": 20, "loss": 1.25, "note": "spike", "skipped": True}

    scalars = {}
    texts = {}
    for event in _tensorboard_events(run_dir):
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name == "text":
                texts[value.tag] = value.tensor.string_val[0].decode()
            else:
                number = value.simple_value if value.HasField("simple_value") else None
                if number is None:
                    number = value.tensor.float_val[0]
                scalars[(value.tag, event.step)] = number
    assert scalars[("loss", 10)] == 2.5
    assert scalars[("loss", 20)] == 1.25
    assert scalars[("lr", 10)] == pytest.approx(1e-3)
    assert scalars[("tokens", 10)] == 4096
    assert ("note", 20) not in scalars and ("skipped", 20) not in scalars  # not numbers
    (config_tag,) = [tag for tag in texts if tag.startswith("config")]
    assert texts[config_tag] == '    {\n      "a": 1\n    }'

    # Append mode: a resumed run continues the same file.
    with writers.MetricWriter(run_dir, tensorboard=False) as writer:
        writer.write_metrics(30, {"loss": 1.0})
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3


def test_metric_writer_rejects_non_scalars(tmp_path):
    with (
        writers.MetricWriter(tmp_path, tensorboard=False) as writer,
        pytest.raises(TypeError, match="'hist'"),
    ):
        writer.write_metrics(1, {"hist": [1, 2, 3]})


def test_disabled_writer_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    with writers.MetricWriter(run_dir, enabled=False, wandb_project="p") as writer:
        writer.write_metrics(1, {"loss": 1.0})
        writer.write_text("config", "{}")
        writer.flush()
    assert not run_dir.exists()


def test_wandb_asked_for_but_missing_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(ConfigError, match=r'pip install "illada-jax\[wandb\]"'):
        writers.MetricWriter(tmp_path / "a", tensorboard=False, wandb_project="p")
    assert not (tmp_path / "a").exists()

    calls = []

    class FakeRun:
        def log(self, data, step):
            calls.append(("log", data, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)) or FakeRun())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with writers.MetricWriter(
        tmp_path / "b",
        tensorboard=False,
        wandb_project="p",
        wandb_config={"x": 1},
        wandb_entity="team",
        wandb_mode="offline",
    ) as writer:
        writer.write_metrics(5, {"loss": 0.5})
    assert calls[0][0] == "init" and calls[0][1]["project"] == "p"
    assert calls[0][1]["config"] == {"x": 1}
    assert (calls[0][1]["entity"], calls[0][1]["mode"]) == ("team", "offline")
    assert calls[0][1]["name"] == "b" and calls[0][1]["dir"] == str(tmp_path / "b")
    # the id kept in the run directory; W&B's step counts records, the training step is a field
    assert calls[0][1]["id"] == (tmp_path / "b" / "wandb_run_id").read_text().strip()
    assert calls[1] == ("log", {"loss": 0.5, "train_step": 5}, 0)
    assert calls[2] == ("finish",)


# --- progress -----------------------------------------------------------------------------------


def test_format_log_line():
    record = {"step": 120, "grad_norm": 0.85123, "loss": 3.21449, "lr": 1e-3}
    record.update(tokens_per_s=12345.6, mfu=0.2345, extra=7)
    assert progress.format_log_line(record, 1000) == (
        "step 120/1000 | loss 3.214 | lr 1.000e-03 | grad_norm 0.8512 | tokens_per_s 12,346"
        " | mfu 23.4% | extra 7"
    )
    assert progress.format_log_line({"step": 3, "loss": math.nan}) == "step 3 | loss nan"


def test_progress_plain_lines_when_not_a_tty():
    out = io.StringIO()
    with progress.TrainProgress(100, file=out) as bar:
        assert not bar.bar_active
        bar.advance(5)
        bar.log({"step": 10, "loss": 2.0})
    assert out.getvalue() == "step 10/100 | loss 2\n"


def test_progress_bar_when_forced():
    out = io.StringIO()
    with progress.TrainProgress(100, initial_step=40, file=out, force=True) as bar:
        assert bar.bar_active
        bar.advance(50)
        bar.log({"step": 60, "loss": 1.5, "tokens_per_s": 2048.0})
        bar.write("eval done")
    text = out.getvalue()
    assert "60/100" in text and "eval done" in text
    assert "loss=1.5" in text and "tok/s=2,048" in text


def test_progress_silent_off_process_zero():
    out = io.StringIO()
    with progress.TrainProgress(100, enabled=False, force=True, file=out) as bar:
        bar.log({"step": 10, "loss": 2.0})
        bar.write("hello")
    assert out.getvalue() == ""
