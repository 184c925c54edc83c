"""Optimiser: global-norm clipping, then AdamW with one of the schedules of
docs/algorithms.md#learning-rate-schedules.

A schedule maps the optimiser's update count `c` (0 for the first update, as optax counts) to a
learning rate. Every schedule starts with a linear warmup 0 -> `learning_rate` over
`warmup_steps` (`c = warmup_steps` is the first update at the peak). The decaying schedules need
the run's total number of updates `T` and, like optax's own schedules, reach
`final_learning_rate` at `c = T` (the last update, `c = T - 1`, runs one decrement above it) and
hold it afterwards:

- `constant`: hold the peak.
- `cosine` (SMDM, docs/algorithms.md#learning-rate-schedules): cosine decay from the peak at
  `warmup_steps` to the floor at `T`.
- `wsd` (LLaDA pre-training and SFT, docs/algorithms.md#learning-rate-schedules): hold the peak;
  from `wsd_drop_step` (if not 0) hold `peak * wsd_drop_factor`; linear decay to the floor over the
  last `decay_steps` updates, i.e. from `T - decay_steps` to `T`.
- `illada` (docs/algorithms.md#learning-rate-schedules): hold the peak until `decay_start_step`,
  then cosine decay to the floor at `T`.

Weight decay applies to every parameter unless `decay_exclude="norms_and_embeddings"`, which
leaves RMSNorm scales, biases, `embed` and `lm_head` undecayed (`weight_decay_mask`).
"""

from __future__ import annotations

import dataclasses

import jax
import optax

from illada_jax.config.schema import ConfigError, OptimConfig

# Path names whose parameters `decay_exclude="norms_and_embeddings"` keeps out of weight decay.
_EMBEDDING_NAMES = frozenset({"embed", "lm_head"})


def _check_steps(field: str, value: int, limit: str, ok: bool) -> None:
    if not ok:
        raise ConfigError(f"optim.{field}={value!r} is invalid: must be {limit}")


def _phases(cfg: OptimConfig, *phases: tuple[int, optax.Schedule]) -> optax.Schedule:
    """The warmup, then each `(start, schedule)` phase from its absolute start step on.

    Starts are non-decreasing; a phase of zero length is dropped. Each phase sees the steps since
    its own start (`optax.join_schedules`).
    """
    if cfg.warmup_steps:
        warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
        phases = ((0, warmup), *phases)
    kept = [p for p, nxt in zip(phases, phases[1:], strict=False) if p[0] < nxt[0]]
    kept.append(phases[-1])
    if len(kept) == 1:
        return kept[0][1]
    return optax.join_schedules([s for _, s in kept], [start for start, _ in kept[1:]])


def learning_rate_schedule(cfg: OptimConfig, total_steps: int | None = None) -> optax.Schedule:
    """The learning rate as a function of the update count (see the module docstring).

    `total_steps` (the run's number of updates) is required by every schedule but "constant";
    a step parameter inconsistent with it raises `ConfigError` (a `ValueError`).
    """
    peak, warmup = cfg.learning_rate, cfg.warmup_steps
    if total_steps is None:
        if cfg.schedule != "constant":
            raise ConfigError(
                f"optim.schedule={cfg.schedule!r} needs the run's total_steps to place its decay"
            )
    else:
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ConfigError(f"total_steps={total_steps!r} is invalid: must be an integer >= 1")

    if cfg.schedule == "constant":
        # A run shorter than the warmup just ends on the ramp (short smoke runs of a config).
        return _phases(cfg, (warmup, optax.constant_schedule(peak)))

    assert total_steps is not None
    _check_steps(
        "warmup_steps",
        warmup,
        f"<= total_steps={total_steps} (schedule={cfg.schedule} decays after the warmup)",
        warmup <= total_steps,
    )
    floor = cfg.final_learning_rate
    if cfg.schedule == "cosine":
        _check_steps(
            "warmup_steps",
            warmup,
            f"< total_steps={total_steps} (schedule=cosine needs at least one decay step)",
            warmup < total_steps,
        )
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak,
            warmup_steps=warmup,
            decay_steps=total_steps,
            end_value=floor,
        )

    if cfg.schedule == "wsd":
        decay_start = total_steps - cfg.decay_steps
        _check_steps(
            "decay_steps",
            cfg.decay_steps,
            f"<= total_steps - warmup_steps = {total_steps} - {warmup} "
            "(the final decay starts after the warmup)",
            decay_start >= warmup,
        )
        drop = cfg.wsd_drop_step or decay_start  # 0 = no step-down
        _check_steps(
            "wsd_drop_step",
            cfg.wsd_drop_step,
            f"<= total_steps - decay_steps = {total_steps} - {cfg.decay_steps} "
            "(the step-down comes before the final decay)",
            drop <= decay_start,
        )
        dropped = peak * cfg.wsd_drop_factor if cfg.wsd_drop_step else peak
        return _phases(
            cfg,
            (warmup, optax.constant_schedule(peak)),
            (drop, optax.constant_schedule(dropped)),
            (decay_start, optax.linear_schedule(dropped, floor, cfg.decay_steps)),
        )

    if cfg.schedule == "illada":
        start = cfg.decay_start_step
        _check_steps(
            "decay_start_step",
            start,
            f"< total_steps={total_steps} (the cosine decay needs at least one step)",
            start < total_steps,
        )
        return _phases(
            cfg,
            (warmup, optax.constant_schedule(peak)),
            (start, optax.cosine_decay_schedule(peak, total_steps - start, alpha=floor / peak)),
        )

    raise ConfigError(f"optim.schedule={cfg.schedule!r} is invalid")  # unreachable: validated


# The step fields of a schedule, in the order their phases come.
_STEP_FIELDS = ("warmup_steps", "wsd_drop_step", "decay_start_step", "decay_steps")


def _steps_needed(cfg: OptimConfig) -> int:
    """The fewest total steps `cfg`'s schedule fits in (the checks of `learning_rate_schedule`)."""
    if cfg.schedule == "cosine":
        return cfg.warmup_steps + 1
    if cfg.schedule == "wsd":
        return max(cfg.warmup_steps, cfg.wsd_drop_step) + cfg.decay_steps
    if cfg.schedule == "illada":
        return max(cfg.warmup_steps, cfg.decay_start_step + 1)
    return 0  # constant: a run shorter than the warmup ends on the ramp


def fit_schedule(cfg: OptimConfig, total_steps: int) -> tuple[OptimConfig, str | None]:
    """`cfg` with its schedule's phases scaled to fit a run of `total_steps`, and a note saying so.

    A recipe's warmup and decay are sized for its full run; a smoke run of the same recipe
    (`--config=set:train.steps=5`) keeps the shape of the schedule: the step fields are scaled by
    total_steps / (the steps the schedule needs) and rounded down, which keeps the phases in order
    and inside the run (wsd keeps at least one decay step and scales the warmup and step-down
    into the steps before it). A schedule that fits is returned unchanged with no note.
    """
    needed = _steps_needed(cfg)
    if total_steps >= needed:
        return cfg, None
    scaled = {f: getattr(cfg, f) * total_steps // needed for f in _STEP_FIELDS}
    if cfg.schedule == "wsd":
        decay = max(1, scaled["decay_steps"])
        before, room = needed - cfg.decay_steps, total_steps - decay
        scaled = {
            "decay_steps": decay,
            **{
                f: getattr(cfg, f) * room // before if before else 0
                for f in ("warmup_steps", "wsd_drop_step")
            },  # fmt: skip
        }
    changed = {f: v for f, v in scaled.items() if v != getattr(cfg, f)}
    fitted = dataclasses.replace(cfg, **changed)
    learning_rate_schedule(fitted, total_steps)  # the scaled phases fit (raises if not)
    listed = ", ".join(f"{f} {getattr(cfg, f)} -> {v}" for f, v in changed.items())
    note = (
        f"optim: the {cfg.schedule} schedule needs {needed} steps and the run has "
        f"train.steps={total_steps}; its phases are scaled to fit ({listed}). Set them with "
        "--config=set:optim.FIELD=N to choose otherwise."
    )
    return fitted, note


def _path_names(path) -> list[str]:
    names = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            name = key.key
        elif isinstance(key, jax.tree_util.GetAttrKey):
            name = key.name
        else:  # SequenceKey / FlattenedIndexKey: positions carry no name
            continue
        if isinstance(name, str):
            names.append(name)
    return names


def decays(path) -> bool:
    """Whether the parameter at `path` gets weight decay under "norms_and_embeddings".

    Excluded: anything under `embed` or `lm_head`, under a `*norm` module (`attn_norm`,
    `mlp_norm`, `final_norm`), any `scale`, and any `bias` / `*_bias`.
    """
    for name in _path_names(path):
        if name in _EMBEDDING_NAMES or name.endswith("norm") or name == "scale":
            return False
        if name == "bias" or name.endswith("_bias"):
            return False
    return True


def weight_decay_mask(params):
    """A pytree like `params` (an `nnx.State` or nested dict) of bools: True = decayed."""
    return jax.tree_util.tree_map_with_path(lambda path, _: decays(path), params)


def make_optimizer(
    cfg: OptimConfig, total_steps: int | None = None
) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW on `learning_rate_schedule(cfg, total_steps)`."""
    mask = weight_decay_mask if cfg.decay_exclude == "norms_and_embeddings" else None
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip_norm),
        optax.adamw(
            learning_rate_schedule(cfg, total_steps),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=mask,
        ),
    )
