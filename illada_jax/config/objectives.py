"""The checks that tie an experiment's objective to its other sections (docs/algorithms.md):
which data each objective reads, which settings it needs and which it refuses. Run by
`Experiment.__post_init__`, so a mismatch is a one-line ConfigError before anything is traced."""

from __future__ import annotations

from illada_jax.config.checks import fail
from illada_jax.config.post_training import REFERENCE_OBJECTIVES

# Objectives whose rows are (prompt, answer) pairs rather than windows of a token stream.
_PAIR_OBJECTIVES = ("sft_llada", "vrpo", "grpo")
_MADE_BY = {
    "sft_llada": "SFT source (a JSONL file or 'demo')",
    "vrpo": "preference dataset (made by illada prepare --format pref)",
    "grpo": "prompt dataset (made by illada prepare --format rl)",
}


def check_objective(experiment) -> None:
    """Every cross-section rule of `experiment.diffusion.objective` (an `Experiment`)."""
    objective, diffusion = experiment.diffusion.objective, experiment.diffusion
    if objective in _MADE_BY and len(experiment.data.datasets) != 1:
        fail("data.datasets", experiment.data.datasets,
             f"objective={objective} takes exactly one {_MADE_BY[objective]}")  # fmt: skip
    if objective in _PAIR_OBJECTIVES and diffusion.random_length_mode != "none":
        fail("diffusion.random_length_mode", diffusion.random_length_mode,
             f"must be 'none' with objective={objective} (its rows are (prompt, answer) "
             "pairs, docs/algorithms.md#sft-llada-style)")  # fmt: skip
    if objective in REFERENCE_OBJECTIVES and not experiment.checkpoint.init_from:
        fail("checkpoint.init_from", "", f"objective={objective} starts from a fine-tuned "
             "run, which is also its frozen reference: set checkpoint.init_from=RUN_DIR "
             "(e.g. an SFT run)")  # fmt: skip
    if objective == "grpo":
        _check_grpo(experiment)
    _check_block_size(experiment)


def _check_block_size(experiment) -> None:
    diffusion, seq_len = experiment.diffusion, experiment.train.seq_len
    size, steps, sizes = (
        diffusion.block_size,
        diffusion.block_schedule_steps,
        diffusion.block_schedule_sizes,
    )
    if diffusion.objective != "block_diffusion":
        for field, value in (("block_size", size), ("block_schedule_steps", steps),
                             ("block_schedule_sizes", sizes)):  # fmt: skip
            if value:
                fail(f"diffusion.{field}", value, "is only used with "
                     "diffusion.objective=block_diffusion: remove it or set the objective")  # fmt: skip
        return
    for field, value in [("block_size", size)] + [("block_schedule_sizes", s) for s in sizes]:
        if value < 1 or seq_len % value:
            divisors = [d for d in range(1, seq_len + 1) if seq_len % d == 0]
            shown = ", ".join(map(str, divisors[:12])) + (", ..." if len(divisors) > 12 else "")
            fail(f"diffusion.{field}", value, f"must divide train.seq_len={seq_len} (blocks tile "
                 f"the sequence): pick one of {shown}; {seq_len} is masked diffusion")  # fmt: skip
    if len(steps) != len(sizes):
        fail("diffusion.block_schedule_steps", steps, f"needs one start step per size in "
             f"block_schedule_sizes={sizes}")  # fmt: skip
    if steps and (steps[0] != 0 or any(b <= a for a, b in zip(steps, steps[1:]))):
        fail("diffusion.block_schedule_steps", steps, "must start at 0 and increase (the step "
             "each phase starts at)")  # fmt: skip
    if sizes and sizes[-1] != size:
        fail("diffusion.block_schedule_sizes", sizes, f"must end with block_size={size}, the "
             "block size the model samples with")  # fmt: skip


def _check_grpo(experiment) -> None:
    group = experiment.grpo.group_size
    seq_len, batch_size = experiment.train.seq_len, experiment.train.batch_size
    if batch_size % group:
        fail("train.batch_size", batch_size, f"must be a multiple of grpo.group_size={group}: "
             f"a step's rows are prompts x their {group} completions")  # fmt: skip
    if seq_len - experiment.grpo.gen_length < 1:
        fail("grpo.gen_length", experiment.grpo.gen_length, f"must be < train.seq_len="
             f"{seq_len}: a row is the prompt (seq_len - gen_length tokens, left-padded) and its "
             "completion")  # fmt: skip


def block_size_at(diffusion, step: int) -> int:
    """The block size a block-diffusion run trains at optimizer step `step` (0-based): its
    schedule's phase (`block_schedule_steps` / `_sizes`), or `block_size`."""
    phases = zip(diffusion.block_schedule_steps, diffusion.block_schedule_sizes)
    started = [size for start, size in phases if start <= step]
    return started[-1] if started else diffusion.block_size
