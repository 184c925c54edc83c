"""Optimiser: AdamW with global-norm clipping and a linear-warmup-then-constant learning rate.

The schedule family of SPEC §3 (WSD, cosine, iLLaDA's constant → cosine-to-floor) arrives with the
trainer; this module is where it will live.
"""

from __future__ import annotations

import optax

from illada_jax.config.schema import OptimConfig


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
    """Linear 0 -> learning_rate over warmup_steps, then constant."""
    if cfg.warmup_steps == 0:
        return optax.constant_schedule(cfg.learning_rate)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps),
            optax.constant_schedule(cfg.learning_rate),
        ],
        boundaries=[cfg.warmup_steps],
    )


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip_norm),
        optax.adamw(
            learning_rate_schedule(cfg),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
        ),
    )
