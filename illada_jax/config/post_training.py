"""Config sections of the post-training objectives (docs/algorithms.md#post-training).

`diffusion.objective=vrpo` reads `vrpo`: preference optimisation with ELBO estimates of the
answers' log-likelihoods (LLaDA 1.5's VRPO). Each of its three variance reductions is a switch
here, so their effect can be measured one at a time (`bench/post_train.py`).
"""

from __future__ import annotations

import dataclasses

from illada_jax.config import field_types
from illada_jax.config.checks import ConfigError, check_int, fail

# Objectives that score against a frozen reference model: the train state carries `ref_params`.
REFERENCE_OBJECTIVES = ("vrpo",)


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
