"""The `grpo` config section and objective=grpo's checks: each bad value is one ConfigError that
names the field and the fix, raised when the experiment is built."""

from __future__ import annotations

import dataclasses

import pytest

from illada_jax.config.post_training import GrpoConfig
from illada_jax.config.schema import (
    CheckpointConfig,
    ConfigError,
    DataConfig,
    DiffusionConfig,
    Experiment,
    TrainConfig,
)


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("group_size", 1, "group_size=1 is invalid: must be >= 2"),
        ("inner_updates", 0, "inner_updates=0 is invalid"),
        ("p_mask_prompt", 1.0, "p_mask_prompt=1.0 is invalid: must be in [0, 1)"),
        ("clip_eps", 0.0, "clip_eps=0.0 is invalid"),
        ("beta", -0.1, "beta=-0.1 is invalid"),
        ("reward", "no_such_reward", "reward='no_such_reward' is invalid"),
        ("reward", "regex:(", "not a valid regular expression"),
        ("block_length", 5, "block_length=5 is invalid: must divide gen_length=32"),
        ("steps", 3, "steps=3 is invalid: must be a multiple of the 2 blocks"),
        ("remasking", "best", "remasking='best' is invalid"),
    ],
)
def test_a_bad_grpo_setting_is_one_error_naming_it(field, value, expected):
    settings = {"block_length": 16} if field == "steps" else {}
    with pytest.raises(ConfigError) as error:
        GrpoConfig(**{**settings, field: value})
    assert expected in str(error.value)


def _experiment(**train) -> Experiment:
    return Experiment(
        diffusion=DiffusionConfig(objective="grpo", random_length_mode="none"),
        data=DataConfig(datasets=("data/rl",)),
        checkpoint=CheckpointConfig(init_from="runs/sft"),
        train=dataclasses.replace(TrainConfig(), **train),
        grpo=GrpoConfig(group_size=4, gen_length=16, steps=16, block_length=16),
    )


def test_the_batch_is_prompts_times_their_group_and_rows_hold_prompt_and_completion():
    assert _experiment(batch_size=8, seq_len=64).grpo.group_size == 4
    with pytest.raises(ConfigError, match="train.batch_size=6 is invalid: must be a multiple of "
                                          "grpo.group_size=4"):  # fmt: skip
        _experiment(batch_size=6, seq_len=64)
    with pytest.raises(ConfigError, match="grpo.gen_length=16 is invalid: must be < "
                                          "train.seq_len=16"):  # fmt: skip
        _experiment(batch_size=8, seq_len=16)


def test_grpo_starts_from_a_run_which_is_its_reference():
    with pytest.raises(ConfigError, match="checkpoint.init_from"):
        dataclasses.replace(_experiment(batch_size=8, seq_len=64), checkpoint=CheckpointConfig())
