"""Block diffusion and the autoregressive baseline (docs/algorithms.md#block-diffusion,
docs/algorithms.md#the-autoregressive-baseline): the attention patterns against masks written
out here position by position, the models' hidden states against the float64 NumPy reference,
block_size = seq_len against the masked-diffusion loss, the per-block times and bound, splash
(Pallas interpret mode) against the dense kernel, and the config errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy_reference import (
    make_model,
    max_rel_err,
    model_params_f64,
    random_tokens,
    ref_forward,
    tiny_config,
)

from illada_jax.config.schema import (
    ConfigError,
    DataConfig,
    DiffusionConfig,
    Experiment,
    ModelConfig,
    TrainConfig,
)
from illada_jax.diffusion import blocks, masking
from illada_jax.model.attention import attention_mask, splash_attention, xla_attention
from illada_jax.model.masks import CAUSAL, AttentionPattern
from illada_jax.train.objective import (
    ar_loss,
    ar_nll,
    diffusion_loss,
    elbo_bound,
    noisy_hidden,
)

MASK_ID = 4  # tiny_config's mask id (the ModelConfig default)


def written_out(kind: str, n: int, block: int = 0, half: int = 0) -> np.ndarray:
    """The pattern as a loop over (query, key) pairs, straight from its definition."""
    allowed = np.zeros((n, n), bool)
    for q in range(n):
        for kv in range(n):
            if kind == "causal":
                allowed[q, kv] = kv <= q
            elif kind == "block_causal":
                allowed[q, kv] = kv // block <= q // block
            else:  # noisy_clean over [x_t ; x]: halves of `half` positions
                q_noisy, kv_noisy = q < half, kv < half
                qb, kb = (q % half) // block, (kv % half) // block
                if q_noisy and kv_noisy:
                    allowed[q, kv] = qb == kb
                elif q_noisy:
                    allowed[q, kv] = kb < qb
                else:
                    allowed[q, kv] = (not kv_noisy) and kb <= qb
    return allowed


@pytest.mark.parametrize(
    "pattern, expected",
    [
        (CAUSAL, written_out("causal", 12)),
        (AttentionPattern("block_causal", 4), written_out("block_causal", 12, 4)),
        (AttentionPattern("noisy_clean", 3, 6), written_out("noisy_clean", 12, 3, 6)),
    ],
)
def test_dense_pattern_masks_match_their_definitions(pattern, expected):
    np.testing.assert_array_equal(np.asarray(pattern.dense(12, 12)), expected)
    # Splash's lazy mask: the same rule per tile, the padding beyond 12 open to everything.
    from illada_jax.model.masks import splash_pattern_mask

    lazy = splash_pattern_mask(pattern, 16, 12)
    np.testing.assert_array_equal(lazy[slice(0, 12), slice(0, 12)], expected)
    assert lazy[slice(12, 16), slice(0, 16)].all() and lazy[slice(0, 16), slice(12, 16)].all()
    assert (
        lazy == splash_pattern_mask(pattern, 16, 12)
        and len({lazy, splash_pattern_mask(pattern, 16, 12)}) == 1
    )  # hashable: splash caches kernels by mask


def test_causal_model_matches_float64_reference_and_ignores_the_future():
    cfg = tiny_config(n_kv_heads=2)
    model = make_model(cfg, seed=1)
    tokens = random_tokens(3)
    logits = model(tokens, pattern=CAUSAL)
    ref = ref_forward(model_params_f64(model), cfg, tokens, allowed=written_out("causal", 12))
    assert max_rel_err(logits, ref) < 1e-5
    changed = tokens.at[:, 7:].set((tokens[:, 7:] + 1) % 64)
    after = model(changed, pattern=CAUSAL)
    np.testing.assert_array_equal(np.asarray(after)[:, :7], np.asarray(logits)[:, :7])
    assert not np.allclose(np.asarray(after)[:, 7:], np.asarray(logits)[:, 7:])


def _noisy(tokens, seed, rate=0.5):
    rng = np.random.default_rng(seed)
    hide = rng.random(tokens.shape) < rate
    return jnp.where(jnp.asarray(hide), MASK_ID, tokens)


def test_noisy_blocks_match_a_per_block_float64_reference():
    # Block b of the noisy half must equal a forward of [x^1 .. x^{b-1}, x_t^b] under
    # block-causal attention: the clean prefix, then the noisy block (BD3-LM's conditional).
    cfg = tiny_config()
    model = make_model(cfg, seed=2)
    tokens = random_tokens(5)  # [2, 12]
    noisy = _noisy(tokens, 6)
    block = 4
    hidden = noisy_hidden(model, noisy, tokens, None, None, None, block)
    logits = np.asarray(model.project(hidden))
    params = model_params_f64(model)
    for b in range(3):
        end = (b + 1) * block
        canvas = np.concatenate([np.asarray(tokens)[:, : b * block],
                                 np.asarray(noisy)[:, b * block : end]], axis=1)  # fmt: skip
        ref = ref_forward(params, cfg, canvas, allowed=written_out("block_causal", end, block))
        assert max_rel_err(logits[:, b * block : end], ref[:, b * block :]) < 1e-5, b


def test_a_noisy_block_sees_earlier_clean_blocks_and_nothing_later():
    cfg = tiny_config()
    model = make_model(cfg, seed=3)
    tokens = random_tokens(7)
    noisy = _noisy(tokens, 8)
    base = np.asarray(noisy_hidden(model, noisy, tokens, None, None, None, 4))
    # Later blocks (noisy and clean copies) change: block 1 is untouched.
    later_tokens = tokens.at[:, 8:].set((tokens[:, 8:] + 5) % 64)
    later_noisy = noisy.at[:, 8:].set((noisy[:, 8:] + 9) % 64)
    out = np.asarray(noisy_hidden(model, later_noisy, later_tokens, None, None, None, 4))
    np.testing.assert_array_equal(out[:, :8], base[:, :8])
    # An earlier clean block changes (its noisy copy kept): block 1 changes.
    earlier = tokens.at[:, :4].set((tokens[:, :4] + 3) % 64)
    out = np.asarray(noisy_hidden(model, noisy, earlier, None, None, None, 4))
    assert np.abs(out[:, 4:8] - base[:, 4:8]).max() > 1e-3
    # The clean copy of a block itself is invisible to its noisy copy.
    own = tokens.at[:, 4:8].set((tokens[:, 4:8] + 3) % 64)
    out = np.asarray(noisy_hidden(model, noisy, own, None, None, None, 4))
    np.testing.assert_array_equal(out[:, 4:8], base[:, 4:8])


@pytest.mark.parametrize("time_sampling", ["uniform", "antithetic"])
@pytest.mark.parametrize("random_length_mode", ["none", "illada_split", "llada_truncate"])
def test_one_block_is_the_masked_diffusion_loss(time_sampling, random_length_mode):
    model = make_model(tiny_config(), seed=4)
    batch = {"tokens": random_tokens(9, batch=4, length=12)}
    common = dict(time_sampling=time_sampling, random_length_mode=random_length_mode,
                  two_segment_prob=0.5, random_length_prob=0.5)  # fmt: skip
    for seed in range(3):
        key = jax.random.key(seed)
        masked = diffusion_loss(model, batch, key, DiffusionConfig(**common))
        blocked = diffusion_loss(model, batch, key, DiffusionConfig(
            objective="block_diffusion", block_size=12, **common))  # fmt: skip
        assert float(blocked[0]) == float(masked[0])
        assert int(blocked[1]["num_masked"]) == int(masked[1]["num_masked"])
    np.testing.assert_array_equal(
        np.asarray(elbo_bound(model, batch, key, block_size=12)[0]),
        np.asarray(elbo_bound(model, batch, key)[0]),
    )


def test_block_diffusion_loss_equals_its_formula_in_float64():
    # loss = Σ_b Σ_{i ∈ b} 1[masked] · CE_i / p_b over B·L tokens, with CE from the per-block
    # float64 reference and p_b the block's probability (every token of a block shares one).
    cfg = tiny_config()
    model = make_model(cfg, seed=5)
    tokens = random_tokens(11, batch=2, length=12)
    diffusion = DiffusionConfig(objective="block_diffusion", block_size=4, random_length_mode="none",
                                time_sampling="antithetic", mask_eps=0.2)  # fmt: skip
    key = jax.random.key(1)
    loss, metrics = diffusion_loss(model, {"tokens": tokens}, key, diffusion)
    # The draws the loss used, from the public pieces with the loss's key split.
    time_key, mask_key, _ = jax.random.split(key, 3)
    p_block = masking.mask_probability(blocks.block_times(time_key, 2, 3, "antithetic"), 0.2)
    p_token = np.repeat(np.asarray(p_block, np.float64), 4, axis=1)
    draws = np.asarray(jax.random.uniform(mask_key, tokens.shape, jnp.float32))
    is_masked = draws < np.asarray(blocks.per_token(p_block, 4))
    noisy = np.where(is_masked, MASK_ID, np.asarray(tokens))
    params, total = model_params_f64(model), 0.0
    for b in range(3):
        end = (b + 1) * 4
        canvas = np.concatenate([np.asarray(tokens)[:, : b * 4], noisy[:, b * 4 : end]], axis=1)
        logits = ref_forward(params, cfg, canvas, allowed=written_out("block_causal", end, 4))
        logits = logits[:, b * 4 :]
        log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        target = np.take_along_axis(logits, np.asarray(tokens)[:, b * 4 : end, None], -1)[..., 0]
        ce = log_z - target
        total += np.sum(np.where(is_masked[:, b * 4 : end], ce / p_token[:, b * 4 : end], 0.0))
    assert is_masked.any() and not is_masked.all()
    assert float(loss) == pytest.approx(total / tokens.size, rel=1e-5)
    assert int(metrics["num_masked"]) == int(is_masked.sum())


def test_block_times_are_uniform_per_block_and_stratified_per_batch():
    key = jax.random.key(0)
    # One block: the sequence-level sampler, draw for draw.
    np.testing.assert_array_equal(
        np.asarray(blocks.block_times(key, 8, 1, "antithetic"))[:, 0],
        np.asarray(masking.sample_times(key, 8, "antithetic")),
    )
    times = np.asarray(blocks.block_times(key, 4, 8, "antithetic"))  # 32 cells
    strata = np.sort(np.floor(times.ravel() * 32).astype(int))
    np.testing.assert_array_equal(strata, np.arange(32))  # one draw per stratum
    # Over many keys, the first block's time is uniform (not pinned to the first strata).
    first = np.concatenate([np.asarray(blocks.block_times(jax.random.key(s), 4, 8,
                                                          "antithetic"))[:, 0]
                            for s in range(200)])  # fmt: skip
    assert abs(first.mean() - 0.5) < 0.03 and first.min() < 0.05 and first.max() > 0.95


def test_per_block_bound_draws_and_weights():
    tokens = random_tokens(12, batch=3, length=12)
    valid = jnp.asarray(np.arange(12)[None, :] < np.array([[12], [7], [3]]))
    noisy, is_masked, weight = blocks.mask_exact_count_per_block(jax.random.key(2), tokens,
                                                                 MASK_ID, 4, valid)  # fmt: skip
    is_masked, weight, valid = map(np.asarray, (is_masked, weight, valid))
    for row in range(3):
        for b in range(3):
            cells = slice(4 * b, 4 * b + 4)
            n, count = valid[row, cells].sum(), is_masked[row, cells].sum()
            assert not (is_masked[row, cells] & ~valid[row, cells]).any()
            if n:
                assert 1 <= count <= n and weight[row, cells][0] == pytest.approx(n / count)
            else:
                assert count == 0
    np.testing.assert_array_equal(np.asarray(noisy)[is_masked], MASK_ID)


def test_ar_loss_and_nll_equal_a_hand_written_causal_cross_entropy():
    cfg = tiny_config()
    model = make_model(cfg, seed=6)
    tokens = random_tokens(13, batch=2, length=12)
    # Two packed documents in row 0 (the second starts at 5, positions restart), padding in row 1.
    segments = np.array([[1] * 5 + [2] * 7, [1] * 9 + [0] * 3], np.int32)
    positions = np.array([list(range(5)) + list(range(7)), list(range(12))], np.int32)
    batch = {"tokens": tokens, "segment_ids": jnp.asarray(segments),
             "positions": jnp.asarray(positions)}  # fmt: skip
    loss, metrics = ar_loss(
        model, batch, jax.random.key(0), DiffusionConfig(objective="ar", random_length_mode="none")
    )
    # Segment 0 keeps real queries off the padding (padded queries are not scored).
    logits = ref_forward(model_params_f64(model), cfg, tokens, positions, None, segments,
                         allowed=written_out("causal", 12))  # fmt: skip
    toks, total, count = np.asarray(tokens), 0.0, 0
    for row in range(2):
        for i in range(11):
            if segments[row, i] and segments[row, i] == segments[row, i + 1]:
                z = logits[row, i]
                total += np.log(np.exp(z - z.max()).sum()) + z.max() - z[toks[row, i + 1]]
                count += 1
    assert count == 4 + 6 + 8
    assert int(metrics["num_masked"]) == count
    assert float(loss) == pytest.approx(total / count, rel=1e-5)
    nll, n = ar_nll(model, batch, jax.random.key(0))
    assert int(n) == count and float(nll) == pytest.approx(total, rel=1e-5)


@pytest.mark.parametrize(
    "pattern",
    [CAUSAL, AttentionPattern("block_causal", 32), AttentionPattern("noisy_clean", 16, 64)],
)
def test_splash_with_a_pattern_matches_the_dense_kernel(pattern):
    rng = np.random.default_rng(3)
    q = jnp.asarray(rng.standard_normal((2, 128, 4, 8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((2, 128, 2, 8)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((2, 128, 2, 8)), jnp.float32)
    key_mask = jnp.asarray(np.arange(128)[None, :] < np.array([[128], [100]]))
    seg = jnp.asarray(np.stack([(np.arange(128) >= s).astype(np.int32) for s in (70, 40)]))
    out = splash_attention(q, k, v, key_mask, seg, pattern=pattern, interpret=True)
    ref = xla_attention(q, k, v, attention_mask(key_mask, seg, pattern))
    real = np.asarray(key_mask)
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref)[real], rtol=0, atol=1e-5)


def _experiment(**diffusion):
    return Experiment(model=ModelConfig(max_seq_len=64), train=TrainConfig(seq_len=48),
                      diffusion=DiffusionConfig(**diffusion), data=DataConfig())  # fmt: skip


def test_block_size_must_divide_the_sequence():
    with pytest.raises(ConfigError) as err:
        _experiment(objective="block_diffusion", block_size=20)
    message = str(err.value)
    assert "diffusion.block_size=20" in message and "train.seq_len=48" in message
    assert "1, 2, 3, 4, 6, 8, 12, 16, 24, 48" in message and "\n" not in message
    with pytest.raises(ConfigError, match="block_size=0 .*must divide"):
        _experiment(objective="block_diffusion")
    with pytest.raises(ConfigError, match="only used with diffusion.objective=block_diffusion"):
        _experiment(objective="pretrain", block_size=8)
    assert _experiment(objective="block_diffusion", block_size=16).diffusion.block_size == 16


def test_block_schedule_phases_and_their_errors():
    from illada_jax.config.objectives import block_size_at

    experiment = _experiment(objective="block_diffusion", block_size=8,
                             block_schedule_steps=(0, 10, 30), block_schedule_sizes=(1, 48, 8))  # fmt: skip
    sizes = [block_size_at(experiment.diffusion, s) for s in (0, 9, 10, 29, 30, 10_000)]
    assert sizes == [1, 1, 48, 48, 8, 8]
    bad = {
        "must end with block_size=8": dict(block_schedule_steps=(0, 5), block_schedule_sizes=(1, 4)),
        "must start at 0 and increase": dict(block_schedule_steps=(0, 5, 5),
                                              block_schedule_sizes=(1, 4, 8)),
        "needs one start step per size": dict(block_schedule_steps=(0,),
                                              block_schedule_sizes=(1, 8)),
        "block_schedule_sizes=5 is invalid: must divide": dict(block_schedule_steps=(0, 5),
                                                               block_schedule_sizes=(5, 8)),
    }  # fmt: skip
    for message, fields in bad.items():
        with pytest.raises(ConfigError, match=message):
            _experiment(objective="block_diffusion", block_size=8, **fields)


def test_a_scheduled_run_trains_each_phase_with_its_block_size():
    # The runner's compiled step at a phase equals a run that trains that block size throughout.
    from illada_jax.config.schema import OptimConfig
    from illada_jax.train.builder import build_run

    def run_of(**diffusion):
        return build_run(Experiment(
            model=tiny_config(max_seq_len=16), train=TrainConfig(seq_len=16, batch_size=2),
            optim=OptimConfig(warmup_steps=0),
            diffusion=DiffusionConfig(objective="block_diffusion", random_length_mode="none",
                                      **diffusion)), jax.devices()[:1])  # fmt: skip

    scheduled = run_of(block_size=4, block_schedule_steps=(0, 3), block_schedule_sizes=(2, 4))
    assert [scheduled.block_size_at(s) for s in (0, 2, 3)] == [2, 2, 4]
    batch = scheduled.global_batch(
        {
            "tokens": np.asarray(random_tokens(2, 2, 16)),
            "segment_ids": np.ones((2, 16), np.int32),
            "positions": np.tile(np.arange(16, dtype=np.int32), (2, 1)),
        }
    )
    controls = scheduled.controls(lr_scale=1.0, loss_ceiling=np.inf, data_step=0)
    for step, size in ((0, 2), (3, 4)):
        fixed = run_of(block_size=size)
        losses = []
        for run in (scheduled, fixed):
            state = run.init_state()
            _, metrics = run.train_step_at(step)(state, batch, run.step_key(step), controls)
            losses.append(float(metrics["loss"]))
        assert losses[0] == losses[1], (step, size)
    assert scheduled.train_step_at(0) is not scheduled.train_step_at(3)  # one program per phase


def test_splash_skips_the_tiles_the_noisy_clean_pattern_hides():
    # Splash's own mask processing: of the 8 x 8 tiles of 256 over a 2 x 1024 canvas with blocks
    # of 128, it visits 24 (12 full, 12 partial) where a bidirectional mask visits all 64.
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as splash_mask,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask_info as mask_info,
    )

    from illada_jax.model.masks import splash_pattern_mask

    def visited(mask):
        info, _ = mask_info.process_mask(splash_mask.MultiHeadMask([mask]), (256, 256))
        block_mask = np.asarray(info.block_mask)
        return int((block_mask == 1).sum()), int((block_mask == 2).sum())

    pattern = AttentionPattern("noisy_clean", 128, 1024)
    assert visited(splash_pattern_mask(pattern, 2048, 2048)) == (12, 12)
    assert visited(splash_mask.FullMask((2048, 2048))) == (0, 64)
    # Tile by tile, those counts are the pattern's: noisy tiles of one block row see their own
    # block (partial: 128 of 256) and earlier clean ones; clean tiles the clean ones up to theirs.
    allowed = AttentionPattern("noisy_clean", 128, 1024).allows(
        np.arange(2048)[:, None], np.arange(2048)[None, :])  # fmt: skip
    tiles = allowed.reshape(8, 256, 8, 256).transpose(0, 2, 1, 3).reshape(64, -1)
    assert (int((tiles.any(1) & ~tiles.all(1)).sum()), int(tiles.all(1).sum())) == (12, 12)


def _plain_and_shifted(seed: int):
    """A random tiny model and the same parameters with `shifted_logits`."""
    import dataclasses

    from flax import nnx

    from illada_jax.model import Transformer

    cfg = tiny_config()
    plain = make_model(cfg, seed=seed)
    shifted = Transformer(dataclasses.replace(cfg, shifted_logits=True), rngs=nnx.Rngs(0))
    nnx.update(shifted, nnx.state(plain, nnx.Param))
    return plain, shifted


def test_shifted_logits_predict_each_position_from_the_previous_one():
    # Dream / Fast-dLLM v2's head: the same parameters, logits moved one position right.
    plain, shifted = _plain_and_shifted(seed=8)
    tokens = random_tokens(14)
    base, moved = np.asarray(plain(tokens)), np.asarray(shifted(tokens))
    np.testing.assert_array_equal(moved[:, 1:], base[:, :-1])
    np.testing.assert_array_equal(moved[:, 0], base[:, 0])
    # The autoregressive loss is the same computation (an AR head is already shifted) ...
    batch = {"tokens": tokens}
    ar = DiffusionConfig(objective="ar", random_length_mode="none")
    key = jax.random.key(0)
    assert float(ar_loss(shifted, batch, key, ar)[0]) == float(ar_loss(plain, batch, key, ar)[0])
    # ... and diffusion never masks a first position (position 0, a segment's first token).
    segments = jnp.asarray(np.array([[1] * 5 + [2] * 7, [1] * 12]))
    every = DiffusionConfig(random_length_mode="none", mask_eps=0.999999)
    full = {"tokens": tokens, "segment_ids": segments}
    assert int(diffusion_loss(plain, full, key, every)[1]["num_masked"]) == 24
    assert int(diffusion_loss(shifted, full, key, every)[1]["num_masked"]) == 24 - 3


def test_shifted_block_diffusion_predicts_a_block_start_from_the_clean_token_before_it():
    # Position i reads position i-1: inside a block its noisy neighbour; at a block's start the
    # clean previous token, as the sampler has it (the unshifted model with the same parameters
    # is the reference: per-block canvases under block-causal attention).
    plain, shifted = _plain_and_shifted(seed=9)
    tokens = random_tokens(15)
    noisy = _noisy(tokens, 16)
    got = np.asarray(noisy_hidden(shifted, noisy, tokens, None, None, None, 4))
    for b in range(3):
        canvas = jnp.concatenate([tokens[:, : 4 * b], noisy[:, 4 * b : 4 * b + 4]], axis=1)
        ref = np.asarray(plain.hidden_states(canvas, pattern=AttentionPattern("block_causal", 4)))
        for i in range(4 * b, 4 * b + 4):
            want = ref[:, max(i - 1, 0)]  # the row of position i-1 (position 0: its own)
            np.testing.assert_allclose(got[:, i], want, rtol=2e-5, atol=2e-5, err_msg=str(i))
