"""Compilation behaviour of the sampler (docs/algorithms.md#sampling): prompts of different lengths
inside one bucket share a program, and variable-length generation compiles one block program for
every length it reaches. Counts come from the jitted functions' own caches."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx
from numpy_reference import tiny_config

from illada_jax.inference.model import PROMPT_BUCKET, Model
from illada_jax.model import Transformer
from illada_jax.sampling import generate as generate_lib

pytestmark = pytest.mark.core


def _model() -> Model:
    return Model.from_module(Transformer(tiny_config(max_seq_len=96), rngs=nnx.Rngs(0)))


def test_prompts_in_one_bucket_share_one_program():
    model = _model()
    generate_lib._generate_fixed.clear_cache()
    for length in (3, 11, PROMPT_BUCKET):  # all in the first bucket
        out = model.generate([list(range(10, 10 + length))], gen_length=8, steps=8, block_length=4)
        assert out.shape == (1, length + 8)
        assert out[0, :length].tolist() == list(range(10, 10 + length))
    assert generate_lib._generate_fixed._cache_size() == 1
    model.generate([list(range(10, 10 + PROMPT_BUCKET + 1))], gen_length=8, steps=8, block_length=4)
    assert generate_lib._generate_fixed._cache_size() == 2  # the next bucket


def test_variable_length_compiles_once_for_every_length():
    model = _model()
    generate_lib._generate_one_block.clear_cache()
    # stop_ids=() never stops: all 4 blocks are opened, each with the same program.
    out = model.generate([[10, 11, 12]], gen_length=32, block_length=8, variable_length=True,
                         stop_ids=())  # fmt: skip
    assert out.shape == (1, 3 + 32)
    assert (out[0, 3:] != model.special_ids.mask).all()
    assert generate_lib._generate_one_block._cache_size() == 1
    model.generate([[13, 14]], gen_length=16, block_length=8, variable_length=True, stop_ids=())
    assert generate_lib._generate_one_block._cache_size() == 2  # a new budget, a new canvas


def test_ragged_batch_is_left_padded_and_matches_single_rows():
    model = _model()
    rows = [[10, 11, 12, 13, 14], [20, 21]]
    batch = model.generate(rows, gen_length=8, steps=8, block_length=8)
    for r, row in enumerate(rows):
        alone = model.generate([row], gen_length=8, steps=8, block_length=8)
        np.testing.assert_array_equal(batch[r, -8:], alone[0, -8:])


def test_bad_prompts_are_clear_errors():
    import pytest

    from illada_jax.sampling.schedule import SamplingError

    model = _model()
    with pytest.raises(SamplingError, match="empty prompt"):
        model.generate([], gen_length=8)
    with pytest.raises(SamplingError, match="must both be"):
        model.generate(np.ones((2, 5), np.int32), gen_length=8, attention_mask=np.ones((2, 4)))
    with pytest.raises(SamplingError, match="not rectangular"):
        model.generate([[10, 11], [12]], gen_length=8, attention_mask=[[1, 1], [1]])
    # A padded array with its mask gives the same continuation as the unpadded row.
    padded = model.generate(np.array([[0, 0, 10, 11]]), gen_length=8, steps=8,
                            attention_mask=np.array([[0, 0, 1, 1]]))  # fmt: skip
    plain = model.generate([[10, 11]], gen_length=8, steps=8)
    np.testing.assert_array_equal(padded[0, -8:], plain[0, -8:])
