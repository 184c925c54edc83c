"""The rollout of objective=grpo (d1's diffu-GRPO; docs/algorithms.md#reinforcement-learning-
diffu-grpo): every μ = `grpo.inner_updates` steps the runner replaces the train state's
`rollout` with fresh completions of the policy, and the μ train steps after it train on them.

A rollout, rows `p·G + i` = completion i of prompt p (R = train.batch_size rows, W =
train.seq_len columns: the prompt left-padded to W - gen_length, then the completion):
- `tokens [R, W] int32`, `prompt_mask [R, W] bool` (the real prompt tokens);
- `completion [R, W] bool`: the scored tokens, the completion up to and including its first
  EOS / end-of-turn (d1's completion mask);
- `hidden_prompt [R, μ, W] bool`: the prompt tokens masked at inner update j (`p_mask_prompt`);
- `old_log_probs`, `ref_log_probs [R, μ, W] float32`: log π_old and log π_ref of the completion
  tokens under inner update j's masks (π_old is the policy that sampled);
- `advantages`, `rewards [R] float32`.

Steps (`Rollouts.__call__`):
1. sample: the project's sampler (`sampling.generate`), compiled under the run's mesh on the
   rows' sharding, so a pod spreads the prompts over its data axes;
2. reward: each process decodes and scores the rows it owns (`process_rows`), on the host, with
   the reward spec (`illada_jax/rewards.py`); the rewards become one global array again;
3. score: one jitted program, group advantages and, for each of the μ prompt masks, one
   forward of the policy and one of the frozen reference.

The rollout is part of the train state, so every checkpoint holds it: a run killed between two
rollouts resumes on the very completions it was training on, and a rollout's randomness is a
function of (seed, step) only, so a resumed run repeats the uninterrupted rewards and losses.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from illada_jax import rewards as rewards_lib
from illada_jax.config.post_training import GrpoConfig
from illada_jax.data.chat.rl import prompt_text
from illada_jax.diffusion import grpo
from illada_jax.parallel.rules import batch_spec
from illada_jax.sampling.generate import (
    SamplingOptions,
    SpecialIds,
    _generate_fixed,
    compile_on_mesh,
)
from illada_jax.train.objective import completion_log_probs
from illada_jax.train.step import cast_params

# The rollout's random stream (sampling, prompt masks), apart from the train step's.
ROLLOUT_STREAM = 0x524C


def rollout_abstract(experiment, mesh, rules: str) -> dict[str, jax.ShapeDtypeStruct]:
    """The rollout's arrays (module doc) as ShapeDtypeStructs, rows sharded like a batch."""
    rows, width = experiment.train.batch_size, experiment.train.seq_len
    inner = experiment.grpo.inner_updates
    spec = batch_spec(rules, mesh, rows)
    shapes = {
        "tokens": ((rows, width), jnp.int32),
        "prompt_mask": ((rows, width), jnp.bool_),
        "completion": ((rows, width), jnp.bool_),
        "hidden_prompt": ((rows, inner, width), jnp.bool_),
        "old_log_probs": ((rows, inner, width), jnp.float32),
        "ref_log_probs": ((rows, inner, width), jnp.float32),
        "advantages": ((rows,), jnp.float32),
        "rewards": ((rows,), jnp.float32),
    }
    return {
        name: jax.ShapeDtypeStruct(
            shape,
            dtype,
            sharding=NamedSharding(mesh, PartitionSpec(spec[0], *[None] * (len(shape) - 1))),
        )
        for name, (shape, dtype) in shapes.items()
    }


def sampling_options(cfg: GrpoConfig) -> SamplingOptions:
    """The sampler's options of the rollouts (and of the held-out reward)."""
    return SamplingOptions(gen_length=cfg.gen_length, steps=cfg.steps,
                           block_length=cfg.block_length, temperature=cfg.temperature,
                           remasking=cfg.remasking, threshold=cfg.threshold)  # fmt: skip


def process_rows(array: jax.Array) -> np.ndarray:
    """The rows of a row-sharded global array that this process holds, in order."""
    if array.is_fully_addressable:
        return np.asarray(array)
    shards = {shard.index[0].start or 0: shard for shard in array.addressable_shards}
    return np.concatenate([np.asarray(shards[start].data) for start in sorted(shards)])


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _sample(graphdef, opts, ids, dtype, rows_sharding, params, prompt, prompt_mask, key):
    """The sampler's canvas [R, W] of every row, rows sharded like the batch."""
    canvas = _generate_fixed(graphdef, opts, ids, cast_params(params, dtype), prompt,
                             prompt_mask, key)  # fmt: skip
    return jax.lax.with_sharding_constraint(canvas, rows_sharding)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _score(graphdef, cfg: GrpoConfig, stops: tuple[int, ...], dtype, chunk_size: int,
           shardings, params, ref_params, canvas, prompt_mask, rewards, key):  # fmt: skip
    """The rollout dict (module doc) from the sampled canvas and the rewards."""
    policy = nnx.merge(graphdef, cast_params(params, dtype))
    reference = nnx.merge(graphdef, cast_params(ref_params, dtype))
    rows = canvas.shape[0]
    completion = grpo.completion_mask(canvas, cfg.gen_length, stops)
    prompt_mask = jnp.concatenate([prompt_mask, jnp.zeros((rows, cfg.gen_length), bool)], axis=1)
    batch = {"tokens": canvas, "prompt_mask": prompt_mask}

    def one_update(mask_key):
        hidden = grpo.hide_prompt(mask_key, prompt_mask, cfg.p_mask_prompt)
        old = completion_log_probs(policy, batch, hidden, cfg.gen_length, chunk_size)
        ref = completion_log_probs(reference, batch, hidden, cfg.gen_length, chunk_size)
        return hidden, old, ref

    hidden, old, ref = jax.lax.map(one_update, jax.random.split(key, cfg.inner_updates))
    per_update = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731  [μ, R, W] -> [R, μ, W]
    out = {
        "tokens": canvas,
        "prompt_mask": prompt_mask,
        "completion": completion,
        "hidden_prompt": per_update(hidden),
        "old_log_probs": per_update(old),
        "ref_log_probs": per_update(ref),
        "advantages": grpo.group_advantages(
            rewards, cfg.group_size, scale_by_std=cfg.scale_by_std
        ),  # fmt: skip
        "rewards": rewards,
    }
    return {name: jax.lax.with_sharding_constraint(x, shardings[name]) for name, x in out.items()}


class Rollouts:
    """Makes the rollouts of a `Run` (objective=grpo); see the module doc."""

    def __init__(self, run, tokenizer):
        from illada_jax.train.step import weights_compute_dtype

        experiment = run.experiment
        self.run, self.cfg, self.tokenizer = run, experiment.grpo, tokenizer
        self.reward_fn = rewards_lib.get(self.cfg.reward)
        self.opts = sampling_options(self.cfg)
        model = experiment.model
        self.ids = SpecialIds.from_config(model)
        self.stops = tuple(t for t in (model.eos_token_id, model.eot_token_id) if t is not None)
        self.dtype = weights_compute_dtype(model)
        self.shardings = {k: v.sharding for k, v in run.abstract_state["rollout"].items()}
        self.width = experiment.train.seq_len - self.cfg.gen_length
        # (Σ reward, completions with reward >= 1) of a global reward array, on every process;
        # made once: a jit of a fresh lambda would compile at every held-out evaluation.
        self._reward_sums = jax.jit(lambda r: jnp.stack([jnp.sum(r), jnp.sum(r >= 1.0)]),
                                    out_shardings=NamedSharding(run.mesh, PartitionSpec()))  # fmt: skip

    def due(self, step: int) -> bool:
        return step % self.cfg.inner_updates == 0

    def key(self, step: int) -> jax.Array:
        return jax.random.fold_in(self.run.step_key(step), ROLLOUT_STREAM)

    def __call__(self, state: dict, local: dict, examples, step: int) -> tuple[dict, dict]:
        """(state with a fresh rollout, {"sample_s", "rollout_s"}) from this process's prompts
        `local` (an `RlPipeline` batch) and the prompt records `examples`."""
        start = time.perf_counter()
        sample_key, mask_key = jax.random.split(self.key(step))
        canvas, prompt_mask, reward_array = self.sample_and_score(
            state["params"], local, examples, sample_key
        )
        sampled = time.perf_counter()
        static = (self.run.graphdef, self.cfg, self.stops, self.dtype,
                  self.run.experiment.diffusion.loss_chunk_size, _Frozen(self.shardings))  # fmt: skip
        args = (state["params"], state["ref_params"], canvas, prompt_mask, reward_array, mask_key)
        rollout = compile_on_mesh(self.run.mesh, _score, static, args)(*args)
        jax.block_until_ready(rollout)
        seconds = {"sample_s": sampled - start, "rollout_s": time.perf_counter() - start}
        return {**state, "rollout": rollout}, seconds

    def sample_and_score(self, params, local: dict, examples, key):
        """(canvas [R, W], prompt mask [R, W - gen_length], rewards [R]): every prompt of
        `local` completed `group_size` times with `key`, each process scoring its rows."""
        group, rows = self.cfg.group_size, self.run.experiment.train.batch_size
        sharding = self.shardings["tokens"]

        def global_rows(local_rows, dtype):
            value = np.repeat(np.asarray(local_rows, dtype), group, axis=0)
            return jax.make_array_from_process_local_data(sharding, value, (rows, *value.shape[1:]))

        prompt = global_rows(local["prompt"], np.int32)
        prompt_mask = global_rows(local["prompt_mask"], bool)
        static = (self.run.graphdef, self.opts, self.ids, self.dtype, sharding)
        args = (params, prompt, prompt_mask, key)
        canvas = compile_on_mesh(self.run.mesh, _sample, static, args)(*args)
        records = [examples[int(i)] for i in np.repeat(np.asarray(local["example"]), group)]
        completions = [self.decode(row[self.width :]) for row in process_rows(canvas)]
        scores = rewards_lib.score(self.reward_fn, self.cfg.reward,
                                   [prompt_text(r) for r in records], completions,
                                   records)  # fmt: skip
        reward_array = jax.make_array_from_process_local_data(
            self.shardings["rewards"], scores.astype(np.float32), (rows,)
        )
        return canvas, prompt_mask, reward_array

    def evaluate(self, params, pipeline, batches: int) -> dict:
        """The held-out reward: batches 0..`batches`-1 of `pipeline` (held-out prompts, one
        rollout's worth each) completed `group_size` times with fixed keys (`eval_key`), as
        the rollouts sample. {"eval_reward_mean", "eval_accuracy" (the fraction of completions
        with reward >= 1), "eval_completions"}."""
        from illada_jax.train.evaluate import eval_key

        total = np.zeros(2)
        for index in range(batches):
            local = pipeline.process_batch(index)
            reward_array = self.sample_and_score(params, local, pipeline.examples,
                                                 eval_key(index))[2]  # fmt: skip
            total += np.asarray(self._reward_sums(reward_array).addressable_data(0))
        count = batches * self.run.experiment.train.batch_size
        return {"eval_reward_mean": float(total[0] / count),
                "eval_accuracy": float(total[1] / count), "eval_completions": count}  # fmt: skip

    def decode(self, generated: np.ndarray) -> str:
        """A completion's text: the tokens before the first EOS / end-of-turn."""
        stop = np.flatnonzero(np.isin(generated, self.stops))
        ids = generated[: stop[0]] if len(stop) else generated
        ids = [int(t) for t in ids if t != self.ids.mask]
        return self.tokenizer.decode(ids, skip_special=True)


class _Frozen(dict):
    """A dict usable as a jit static argument (hashed by its items)."""

    def __hash__(self):
        return hash(tuple(sorted(self.items())))
