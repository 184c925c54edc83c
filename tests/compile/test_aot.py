"""`illada compile` (illada_jax.tools.aot) and named TPU slices (illada_jax.parallel.topology).

The compiles run in subprocesses (`illada compile`), as a user runs them: libtpu compiles real TPU
programs for abstract v5p / v5e devices on this CPU host, and the tool silences libtpu's host
probing itself. One subprocess per scenario, shared through module-scoped fixtures:
- the tiny experiment (16 x 128) on v5p-8, compiled as configured (XLA attention, fp32, FSDP over
  4 chips): it must fit;
- the small preset at 64 x 2048 on one v5e chip (16 GiB) with remat pinned to save_dots keeps the
  [B, H, S, S] attention scores of every layer (~50 GiB): XLA refuses while compiling and the tool
  must say fits=false and what to try.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from illada_jax.config.schema import ConfigError
from illada_jax.parallel import tpu_runtime
from illada_jax.parallel.topology import GIB, parse_slice
from illada_jax.tools import aot_report

pytestmark = pytest.mark.core

RESULT = re.compile(
    r"^RESULT fits=(true|false) bytes_per_chip=(\d+) hbm_per_chip=(\d+) "
    r"flops_per_step=(\S+) model_flops_per_step=(\S+) program=([0-9a-f]{16}|-)$"
)


def _compile(tmp_path_factory, name: str, *arguments: str) -> dict:
    out = tmp_path_factory.mktemp(name) / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-m", "illada_jax.cli", "compile", *arguments, "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr[-4000:]
    return {
        "rc": result.returncode,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "last": lines[-1],
        "report": json.loads(out.read_text())["report"] if out.exists() else None,
    }


@pytest.fixture(scope="module")
def tiny_v5p(tmp_path_factory):
    hlo = tmp_path_factory.mktemp("tiny-hlo") / "compile.hlo"
    out = _compile(tmp_path_factory, "tiny", "--config=config:tiny", "--topology=v5p-8",
                   f"--dump-hlo={hlo}")  # fmt: skip
    return {**out, "hlo": hlo.read_text() if hlo.exists() else ""}


@pytest.fixture(scope="module")
def oversized_v5e(tmp_path_factory):
    return _compile(
        tmp_path_factory,
        "oversized",
        "--config=config:small",
        "--config=set:model.remat_policy=save_dots",
        "--config=set:model.max_seq_len=2048",
        "--topology=v5e-1",
        "--global-batch=64",
        "--seq-len=2048",
    )


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name, chips, topology, slices, hbm_gib",
    [
        ("v4-8", 4, "v4:2x2x1", 1, 32),  # v4/v5p: -N counts TensorCores (2 per chip)
        ("v4-4096", 2048, "v4:8x16x16", 1, 32),
        ("v5p-8", 4, "v5:2x2x1", 1, 95),
        ("v5p-256", 128, "v5:4x4x8", 1, 95),
        ("v5p-1024", 512, "v5:8x8x8", 1, 95),
        ("v5e-4", 4, "v5e:2x2", 1, 16),  # v5e/v6e: -N counts chips
        ("v5litepod-16", 16, "v5e:4x4", 1, 16),
        ("v6e-8", 8, "v6e:2x4", 1, 32),
        ("v6e-256", 256, "v6e:16x16", 1, 32),
        ("2xv5p-256", 256, "v5:4x4x8", 2, 95),
        ("v5p:4x4x4", 64, "v5:4x4x4", 1, 95),
    ],
)
def test_slice_names_follow_google_naming(name, chips, topology, slices, hbm_gib):
    slice_ = parse_slice(name)
    assert (slice_.num_chips, slice_.topology_name, slice_.num_slices) == (chips, topology, slices)
    assert slice_.hbm_per_chip == hbm_gib * GIB


def test_num_slices_argument_and_conflicts():
    assert parse_slice("v5p-256", num_slices=4).num_chips == 512
    assert parse_slice("2xv6e-256", num_slices=2).name == "2xv6e-256"
    with pytest.raises(ConfigError, match="names 2 slices but --num-slices=3"):
        parse_slice("2xv5p-256", num_slices=3)


@pytest.mark.parametrize(
    "name, message",
    [
        ("v7-8", "unknown TPU generation 'v7'.*v4, v5p, v5e, v6e"),
        ("h100-8", "unknown TPU generation"),
        ("v5p-12", "counts TensorCores and must be a power of two"),
        ("v5p-7", "counts TensorCores"),
        ("v6e-12", "counts chips and must be a power of two"),
        ("v5p-2", "at least 4 chips"),
        ("v5e:2x2x2", "v5e topologies have 2 positive dimensions"),
        ("tpu", "is not a TPU slice name; use e.g. v4-8"),
    ],
)
def test_bad_slice_names_say_what_to_use(name, message):
    with pytest.raises(ConfigError, match=message):
        parse_slice(name)


# ----------------------------------------------------------------------------- reports


def test_out_of_memory_messages_give_the_bytes_asked_for():
    temporaries = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (34.21G) exceeds available HBM (15.75G)."
    )
    assert aot_report.oom_bytes(temporaries) == int(34.21 * GIB)
    assert aot_report.oom_bytes("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of "
                          "memory in memory space hbm. Used 113.5G of 95.74G hbm.") == int(
        113.5 * GIB
    )  # fmt: skip
    assert aot_report.oom_bytes("RESOURCE_EXHAUSTED: no size here") == 0


def test_result_line_format():
    report = aot_report.Report(
        topology="v5p-8",
        chips=4,
        hbm_per_chip=95 * GIB,
        global_batch=16,
        seq_len=128,
        grad_accum=1,
        per_device_batch=4,
        remat="full",
        attention="splash",
        mesh="",
        fits=True,
        total_bytes=123,
        compiled_flops_per_step=7.5e10,
        model_flops_per_step=6.75e10,
    )
    line = aot_report.result_line(report)
    assert RESULT.match(line), line
    assert line == (
        "RESULT fits=true bytes_per_chip=123 hbm_per_chip=102005473280 "
        "flops_per_step=7.5e+10 model_flops_per_step=6.75e+10 program=-"
    )


# ----------------------------------------------------------------------------- compiles


@pytest.mark.tpu_compile
def test_tiny_config_compiles_for_v5p_and_fits(tiny_v5p):
    assert tiny_v5p["rc"] == 0, tiny_v5p["stdout"][-3000:] + tiny_v5p["stderr"][-3000:]
    match = RESULT.match(tiny_v5p["last"])
    assert match, tiny_v5p["last"]
    fits, total, hbm = match.group(1), int(match.group(2)), int(match.group(3))
    assert fits == "true" and 0 < total < hbm == 95 * GIB
    report = tiny_v5p["report"]
    # Compiled as configured: no TPU defaults are applied behind the config's back.
    assert (report["attention"], report["remat"], report["chips"]) == (
        "xla",
        "save_dots_no_batch",
        4,
    )
    assert report["mesh"] == "dcn_data=1 data=1 fsdp=4 tensor=1 rules=fsdp"
    assert report["argument_bytes"] > 0 and report["temp_bytes"] > 0
    assert report["total_bytes"] == total
    assert report["notes"] == []


RUNNER_PROGRAM = textwrap.dedent(
    """
    import json
    import sys

    from illada_jax.parallel.topology import abstract_devices, quiet_libtpu_on_cpu_host

    quiet_libtpu_on_cpu_host()
    from illada_jax.parallel import tpu_runtime

    tpu_runtime.apply_to_environment("v5p-8")  # what the launchers set on the workers
    from illada_jax.config import flags
    from illada_jax.train.builder import build_run
    from illada_jax.train.loop import compile_steps

    run = build_run(flags.experiment_from_flags(sys.argv[1:]), devices=abstract_devices("v5p-8"))
    record = compile_steps(run)  # what `illada train` compiles before its first step
    print("RESULT " + json.dumps({**record, "hlo": run.compiled_lowering().as_text()}))
    """
)


def runner_program(*directives: str) -> dict:
    """The runner's compile (`train.loop.compile_steps` on `build_run`'s run) for v5p-8."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
    result = subprocess.run([sys.executable, "-c", RUNNER_PROGRAM, *directives],
                            capture_output=True, text=True, env={**env, "JAX_PLATFORMS": "cpu"},
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.mark.tpu_compile
def test_compile_reports_the_executable_the_runner_compiles(tiny_v5p):
    """The train step `illada compile` reports on is the executable `illada train` compiles and
    calls (`train.loop.compile_steps`) on the same (abstract) devices with the same libtpu
    flags: equal fingerprints of the compiled programs, and the same lowering."""
    runner = runner_program("config:tiny")
    assert tiny_v5p["report"]["program"] == runner["train_step_program"]
    assert RESULT.match(tiny_v5p["last"]).group(6) == runner["train_step_program"]
    assert tiny_v5p["hlo"].startswith("module @jit_train_step")
    assert tiny_v5p["hlo"] == runner["hlo"]
    # The libtpu flags of the generation's table are those it compiled with.
    assert tiny_v5p["report"]["libtpu_init_args"] == tpu_runtime.libtpu_init_args("v5p-8")
    # The comparison is sensitive: a different run (another batch) is another program.
    other = runner_program("config:tiny", "set:train.batch_size=32")
    assert other["train_step_program"] != runner["train_step_program"]


@pytest.mark.tpu_compile
def test_compiled_flops_match_the_model_formula(tiny_v5p):
    """Compiled (cost_analysis per device x 4 chips, loops corrected) vs 6N + 12·L·d·S per token.

    Expected ~1.1: remat (save_dots_no_batch) recomputes only elementwise work, the masking,
    softmax/CE and AdamW add a few percent. 0.85-1.6 catches the failure modes: counting the
    scanned program once (0.68 here: one layer of four), per-device FLOPs taken for the whole
    step (x1/4), or per-device FLOPs summed twice (x4).
    """
    match = RESULT.match(tiny_v5p["last"])
    compiled, model = float(match.group(4)), float(match.group(5))
    assert 0.85 < compiled / model < 1.6, (compiled, model)
    report = tiny_v5p["report"]
    assert report["flops_source"] == "loop-corrected with probes"
    assert report["scanned_flops_per_device"] < report["compiled_flops_per_device"]
    assert compiled == pytest.approx(report["compiled_flops_per_device"] * 4, rel=1e-5)


@pytest.mark.tpu_compile
def test_oversized_config_reports_does_not_fit_instead_of_crashing(oversized_v5e):
    out = oversized_v5e
    assert out["rc"] == 1, out["stdout"][-3000:] + out["stderr"][-3000:]
    assert "Traceback" not in out["stderr"]
    match = RESULT.match(out["last"])
    assert match and match.group(1) == "false", out["last"]
    assert int(match.group(2)) > 16 * GIB  # what XLA asked for, beyond the chip's 16 GiB
    assert int(match.group(3)) == 16 * GIB
    assert "RESOURCE_EXHAUSTED" in out["report"]["error"]
    assert "fits            false" in out["stdout"]
    assert any("remat_policy=full" in note for note in out["report"]["notes"])
