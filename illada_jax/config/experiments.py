"""Named experiments (`--config=config:NAME`) and fiddlers (`--config=fiddler:NAME`).

Built-in experiments live inside the package (not only in the repository's `configs/` folder) so
that `illada train` works after a plain `pip install`; user experiments in any file are reachable
with `config:path/to/file.py:function`.
"""

from __future__ import annotations

import fiddle as fdl

from illada_jax.config.schema import (
    CheckpointConfig,
    DataConfig,
    DiffusionConfig,
    Experiment,
    MeshConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from illada_jax.model.presets import MODEL_PRESETS

# LLaDA-family presets train with LLaDA's 1% per-step truncation; the rest with iLLaDA's split.
_LLADA_FAMILY = ("llada_1b", "llada_8b")


def experiment_for_preset(name: str) -> fdl.Config:
    """`fdl.Config[Experiment]` for a model preset with the matching diffusion recipe."""
    mode = "llada_truncate" if name in _LLADA_FAMILY else "illada_split"
    return fdl.Config(
        Experiment,
        model=fdl.Config(ModelConfig, **MODEL_PRESETS[name]),
        diffusion=fdl.Config(DiffusionConfig, random_length_mode=mode),
        data=fdl.Config(DataConfig),
        mesh=fdl.Config(MeshConfig),
        checkpoint=fdl.Config(CheckpointConfig),
        optim=fdl.Config(OptimConfig),
        train=fdl.Config(TrainConfig),
    )


def tiny() -> fdl.Config:
    """The default `illada train`: the tiny preset, a few minutes on a 2-core CPU."""
    cfg = experiment_for_preset("tiny")
    cfg.train.steps = 400
    cfg.train.batch_size = 16
    cfg.train.seq_len = 128
    cfg.train.log_every = 50
    cfg.optim.learning_rate = 3e-3
    cfg.optim.warmup_steps = 30
    cfg.train.eval_every = 100
    return cfg


EXPERIMENTS = {name: (lambda name=name: experiment_for_preset(name)) for name in MODEL_PRESETS}
EXPERIMENTS["tiny"] = tiny


def antithetic_time(cfg: fdl.Config) -> None:
    """Stratified diffusion times across the global batch (SPEC §7.2)."""
    cfg.diffusion.time_sampling = "antithetic"


def no_random_length(cfg: fdl.Config) -> None:
    """Train only on full-length windows."""
    cfg.diffusion.random_length_mode = "none"


def llada_truncate(cfg: fdl.Config) -> None:
    """LLaDA's 1%-per-step random-length truncation (SPEC §1.2)."""
    cfg.diffusion.random_length_mode = "llada_truncate"


def illada_split(cfg: fdl.Config) -> None:
    """iLLaDA's 30%-per-sequence two-segment split (SPEC §3.2)."""
    cfg.diffusion.random_length_mode = "illada_split"


def bf16(cfg: fdl.Config) -> None:
    """fp32 parameters, bf16 compute: the pod default."""
    cfg.model.param_dtype = "float32"
    cfg.model.compute_dtype = "bfloat16"


def remat_full(cfg: fdl.Config) -> None:
    """Recompute every layer in the backward pass (least memory)."""
    cfg.model.remat_policy = "full"


FIDDLERS = {
    f.__name__: f
    for f in (antithetic_time, no_random_length, llada_truncate, illada_split, bf16, remat_full)
}
