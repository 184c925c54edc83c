"""Sampling a block-diffusion model and an autoregressive one
(docs/algorithms.md#sampling-a-block-diffusion-model): the exact block cache gives the tokens of
recomputing every block from scratch (greedy, temperature, threshold), generation stops at EOS,
autoregressive decoding from its cache equals step-by-step argmax of a full causal forward, and
`Model.generate` picks the sampler from the run's objective. The models are trained here for a
few hundred steps on a repeating token cycle, so their predictions are confident, not ties."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from numpy_reference import make_model, tiny_config

from illada_jax.config.schema import DiffusionConfig, Experiment, TrainConfig
from illada_jax.inference import Model
from illada_jax.model.masks import CAUSAL
from illada_jax.sampling.blockwise import Decoding, generate_ar, generate_blocks
from illada_jax.sampling.generate import SamplingOptions, SpecialIds
from illada_jax.sampling.schedule import SamplingError
from illada_jax.train.objective import ar_loss, diffusion_loss

SEQ, BLOCK, EOS = 24, 4, 3
CYCLE = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]  # 10 -> 11 -> ... -> 19 -> EOS -> 10 ...


def cycle_rows(seed: int, batch: int) -> np.ndarray:
    """Rows of the repeating cycle [10..19, EOS] at random phases."""
    period = CYCLE + [EOS]
    phases = np.random.default_rng(seed).integers(0, len(period), batch)
    return np.array([[period[(p + i) % len(period)] for i in range(SEQ)] for p in phases], np.int32)


def train(objective: str, steps: int = 300, shifted: bool = False):
    # max_seq_len 64: room for Model.generate's prompt bucket
    cfg = tiny_config(max_seq_len=64, n_kv_heads=2, shifted_logits=shifted)
    model = make_model(cfg, seed=0)
    diffusion = DiffusionConfig(objective=objective, random_length_mode="none",
                                block_size=BLOCK if objective == "block_diffusion" else 0)  # fmt: skip
    loss_fn = ar_loss if objective == "ar" else diffusion_loss
    graphdef, params = nnx.split(model)
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, tokens, key):
        def loss(p):
            return loss_fn(nnx.merge(graphdef, p), {"tokens": tokens}, key, diffusion)[0]

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    for i in range(steps):
        params, opt_state, value = step(params, opt_state, jnp.asarray(cycle_rows(i, 16)),
                                        jax.random.key(i))  # fmt: skip
    experiment = Experiment(model=cfg, diffusion=diffusion, train=TrainConfig(seq_len=SEQ))
    trained = Model(cfg, graphdef, params)
    trained.experiment = experiment
    return trained, float(value)


@pytest.fixture(scope="module")
def block_model():
    return train("block_diffusion")


@pytest.fixture(scope="module")
def ar_model():
    return train("ar")


@pytest.fixture(scope="module")
def shifted_block_model():
    return train("block_diffusion", shifted=True)


def _prompts():
    # Two prompts of different lengths, left-padded to 6: row 1's prompt ends inside block 1.
    ids = np.array([[12, 13, 14, 15, 16, 17], [0, 0, 0, 18, 19, EOS]], np.int32)
    return ids, ids != 0


@pytest.mark.parametrize(
    "options",
    [
        dict(temperature=0.0),
        dict(temperature=0.8),
        dict(temperature=0.0, threshold=0.9),
        dict(temperature=0.7, remasking="random", steps=2),
    ],  # fmt: skip
)
def test_cached_blocks_give_the_tokens_of_recomputing_every_block(block_model, options):
    model, final_loss = block_model
    assert final_loss < 0.5  # trained: confident predictions, no near-ties
    ids, mask = _prompts()
    opts = SamplingOptions(gen_length=18, steps=options.pop("steps", BLOCK), **options)
    special = SpecialIds.from_config(model.config)
    common = dict(block_size=BLOCK, max_seq_len=SEQ, prompt_mask=mask, seed=5)
    cached = generate_blocks(model.graphdef, model.params, special, ids, opts, **common)
    again = generate_blocks(model.graphdef, model.params, special, ids, opts, cached=False,
                            **common)  # fmt: skip
    np.testing.assert_array_equal(cached.ids, again.ids)
    assert cached.ids.shape == (2, SEQ) and (cached.ids[:, 6:] != special.mask).all()
    np.testing.assert_array_equal(cached.ids[:, :6], ids)  # the prompt is kept


def test_greedy_block_sampling_continues_the_cycle_and_stops_at_eos(block_model):
    model, _ = block_model
    special = SpecialIds.from_config(model.config)
    prompt = np.array([[14, 15, 16, 17]], np.int32)  # one complete block: all prefilled
    result = generate_blocks(model.graphdef, model.params, special, prompt,
                             SamplingOptions(gen_length=20, steps=BLOCK), block_size=BLOCK,
                             max_seq_len=SEQ, stop_ids=(EOS,))  # fmt: skip
    assert result.generated(0).tolist() == [18, 19]  # stops at EOS (cut before it)
    assert result.ids.shape[1] == 8  # the canvas decoded as far as the block holding EOS


def test_model_generate_uses_the_runs_decoding(block_model, ar_model):
    model, _ = block_model
    assert model.decoding == Decoding("block_diffusion", BLOCK)
    out = model.generate([[12, 13, 14]], gen_length=12)
    assert out[0, 3:10].tolist() == [15, 16, 17, 18, 19, EOS, EOS]  # EOS-filled after the stop
    ar, _ = ar_model
    assert ar.decoding == Decoding("ar")
    out = ar.generate([[12, 13, 14]], gen_length=12)
    assert out[0, 3:10].tolist() == [15, 16, 17, 18, 19, EOS, EOS]
    with pytest.raises(SamplingError, match="trained with blocks of 4 .*leave block_length out"):
        model.generate([[12, 13, 14]], gen_length=12, block_length=8)
    one_block = dataclasses.replace(model.experiment, diffusion=dataclasses.replace(
        model.experiment.diffusion, block_size=SEQ))  # fmt: skip
    assert Decoding.of(one_block) == Decoding()  # one block is masked diffusion


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_ar_cache_equals_stepwise_full_causal_forward(ar_model, temperature):
    model, final_loss = ar_model
    assert final_loss < 0.5
    ids, mask = _prompts()
    special = SpecialIds.from_config(model.config)
    opts = SamplingOptions(gen_length=8, block_length=4, temperature=temperature)
    result = generate_ar(model.graphdef, model.params, special, ids, opts, max_seq_len=SEQ,
                         prompt_mask=mask, seed=3)  # fmt: skip
    # Recompute: the whole canvas under causal attention before every token, same draws.
    net = nnx.merge(model.graphdef, model.params)
    canvas = np.concatenate([ids, np.full((2, 8), special.mask, np.int32)], axis=1)
    key_mask = np.concatenate([mask, np.ones((2, 8), bool)], axis=1)
    key = jax.random.key(3)
    from illada_jax.sampling import schedule

    for position in range(6, 14):
        key, sub = jax.random.split(key)
        logits = net(jnp.asarray(canvas), key_mask=jnp.asarray(key_mask), pattern=CAUSAL)
        logits = jnp.where(jnp.arange(logits.shape[-1]) == special.mask, -jnp.inf,
                           logits[:, position - 1])  # fmt: skip
        canvas[:, position] = np.asarray(schedule.sample_candidates(logits, sub, temperature,
                                                                    "fp32_hires"))  # fmt: skip
    np.testing.assert_array_equal(result.ids, canvas)
    if temperature == 0.0:
        assert canvas[0, 6:10].tolist() == [18, 19, EOS, 10]


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_shifted_logits_cached_blocks_equal_recomputing(shifted_block_model, temperature):
    # Position i is predicted from position i-1: the cached window starts on the committed
    # token before the block (row 1's prompt ends inside a block, row 0's on a boundary).
    model, final_loss = shifted_block_model
    assert final_loss < 0.5
    ids, mask = _prompts()
    opts = SamplingOptions(gen_length=18, steps=BLOCK, temperature=temperature)
    special = SpecialIds.from_config(model.config)
    common = dict(block_size=BLOCK, max_seq_len=SEQ, prompt_mask=mask, seed=7)
    cached = generate_blocks(model.graphdef, model.params, special, ids, opts, **common)
    again = generate_blocks(model.graphdef, model.params, special, ids, opts, cached=False,
                            **common)  # fmt: skip
    np.testing.assert_array_equal(cached.ids, again.ids)
    if temperature == 0.0:  # and it has learnt the cycle through the shifted head
        assert cached.ids[0, 6:9].tolist() == [18, 19, EOS]
    # The masked-diffusion sampler's Fast-dLLM caches cannot serve a shifted head: refused.
    from illada_jax.sampling.generate import generate

    with pytest.raises(SamplingError, match="shifted-logits model"):
        generate(model.graphdef, model.params, special, ids, SamplingOptions(
            gen_length=8, steps=8, block_length=4, cache="dual"), prompt_mask=mask)  # fmt: skip


def test_a_shifted_head_generates_autoregressively_as_the_plain_one(ar_model):
    # An AR head is a shifted head: the same parameters read either way give the same tokens.
    model, _ = ar_model
    shifted = nnx.merge(model.graphdef, model.params)
    shifted_module = type(shifted)(dataclasses.replace(model.config, shifted_logits=True),
                                   rngs=nnx.Rngs(0))  # fmt: skip
    nnx.update(shifted_module, nnx.state(shifted, nnx.Param))
    graphdef, params = nnx.split(shifted_module)
    ids, mask = _prompts()
    special = SpecialIds.from_config(model.config)
    opts = SamplingOptions(gen_length=8, block_length=4, temperature=0.9)
    plain = generate_ar(model.graphdef, model.params, special, ids, opts, max_seq_len=SEQ,
                        prompt_mask=mask, seed=3)  # fmt: skip
    moved = generate_ar(graphdef, params, special, ids, opts, max_seq_len=SEQ, prompt_mask=mask,
                        seed=3)  # fmt: skip
    np.testing.assert_array_equal(moved.ids, plain.ids)
