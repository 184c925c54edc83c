"""Config sections of the post-training objectives (docs/algorithms.md#post-training).

`diffusion.objective=vrpo` reads `vrpo`: preference optimisation with ELBO estimates of the
answers' log-likelihoods (LLaDA 1.5's VRPO). Each of its three variance reductions is a switch
here, so their effect can be measured one at a time (`bench/post_train.py`).

`diffusion.objective=grpo` reads `grpo`: online RL with verifiable rewards (d1's diffu-GRPO):
the group size, the inner updates per rollout, the clipped ratio, the KL penalty, the reward
spec and the sampler the rollouts use.
"""

from __future__ import annotations

import dataclasses

from illada_jax.config import field_types
from illada_jax.config.checks import ConfigError, check_choice, check_int, fail

# Objectives that score against a frozen reference model: the train state carries `ref_params`.
REFERENCE_OBJECTIVES = ("vrpo", "grpo")


@dataclasses.dataclass(frozen=True)
class VrpoConfig:
    """Preference optimisation, objective=vrpo (docs/algorithms.md#preference-optimisation-vrpo).

    The loss is DPO's, `-log σ(β[(B_θ(y_w) - B_ref(y_w)) - (B_θ(y_l) - B_ref(y_l))])`, where
    `B(y)` is a Monte-Carlo ELBO of answer y given its prompt from `samples` draws of
    (masking count l, mask).
    """

    beta: float = 0.1
    # n: (l, mask) draws per answer and step: the variance of B falls as 1/n (at n times the
    # compute of one draw).
    samples: int = 8
    # True: the n counts spread evenly over 1..A from one random offset (one mask per count,
    # LLaDA 1.5's optimal allocation); False: n independent uniform counts.
    stratified: bool = True
    # True: the reference scores an answer with the policy's very counts and masks, so their
    # common noise cancels in B_θ - B_ref; False: the reference draws its own.
    antithetic: bool = True

    def __post_init__(self) -> None:
        problem = field_types.type_problem(self, {}, frozenset())
        if problem:
            raise ConfigError(problem)
        if not self.beta > 0:
            fail("beta", self.beta, "must be > 0 (DPO's inverse temperature)")
        check_int("samples", self.samples, 1)


@dataclasses.dataclass(frozen=True)
class GrpoConfig:
    """Online RL with verifiable rewards, objective=grpo (d1's diffu-GRPO;
    docs/algorithms.md#reinforcement-learning-diffu-grpo).

    Every `inner_updates` steps the sampler completes `train.batch_size / group_size` prompts
    `group_size` times each with the current policy, `reward` scores the completions and the
    group-normalised advantages drive `inner_updates` clipped policy-gradient steps on them.
    A row is `[left-padded prompt, completion]`, `train.seq_len - gen_length` + `gen_length`
    tokens; prompts longer than `train.seq_len - gen_length` are left out (counted).
    """

    # G: completions per prompt; the advantage is a reward relative to its group's.
    group_size: int = 4
    # μ: policy updates per batch of completions (d1: 12); 1 = on-policy (the ratio is 1).
    inner_updates: int = 2
    # Probability that a prompt token is masked in the log-probability pass (a fresh mask at
    # each inner update: d1's regulariser).
    p_mask_prompt: float = 0.15
    clip_eps: float = 0.2
    # KL penalty to the frozen reference (k3 estimator); 0 switches it off.
    beta: float = 0.04
    # Divide advantages by the group's standard deviation (d1, GRPO); False: only centred.
    scale_by_std: bool = True
    # A reward spec (illada_jax/rewards.py): a registered name, `regex:PATTERN`, `file.py:fn`,
    # or a weighted sum such as `final_number+0.5*format_regex`.
    reward: str = "final_number"
    # The sampler (docs/algorithms.md#sampling): completion length, denoising steps, block
    # length, temperature (> 0: the group needs different completions), remasking, and an
    # optional confidence threshold (parallel decoding).
    gen_length: int = 32
    steps: int = 32
    block_length: int = 32
    temperature: float = 1.0
    remasking: str = "low_confidence"
    threshold: float | None = None

    def __post_init__(self) -> None:
        problem = field_types.type_problem(self, {}, frozenset())
        if problem:
            raise ConfigError(problem)
        if isinstance(self.group_size, int) and self.group_size < 2:
            fail("group_size", self.group_size, "must be >= 2: the advantage of a completion is "
                 "its reward relative to the other completions of its prompt (a group of 1 "
                 "always has advantage 0); use group_size=4 or more")  # fmt: skip
        check_int("inner_updates", self.inner_updates, 1)
        check_int("gen_length", self.gen_length, 1)
        check_int("steps", self.steps, 1)
        check_int("block_length", self.block_length, 1)
        if not 0.0 <= self.p_mask_prompt < 1.0:
            fail("p_mask_prompt", self.p_mask_prompt, "must be in [0, 1)")
        if not self.clip_eps > 0:
            fail("clip_eps", self.clip_eps, "must be > 0")
        if self.beta < 0:
            fail("beta", self.beta, "must be >= 0 (0 switches the KL penalty off)")
        if self.temperature < 0:
            fail("temperature", self.temperature, "must be >= 0")
        check_choice("remasking", self.remasking, ("low_confidence", "random"))
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            fail("threshold", self.threshold, "must be in (0, 1], or None")
        if self.gen_length % self.block_length:
            fail("block_length", self.block_length,
                 f"must divide gen_length={self.gen_length}")  # fmt: skip
        blocks = self.gen_length // self.block_length
        if self.steps % blocks:
            fail("steps", self.steps, f"must be a multiple of the {blocks} blocks of "
                 f"gen_length={self.gen_length} / block_length={self.block_length}")  # fmt: skip
        from illada_jax import rewards

        try:
            rewards.get(self.reward)
        except rewards.RewardError as error:
            fail("reward", self.reward, str(error))
