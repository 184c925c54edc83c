"""The pure, jitted train and eval steps, with explicit shardings and a donated state.

`train_step(state, batch, key, controls) -> (state, metrics)`:
- gradients of the diffusion objective, summed over `grad_accum` micro-batches (rows
  `j, j + accum, …` of the global batch, so each device keeps its own rows);
- the update is applied only when the step is healthy: loss and gradient norm finite and the
  masked cross-entropy below `controls["loss_ceiling"]` (the runner's rolling mean + k·σ; +inf
  disables it). The spike test uses the unweighted masked CE because the 1/t-weighted loss has a
  heavy tail by design (a batch with small t is legitimately large);
  Otherwise parameters and optimiser state are left unchanged — the `skip` policy;
- updates are multiplied by `controls["lr_scale"]` (rollback lowers the learning rate);
- `inject_nan_step` (testing hook) makes the loss NaN when the data position
  (`controls["data_step"]`, the 0-based index of the batch) equals it — tied to the batch, as a
  real bad batch is, so a rollback that skips the batch does not meet it again.

Mixed precision: with `compute_dtype` (bf16) the fp32 parameters are cast once per step, before
the model is built, so every layer (and, under FSDP, every all-gather) reads bf16 weights instead
of casting fp32 ones at each use (once more in each rematerialised pass); gradients flow back
through the cast into fp32, the optimiser state and the master weights stay fp32. Norms, RoPE, the
SwiGLU gating, softmax and the cross-entropy compute in fp32 inside the model whatever the
weights' dtype.

`eval_step(params, batch, key) -> (bound_sum, n_tokens)`: the held-out ELBO bound (objective
`ar`: the exact next-token NLL; `block_diffusion`: the bound inside blocks).

Objective `vrpo` (docs/algorithms.md#preference-optimisation-vrpo): the state also holds the
frozen reference `ref_params`, which the step reads (cast like the parameters) and returns
unchanged; the batch is a preference batch (`train/objective.py`); the eval step takes
`(params, ref_params)` as its first argument and returns the held-out preference sums
(`train/objective.preference_eval`).

Objective `grpo` (docs/algorithms.md#reinforcement-learning-diffu-grpo): the state also holds
the current rollout (`train/rollout.py`: completions, rewards, advantages, old and reference
log-probabilities), which the runner refreshes every μ = `grpo.inner_updates` steps; the step
trains on it (inner update `step % μ`), so its `batch` is empty, and returns it unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from illada_jax.config.post_training import GrpoConfig, VrpoConfig
from illada_jax.config.schema import DiffusionConfig
from illada_jax.parallel.rules import batch_spec
from illada_jax.train.objective import (
    ar_loss,
    diffusion_loss,
    grpo_loss,
    heldout_nll,
    preference_eval,
    preference_loss,
)


def _micro_batches(batch: dict, accum: int) -> dict:
    """[B, ...] -> [accum, B/accum, ...]: micro-batch j holds rows j, j+accum, … (device-local)."""

    def split(x):
        return x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def weights_compute_dtype(model_cfg):
    """The dtype a train step casts the weights to once (None when they are stored in it)."""
    from illada_jax.model.layers import DTYPE_BY_NAME

    if model_cfg.compute_dtype == model_cfg.param_dtype:
        return None
    return DTYPE_BY_NAME[model_cfg.compute_dtype]


def cast_params(params, dtype):
    """Floating-point parameters in `dtype` (None: unchanged). Differentiable: the gradient of
    the cast is the incoming gradient cast back to each parameter's dtype."""
    if dtype is None:
        return params
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params
    )


def is_row_vector(key: str) -> bool:
    """Batch arrays named `*_lengths` (`prompt_lengths`, `chosen_lengths`, ...) are [batch];
    the others [batch, length]."""
    return key.endswith("_lengths")


def batch_shardings(mesh, rules: str, global_batch: int, keys) -> dict:
    """Row shardings of a batch dict: [batch, length] arrays, and [batch] `*_lengths`."""
    rows = batch_spec(rules, mesh, global_batch)
    return {
        key: NamedSharding(mesh, PartitionSpec(rows[0]) if is_row_vector(key) else rows)
        for key in keys
    }


def make_train_step(
    graphdef,
    diffusion: DiffusionConfig,
    optimizer,
    *,
    grad_accum: int = 1,
    inject_nan_step: int = -1,
    state_shardings=None,
    mesh=None,
    rules="fsdp",
    global_batch: int | None = None,
    batch_keys=None,
    compute_dtype=None,
    vrpo: VrpoConfig | None = None,
    grpo: GrpoConfig | None = None,
):
    """Jitted train step. With `mesh`, inputs/outputs carry explicit shardings; `batch_keys`
    names the batch's arrays when they are not all [batch, length] (e.g. `prompt_lengths`);
    `compute_dtype` (e.g. jnp.bfloat16; None = as stored) is the dtype the weights are cast to
    once per step (module doc); `vrpo`, `grpo`: the settings of objective=vrpo, grpo."""

    def model_loss(params, ref_params, batch, key, inner):
        model = nnx.merge(graphdef, cast_params(params, compute_dtype))
        if diffusion.objective == "grpo":
            return grpo_loss(model, batch, inner, grpo or GrpoConfig(), diffusion.loss_chunk_size)
        if diffusion.objective == "vrpo":
            reference = nnx.merge(graphdef, cast_params(ref_params, compute_dtype))
            return preference_loss(model, reference, batch, key, vrpo or VrpoConfig(),
                                   diffusion.loss_chunk_size)  # fmt: skip
        if diffusion.objective == "ar":
            return ar_loss(model, batch, key, diffusion)
        return diffusion_loss(model, batch, key, diffusion)

    def loss_and_grads(params, batch, key, data_step, ref_params=None, inner=None):
        def objective(p):
            loss, metrics = model_loss(p, ref_params, batch, key, inner)
            poison = jnp.where(data_step == inject_nan_step, jnp.nan, 1.0)
            return loss * poison, {**metrics, "loss": metrics["loss"] * poison}

        return jax.value_and_grad(objective, has_aux=True)(params)

    def train_step(state, batch, key, controls):
        params, step, data_step = state["params"], state["step"], controls["data_step"]
        ref_params, rollout, inner = state.get("ref_params"), state.get("rollout"), None
        if rollout is not None:  # grpo: the batch is the rollout's completions (`rollout.py`)
            batch, inner = rollout, step % (grpo or GrpoConfig()).inner_updates
        if grad_accum == 1:
            (loss, metrics), grads = loss_and_grads(
                params, batch, key, data_step, ref_params, inner
            )
        else:
            micro = _micro_batches(batch, grad_accum)

            def body(carry, xs):
                grads_sum, loss_sum, metrics_sum = carry
                index, micro_batch = xs
                (loss, m), g = loss_and_grads(
                    params,
                    micro_batch,
                    jax.random.fold_in(key, index),
                    data_step,
                    ref_params,
                    inner,
                )
                add = lambda a, b: a + b  # noqa: E731
                return (
                    jax.tree.map(add, grads_sum, g),
                    loss_sum + loss,
                    jax.tree.map(add, metrics_sum, m),
                ), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            metric_shapes = jax.eval_shape(
                lambda: loss_and_grads(
                    params, jax.tree.map(lambda x: x[0], micro), key, data_step, ref_params, inner
                )
            )[0][1]
            metric_zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)
            (grads, loss, metrics), _ = jax.lax.scan(
                body, (zeros, jnp.zeros(()), metric_zeros), (jnp.arange(grad_accum), micro)
            )
            grads = jax.tree.map(lambda g: g / grad_accum, grads)
            loss = loss / grad_accum
            metrics = {k: v / grad_accum if k != "num_masked" else v for k, v in metrics.items()}
            metrics["loss"] = loss
        grad_norm = optax.global_norm(grads)
        updates, new_opt_state = optimizer.update(grads, state["opt_state"], params)
        updates = jax.tree.map(lambda u: u * controls["lr_scale"], updates)
        new_params = optax.apply_updates(params, updates)
        healthy = (
            jnp.isfinite(loss)
            & jnp.isfinite(grad_norm)
            & (metrics["masked_ce"] <= controls["loss_ceiling"])
        )
        keep = lambda new, old: jnp.where(healthy, new, old)  # noqa: E731
        new_state = {
            "step": step + 1,
            "params": jax.tree.map(keep, new_params, params),
            "opt_state": jax.tree.map(keep, new_opt_state, state["opt_state"]),
        }
        if ref_params is not None:  # frozen: passed through (the state is donated)
            new_state["ref_params"] = ref_params
        if rollout is not None:  # read-only here: the runner replaces it every μ steps
            new_state["rollout"] = rollout
        metrics = {**metrics, "grad_norm": grad_norm, "applied": healthy.astype(jnp.int32)}
        return new_state, metrics

    if mesh is None:
        return jax.jit(train_step, donate_argnums=(0,))
    replicated = NamedSharding(mesh, PartitionSpec())
    # batch_keys=None: every batch leaf is [batch, length] and shares one sharding.
    rows = (
        NamedSharding(mesh, batch_spec(rules, mesh, global_batch))
        if batch_keys is None
        else batch_shardings(mesh, rules, global_batch, batch_keys)
    )
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, rows, replicated, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )


def make_eval_step(
    graphdef, *, param_shardings=None, mesh=None, rules="fsdp", global_batch: int | None = None,
    vrpo: VrpoConfig | None = None, chunk_size: int = 512, batch_keys=None,
    diffusion: DiffusionConfig | None = None,
):  # fmt: skip
    """Jitted held-out step: the objective's held-out NLL measure (`objective.heldout_nll` of
    `diffusion`, default masked diffusion's ELBO bound), or with `vrpo` the held-out preference
    accuracy (then `params` is `(params, ref_params)` and `param_shardings` theirs)."""

    def eval_step(params, batch, key):
        if vrpo is not None:
            policy, reference = (nnx.merge(graphdef, p) for p in params)
            return preference_eval(policy, reference, batch, key, vrpo, chunk_size)
        return heldout_nll(nnx.merge(graphdef, params), batch, key, diffusion or DiffusionConfig())

    if mesh is None:
        return jax.jit(eval_step)
    replicated = NamedSharding(mesh, PartitionSpec())
    rows = (
        NamedSharding(mesh, batch_spec(rules, mesh, global_batch))
        if batch_keys is None
        else batch_shardings(mesh, rules, global_batch, batch_keys)
    )
    return jax.jit(
        eval_step, in_shardings=(param_shardings, rows, replicated), out_shardings=replicated
    )
