"""Reward tasks: sample completions of prepared RL prompts (`illada prepare --format rl`) and
score them with a reward function (`illada_jax/rewards.py`): `illada eval --rl-data DIR
--reward SPEC`, so an SFT model and an RL model are compared with one command and the same
sampler (docs/algorithms.md#reinforcement-learning-diffu-grpo).

Each prompt is completed `samples` times (seeds `seed`, `seed + 1`, ...), in batches; a
completion is the decoded reply up to the first EOS / end-of-turn. The reward receives the
prompt's last user message, the completion and the prepared record (its "answer" and any other
field).
"""

from __future__ import annotations

import numpy as np

from illada_jax import rewards
from illada_jax.data.chat.rl import prompt_text
from illada_jax.data.preparation.post_training import check_tokenizer, load_rl
from illada_jax.data.preparation.prepare import PrepareError
from illada_jax.inference import Model


def reward_eval(model: Model, dataset: str, reward: str = "final_number", *,
                limit: int | None = None, samples: int = 1, batch_size: int = 16,
                gen_length: int = 32, seed: int = 0, show: int = 3, **sampling) -> dict:  # fmt: skip
    """{"dataset", "reward", "prompts", "samples", "reward_mean", "accuracy", "examples"}:
    the mean reward over every completion, `accuracy` the fraction of completions whose reward
    is at least 1 (for a 0/1 reward, the fraction right), and the first `show` (prompt,
    completion, reward) triples. `sampling`: `Model.generate`'s options (steps, block_length,
    temperature, remasking, threshold, ...)."""
    reward_fn = rewards.get(reward)
    prompts, examples, manifest = load_rl(dataset)
    check_tokenizer(manifest, model.config, dataset, PrepareError)
    if limit is not None:
        prompts, examples = prompts[:limit], examples[:limit]
    scores, shown = [], []
    for sample in range(samples):
        for first in range(0, len(prompts), batch_size):
            rows = prompts[first : first + batch_size]
            batch = examples[first : first + batch_size]
            completions = model.complete_ids(rows, gen_length, seed=seed + sample, **sampling)
            texts = [prompt_text(example) for example in batch]
            got = rewards.score(reward_fn, reward, texts, completions, batch)
            scores.append(got)
            for text, completion, value in zip(texts, completions, got):
                if len(shown) < show:
                    shown.append({"prompt": text, "completion": completion, "reward": float(value)})
    scores = np.concatenate(scores)
    return {
        "dataset": str(dataset),
        "reward": reward,
        "prompts": len(prompts),
        "samples": samples,
        "reward_mean": float(scores.mean()),
        "accuracy": float(np.mean(scores >= 1.0)),
        "examples": shown,
    }
