"""The TPU runtime table (`parallel/tpu_runtime.py`) is valid for the pinned libtpu: `illada
compile` of a small config with each generation's flags (and the multi-slice ones) compiles, and
libtpu complains about none of them (an unknown flag aborts it; an out-of-range value, such as a
VMEM limit above the chip's, is logged as INVALID_ARGUMENT and ignored; some combinations are
refused with FAILED_PRECONDITION). The report states the flags it compiled with."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from illada_jax.parallel import tpu_runtime

pytestmark = pytest.mark.core

CASES = {
    "v4-8": [],
    "v5e-8": [],
    "v5p-8": [],
    "v6e-8": [],
    "2xv5p-8": ["--config=set:mesh.dcn_data=2"],
}


@pytest.mark.tpu_compile
@pytest.mark.parametrize("topology", sorted(CASES))
def test_each_generation_compiles_with_its_libtpu_flags(topology, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "LIBTPU"))}
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "illada_jax.cli", "compile", "--config=config:tiny",
         f"--topology={topology}", "--no-probes", f"--json={report}", *CASES[topology]],
        capture_output=True, text=True, env={**env, "JAX_PLATFORMS": "cpu"}, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for complaint in ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "Unknown command line flag"):
        assert complaint not in done.stderr, done.stderr[-3000:]
    flags = json.loads(report.read_text())["report"]["libtpu_init_args"]
    assert flags == tpu_runtime.libtpu_init_args(topology)
    assert "xla_tpu_enable_async_collective_fusion=true" in flags
    assert ("xla_tpu_enable_data_parallel_all_reduce_opt" in flags) == topology.startswith("2x")
