"""Loop-corrected FLOPs of a compiled train step, from small unrolled probe compiles.

XLA's cost analysis counts a while-loop body once, so the scanned program reports one layer, one
loss chunk and one micro-batch. Small unrolled probes recover the missing trips:
F(l layers, chunk c) = F_rest + l·F_layer + c·F_position, from F(1, c), F(2, c) and F(1, c/2),
each compiled for one sequence per data-parallel rank (unrolled programs need more memory than
scanned ones, and XLA refuses programs that do not fit); FLOPs grow linearly with the batch, so
the step is F(L, S) x sequences per rank x grad_accum (the optimizer update, scaled along, is
negligible).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from illada_jax.config.schema import Experiment


def probe_experiment(experiment: Experiment, n_layers: int, chunk: int, dp: int) -> Experiment:
    """One sequence per data-parallel rank (`dp` ranks), `n_layers` unrolled layers, loss chunks
    of `chunk` positions."""
    return dataclasses.replace(
        experiment,
        model=dataclasses.replace(experiment.model, n_layers=n_layers, scan_layers=False),
        diffusion=dataclasses.replace(experiment.diffusion, loss_chunk_size=chunk),
        train=dataclasses.replace(experiment.train, batch_size=dp, grad_accum=1),
    )


def loop_corrected_flops(
    experiment: Experiment, dp: int, compiled_flops: Callable[[Experiment], float]
) -> float:
    """Per-device FLOPs of one train step of `experiment` on `dp` data-parallel ranks with every
    loop counted as often as it runs; `compiled_flops(probe)` compiles a probe experiment on the
    same devices and returns its per-device FLOPs."""
    model, seq_len = experiment.model, experiment.train.seq_len
    chunk = min(experiment.diffusion.loss_chunk_size, seq_len)
    n_chunks = -(-seq_len // chunk)
    one = compiled_flops(probe_experiment(experiment, 1, chunk, dp))
    per_layer = 0.0
    if model.n_layers > 1:
        per_layer = compiled_flops(probe_experiment(experiment, 2, chunk, dp)) - one
    per_position = 0.0
    if n_chunks > 1 and chunk >= 2:
        half = compiled_flops(probe_experiment(experiment, 1, chunk // 2, dp))
        per_position = (one - half) / (chunk - chunk // 2)
    total = one + (model.n_layers - 1) * per_layer + (n_chunks - 1) * chunk * per_position
    return total * experiment.train.batch_size / dp
