"""The pure, jitted train step: loss, gradients, optimiser update. State is donated."""

from __future__ import annotations

import jax
import optax
from flax import nnx

from illada_jax.config.schema import DiffusionConfig
from illada_jax.train.objective import diffusion_loss


def make_train_step(
    graphdef: nnx.GraphDef, diffusion: DiffusionConfig, optimizer: optax.GradientTransformation
):
    """Returns jitted `step(params, opt_state, batch, key) -> (params, opt_state, metrics)`."""

    def train_step(params, opt_state, batch, key):
        def objective(p):
            return diffusion_loss(nnx.merge(graphdef, p), batch, key, diffusion)

        (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics["grad_norm"] = optax.global_norm(grads)
        return params, opt_state, metrics

    return jax.jit(train_step, donate_argnums=(0, 1))
