"""Splash attention compiles for a TPU slice through the runner's own path (libtpu, `[tpu]` extra).

The run is built by `train.builder.build_run` on an abstract v5p-8 slice (4 chips) and compiled by
`train.loop.compile_steps`, the function `illada train` calls before its first step: the
pre-training objective with `attention_impl="splash"`, GQA, bf16 compute, iLLaDA's two-segment
split (segment ids) and a (fsdp, tensor) mesh, so the kernel runs inside `shard_map` with the
batch over the data axes and the heads over `tensor`. The same step traced lazily at its call,
outside the mesh (what the runner used to do), does not compile: Mosaic kernels cannot be
partitioned automatically. Runs in a subprocess with libtpu's host probing silenced
(`parallel.topology.quiet_libtpu_on_cpu_host`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.core

SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    from illada_jax.parallel.topology import abstract_devices, quiet_libtpu_on_cpu_host

    quiet_libtpu_on_cpu_host()
    from illada_jax.config import flags
    from illada_jax.train.builder import build_run
    from illada_jax.train.loop import compile_steps

    experiment = flags.experiment_from_flags(json.loads(sys.argv[1]))
    run = build_run(experiment, devices=abstract_devices("v5p-8"))
    record = compile_steps(run)  # as `illada train` compiles its steps
    text = run.compiled_lowering().as_text()  # what the runner compiled
    try:
        run.jitted_train_step.lower(*run.abstract_step_inputs()).compile()
        lazy = "compiled"
    except Exception as err:  # noqa: BLE001 - the message is what the test checks
        lazy = f"{type(err).__name__}: {err}"
    print("RESULT " + json.dumps({
        **record,
        "splash_calls": text.count("tpu_custom_call"),
        "manual_regions": text.count("sdy.manual_computation") + text.count("@Sharding"),
        "memory": run.train_step.memory_analysis().temp_size_in_bytes,
        "mesh": dict(run.mesh.shape),
        "lazy": lazy[:400],
    }))
    """
)

SPLASH = [
    "config:tiny",
    "fiddler:bf16",
    "set:model.attention_impl=splash",
    "set:model.head_dim=128",  # the kernel's lane width
    "set:model.max_seq_len=512",
    "set:train.seq_len=512",
    "set:train.batch_size=4",
    "set:diffusion.random_length_mode=illada_split",
    "set:diffusion.two_segment_prob=0.3",
    "set:mesh.rules=fsdp_tp",
    "set:mesh.fsdp=2",
    "set:mesh.tensor=2",
    "set:train.eval_every=10",
]


@pytest.mark.tpu_compile
def test_splash_attention_compiles_for_tpu_v5p_through_the_runner():
    try:
        import libtpu  # noqa: F401
    except ImportError as err:
        raise AssertionError(
            "libtpu is missing: install the test extras, pip install -e '.[dev,tpu]'"
        ) from err
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(SPLASH)],
                          capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert result["mesh"] == {"dcn_data": 1, "data": 1, "fsdp": 2, "tensor": 2}
    # The kernel is in the program (forward and backward), inside shard_map ...
    assert result["splash_calls"] >= 2 and result["manual_regions"] >= 1, result
    assert result["train_step_program"] and result["eval_step_program"]
    assert result["memory"] > 0
    # ... and traced outside the mesh it cannot be partitioned (what the runner used to run).
    assert "cannot be automatically partitioned" in result["lazy"], result["lazy"]


@pytest.mark.tpu_compile
def test_block_diffusion_splash_kernel_compiles_for_tpu_v5p_through_the_runner():
    # The noisy + clean canvas (2 x 512 positions) with its block-sparse mask (blocks of 128),
    # in the train step and in the per-block held-out bound.
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    blocks = [*SPLASH, "set:diffusion.objective=block_diffusion", "set:diffusion.block_size=128"]
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(blocks)],
                          capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert result["splash_calls"] >= 2 and result["manual_regions"] >= 1, result
    assert result["train_step_program"] and result["eval_step_program"]
