"""The train state and its shardings; the state is created already sharded.

A train state is a plain pytree (so orbax saves it as is):
`{"step": int32 [], "params": nested dict of arrays, "opt_state": optax state}`, plus
`"ref_params"` for the post-training objectives that compare with a frozen reference model
(vrpo: docs/algorithms.md#preference-optimisation-vrpo): a copy of the starting parameters,
sharded like `params`, never updated. Keeping it in the state makes it resident on the devices
beside the policy and saved with every checkpoint, so a resumed run scores against exactly the
reference it started with (from the checkpoint, not from `checkpoint.init_from`). Objective grpo
also keeps `"rollout"`, the completions its steps train on (`train/rollout.py`; `rollout`
here is its arrays as ShapeDtypeStructs with shardings). Parameters are the model's pure dict
(`nnx.to_pure_dict`); `nnx.merge(graphdef, params)` rebuilds the network.

Shardings come from the parameters' logical axis names and the rule table (`parallel/rules.py`);
`create_state` runs the initialiser under `jit` with those `out_shardings`, so every device
materialises only its own shards — no process ever holds the full state on host.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from illada_jax.config.schema import ModelConfig
from illada_jax.model.transformer import Transformer, graphdef_and_specs
from illada_jax.parallel.rules import mesh_spec


def param_shardings(cfg: ModelConfig, mesh: jax.sharding.Mesh, rules: str):
    _, logical, abstract = graphdef_and_specs(cfg)
    return jax.tree.map(
        lambda spec, leaf: NamedSharding(mesh, mesh_spec(spec, leaf.shape, rules, mesh)),
        logical,
        abstract,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def _init_fn(cfg: ModelConfig, optimizer: optax.GradientTransformation, seed: int,
             reference: bool = False, rollout: dict | None = None):  # fmt: skip
    def init():
        params = nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed))))
        state = {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "opt_state": optimizer.init(params),
        }
        if reference:
            state["ref_params"] = jax.tree.map(jnp.copy, params)
        if rollout:
            state["rollout"] = {k: jnp.zeros(s.shape, s.dtype) for k, s in rollout.items()}
        return state

    return init


def state_shardings(cfg: ModelConfig, optimizer, mesh, rules: str, seed: int = 0,
                    reference: bool = False, rollout: dict | None = None):  # fmt: skip
    """NamedShardings for the whole train state (optimizer moments follow their parameters,
    the reference, when there is one, is sharded like the parameters, a rollout's arrays
    carry their own)."""
    params = param_shardings(cfg, mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract = jax.eval_shape(_init_fn(cfg, optimizer, seed))
    opt = optax.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        abstract["opt_state"],
        params,
        transform_non_params=lambda _: replicated,
    )
    shardings = {"step": replicated, "params": params, "opt_state": opt}
    if reference:
        shardings["ref_params"] = params
    if rollout:
        shardings["rollout"] = {k: s.sharding for k, s in rollout.items()}
    return shardings


def abstract_state(cfg: ModelConfig, optimizer, mesh, rules: str, seed: int = 0,
                   reference: bool = False, rollout: dict | None = None):  # fmt: skip
    """The state as ShapeDtypeStructs carrying shardings (a restore target; nothing allocated)."""
    shapes = jax.eval_shape(_init_fn(cfg, optimizer, seed, reference, rollout))
    shardings = state_shardings(cfg, optimizer, mesh, rules, seed, reference, rollout)
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )


def create_state(cfg: ModelConfig, optimizer, mesh, rules: str, seed: int,
                 reference: bool = False, rollout: dict | None = None):  # fmt: skip
    """A freshly initialised, sharded train state (with `reference`: `ref_params`, a copy of
    the initial parameters; the runner replaces both with `checkpoint.init_from`'s)."""
    shardings = state_shardings(cfg, optimizer, mesh, rules, seed, reference, rollout)
    return jax.jit(_init_fn(cfg, optimizer, seed, reference, rollout), out_shardings=shardings)()
