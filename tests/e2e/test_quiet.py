"""No libtpu / absl / TensorFlow start-up noise from `illada` on a host without a TPU, with the
`[tpu]` extra installed (the test environment has it).

Each command runs in a subprocess whose environment has none of the variables that quiet those
libraries (the test process itself may have set them), so what the command prints is what a user
sees. The control shows the noise is real here: plain JAX, started the same way, prints libtpu's
failed probes.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
from _cli import FAST_TRAIN

from illada_jax.parallel.topology import _has_local_accelerator

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None or _has_local_accelerator(),
    reason="needs the [tpu] extra (libtpu) on a host without accelerators",
)
QUIETING = ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY", "GLOG_minloglevel",
            "ILLADA_DEBUG")  # fmt: skip
# glog/absl C++ lines (E1201 10:59:16.633455 ... file.cc:19]) and anything naming the TPU runtime.
# Python logging's default format (Beam's workers: INFO:apache_beam...) too.
NOISE = re.compile(r"^[EWIF]\d{4} |libtpu|TPU|InitGoogle|absl::|^(INFO|WARNING):", re.MULTILINE)


def bare_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in QUIETING and not k.startswith("TPU_")}  # fmt: skip
    env["HF_HUB_OFFLINE"] = "1"
    return env


def run(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=bare_environment(),
        cwd=cwd, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quiet")
    done = run("-m", "illada_jax.cli", "train", f"--workdir={tmp / 'run'}",
               "--config=config:tiny", *FAST_TRAIN, cwd=tmp)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not NOISE.search(done.stderr), done.stderr
    return tmp / "run"


def test_plain_jax_is_noisy_here(tmp_path):
    """The control: without illada's start-up settings, JAX starting its backends on this host
    prints libtpu lines (so the checks below can fail)."""
    done = run("-c", "import jax; jax.devices()", cwd=tmp_path)
    assert NOISE.search(done.stderr), done.stderr


def test_generate_prints_no_libtpu_line(run_dir, tmp_path):
    """`illada generate` starts JAX's backends (as `eval` and `chat` do, through the same
    loader); `params` and `compile` start none. `train` is checked by the fixture."""
    done = run("-m", "illada_jax.cli", "generate", "--checkpoint", str(run_dir), "--prompt",
               "In the beginning", "--gen-length", "8", "--block-length", "8", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not NOISE.search(done.stderr), done.stderr


def test_beam_prepare_prints_no_worker_log(tmp_path):
    """Beam's local worker processes log at INFO before reading any option; none of it shows."""
    pytest.importorskip("apache_beam")
    data = tmp_path / "docs.jsonl"
    data.write_text('{"text": "one document"}\n{"text": "and another"}\n')
    done = run("-m", "illada_jax.cli", "prepare", "--runner", "beam", "--format", "jsonl",
               "--input", str(data), "--output", str(tmp_path / "out"), "--workers", "1",
               "--quiet", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not NOISE.search(done.stderr), done.stderr
    assert "prepared 2 documents" in done.stdout
