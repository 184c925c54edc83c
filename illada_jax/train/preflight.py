"""Checks `illada train` makes before it writes anything: a refused run leaves its directory as
it was.

The runner (`train/loop.py`) calls, in order:

1. `check_buckets`: every gs:// bucket the run names answers (one request each), then
   `build_run` (config and mesh checks, the learning-rate schedule);
2. `check_memory`: the train state (parameters, Adam moments, gradients) fits the devices
   (from the abstract state: nothing is allocated);
3. `check_inputs`: the training data, the held-out set, `checkpoint.init_from`;
4. `check_checkpoints`: the newest readable checkpoint in `WORKDIR/checkpoints` fits this run
   (model shape, tokenizer, state tree), read without creating or changing a file;
5. after the ahead-of-time compile, `check_compiled_memory`: the compiled step's own memory
   analysis fits. A refusal here leaves only the compilation cache (`WORKDIR/compile_cache`),
   which makes the next try's compile a load.

Only then are `config.json`, the checkpoint directory and the metrics files written.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import jax
import numpy as np

from illada_jax import storage
from illada_jax.ckpt import rundir
from illada_jax.errors import IlladaError

GIB = 2**30
# HBM per chip of the v5p, the slice the recipes size for (docs/pods.md); half of it for the
# state leaves room for activations when suggesting a slice.
_V5P_HBM = 95 * GIB


class InsufficientMemoryError(IlladaError, MemoryError):
    """The run does not fit the devices' memory; the message says how to size a pod."""


def check_buckets(experiment, workdir) -> None:
    """One request per gs:// bucket the run names (workdir, datasets, held-out set, init_from,
    tokenizer): an unreachable, missing or forbidden bucket is one `StorageError` in seconds."""
    named = [
        os.fspath(workdir),
        *experiment.data.datasets,
        experiment.train.eval_dataset,
        experiment.checkpoint.init_from,
        experiment.data.tokenizer,
    ]
    buckets = dict.fromkeys(m for text in named for m in re.findall(r"gs://[^/,\s]+", text))
    for bucket in buckets:
        storage.check_bucket(bucket)


def check_inputs(run):
    """Open the training data (and the held-out set when the run evaluates) and resolve
    `checkpoint.init_from`: a mistake there is reported before anything is written. Returns the
    training pipeline."""
    from illada_jax.ckpt.manager import check_init_from

    experiment = run.experiment
    pipeline = run.pipeline()
    if experiment.train.eval_every:
        run.pipeline(dataset=experiment.train.eval_dataset)
    if experiment.checkpoint.init_from:  # it exists and its parameters fit this model
        check_init_from(experiment.checkpoint.init_from, run.abstract_state["params"])
    if run.reinforcement:
        check_reward(run, pipeline)
    return pipeline


def check_reward(run, pipeline) -> None:
    """objective=grpo: the completions can be decoded (a tokenizer for the model) and the reward
    runs: it scores the first prompts' reference answers as completions, so a reward that raises
    or returns NaN is refused (`RewardError` naming the example) before the run writes a file."""
    from illada_jax import rewards
    from illada_jax.data.chat.rl import prompt_text
    from illada_jax.data.tokenizers.tokenizer import Tokenizer

    experiment = run.experiment
    tokenizer, why = Tokenizer.for_model(experiment.data.tokenizer, experiment.model)
    if tokenizer is None:
        raise rewards.RewardError(f"objective=grpo scores decoded completions, but {why}; set "
                                  "data.tokenizer to the model's tokenizer")  # fmt: skip
    examples = pipeline.examples[:8]
    rewards.score(rewards.get(experiment.grpo.reward), experiment.grpo.reward,
                  [prompt_text(e) for e in examples], [e["answer"] for e in examples],
                  examples)  # fmt: skip


def check_checkpoints(run, workdir) -> None:
    """Refuse (`IncompatibleCheckpointError`) when the newest readable checkpoint in `workdir`
    does not fit `run`; nothing is created when there is none."""
    from illada_jax.ckpt.manager import RunCheckpoints

    if not (storage.path(workdir) / rundir.CHECKPOINTS).is_dir():
        return
    checkpoints = RunCheckpoints(workdir, run.experiment.checkpoint, create=False)
    try:
        checkpoints.check_latest(run.abstract_state, config=run.experiment)
    finally:
        checkpoints.close()


def device_memory_bytes(device) -> tuple[int, str]:
    """(bytes one device can hold, where the figure comes from). Accelerators report their
    limit; CPU devices share the host's memory (MemTotal / local devices)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{device.platform} memory"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    count = max(1, jax.local_device_count())
    where = "host memory" + (f" shared by {count} devices" if count > 1 else "")
    return total // count, where


def state_bytes_per_device(run) -> tuple[int, int]:
    """(train state bytes, gradient bytes) on the most loaded device: each leaf's shard."""

    def shard_bytes(leaf) -> int:
        shape = leaf.sharding.shard_shape(leaf.shape)
        return math.prod(shape) * np.dtype(leaf.dtype).itemsize

    state = sum(shard_bytes(leaf) for leaf in jax.tree.leaves(run.abstract_state))
    params = run.abstract_state["params"]
    grads = sum(
        math.prod(leaf.sharding.shard_shape(leaf.shape)) * 4 for leaf in jax.tree.leaves(params)
    )
    return state, grads


def suggested_topology(total_state_bytes: int) -> str:
    """The smallest v5p slice (a power of two of chips) whose chips hold the state in half their
    HBM."""
    chips = 4
    while total_state_bytes / chips > _V5P_HBM / 2:
        chips *= 2
    return f"v5p-{2 * chips}"  # v5p names count TensorCores, two per chip


def _local_device(run):
    """One of this process's devices of the mesh (another process's device reports nothing)."""
    here = jax.process_index()
    return next(d for d in run.mesh.devices.flat if d.process_index == here)


def _refuse(run, needed: int, what: str, fix: str, written: str = "Nothing was written.") -> None:
    device = _local_device(run)
    limit, where = device_memory_bytes(device)
    if needed <= limit:
        return
    total_state = sum(
        math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
        for leaf in jax.tree.leaves(run.abstract_state)
    )
    raise InsufficientMemoryError(
        f"{run.experiment.model.name} does not fit these devices: {what} needs "
        f"{needed / GIB:.1f} GiB per device, and each of the {run.mesh.devices.size} "
        f"{device.platform} devices has {limit / GIB:.1f} GiB ({where}). "
        f"{written} Size a pod for it with the same --config flags: illada compile "
        f"--config=... --topology={suggested_topology(total_state)} (the smallest v5p slice "
        "holding the train state; the compile reports activations too, docs/pods.md), or "
        f"shrink {fix}"
    )


def check_memory(run) -> None:
    """Refuse a run whose train state and gradients alone exceed a device's memory (the 8B
    recipes on a laptop), before any state is initialised or compiled."""
    state, grads = state_bytes_per_device(run)
    _refuse(run, state + grads, "the train state (parameters, Adam moments) with its gradients",
            "the model")  # fmt: skip


def check_compiled_memory(run, compiled: Any) -> None:
    """Refuse a run whose compiled train step (arguments, outputs, temporaries) exceeds a
    device's memory; skipped where the backend gives no memory analysis."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return
    needed = (
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )
    _refuse(run, needed, "the compiled train step (state, batch, activations)",
            "the model, train.batch_size or train.seq_len (or raise train.grad_accum)",
            "Only the compilation cache was written.")  # fmt: skip
