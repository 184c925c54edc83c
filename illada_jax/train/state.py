"""The train state and its shardings; the state is created already sharded.

A train state is a plain pytree (so orbax saves it as is):
`{"step": int32 [], "params": nested dict of arrays, "opt_state": optax state}`. Parameters are
the model's pure dict (`nnx.to_pure_dict`); `nnx.merge(graphdef, params)` rebuilds the network.

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


def _init_fn(cfg: ModelConfig, optimizer: optax.GradientTransformation, seed: int):
    def init():
        params = nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed))))
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "opt_state": optimizer.init(params),
        }

    return init


def state_shardings(cfg: ModelConfig, optimizer, mesh, rules: str, seed: int = 0):
    """NamedShardings for the whole train state (optimizer moments follow their parameters)."""
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
    return {"step": replicated, "params": params, "opt_state": opt}


def abstract_state(cfg: ModelConfig, optimizer, mesh, rules: str, seed: int = 0):
    """The state as ShapeDtypeStructs carrying shardings (a restore target; nothing allocated)."""
    shapes = jax.eval_shape(_init_fn(cfg, optimizer, seed))
    shardings = state_shardings(cfg, optimizer, mesh, rules, seed)
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )


def create_state(cfg: ModelConfig, optimizer, mesh, rules: str, seed: int):
    """A freshly initialised, sharded train state."""
    shardings = state_shardings(cfg, optimizer, mesh, rules, seed)
    return jax.jit(_init_fn(cfg, optimizer, seed), out_shardings=shardings)()
