"""The experiments built into the package, and fiddlers (`--config=fiddler:NAME`).

The project's recipes (pre-training LLaDA-8B and iLLaDA-8B, ablations, SFT, sweeps) live in the
repository's top-level `configs/` (`illada_jax.config.registry` finds them; a wheel carries a copy
as `illada_jax.recipes`). The experiments here are the ones that must work without any recipe
file: `tiny`, the default of `illada train` (the CPU demo), and `small` (the CPU benchmark
shape). `experiment_for_preset` is the starting
point recipes build on.
"""

from __future__ import annotations

import fiddle as fdl

from illada_jax.config.presets import MODEL_PRESETS
from illada_jax.config.schema import (
    CheckpointConfig,
    DataConfig,
    DiffusionConfig,
    Experiment,
    MeshConfig,
    ModelConfig,
    ObsConfig,
    OptimConfig,
    TrainConfig,
)

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
        obs=fdl.Config(ObsConfig),
    )


def tiny() -> fdl.Config:
    """The default `illada train`: the CPU demo (configs/demo.py documents what it shows).

    A model this small (1.1M parameters, 1024-piece tokenizer) processes ~7k tokens/s on 2
    cores, so in ~3 minutes it sees 1M tokens in 1,000 steps of 16 x 64 and its held-out bound
    goes well below the unigram baseline; larger models or vocabularies spend the same minutes
    on fewer steps and end at the baseline (the plateau every masked-diffusion model crosses
    before it uses context).
    """
    cfg = experiment_for_preset("tiny")
    cfg.diffusion.time_sampling = "antithetic"
    cfg.diffusion.random_length_mode = "none"
    cfg.data.tokenizer = "shipped:sp1k"
    cfg.train.steps = 1000
    cfg.train.batch_size = 16
    cfg.train.seq_len = 64
    cfg.train.log_every = 100
    cfg.train.eval_every = 250
    cfg.train.eval_batches = 32
    cfg.optim.learning_rate = 5e-3
    cfg.optim.warmup_steps = 50
    cfg.optim.schedule = "cosine"
    cfg.optim.final_learning_rate = 5e-4
    cfg.checkpoint.every = 250
    return cfg


def small() -> fdl.Config:
    """The small preset (24.6M parameters, plain multi-head attention) on the embedded corpus
    with the schema's defaults (100 steps of 8 x 128): a base for CPU experiments."""
    return experiment_for_preset("small")


EXPERIMENTS = {"tiny": tiny, "small": small}


def antithetic_time(cfg: fdl.Config) -> None:
    """Stratified diffusion times across the global batch (docs/algorithms.md#time-sampling)."""
    cfg.diffusion.time_sampling = "antithetic"


def no_random_length(cfg: fdl.Config) -> None:
    """Train only on full-length windows."""
    cfg.diffusion.random_length_mode = "none"


def llada_truncate(cfg: fdl.Config) -> None:
    """LLaDA's 1%-per-step random-length truncation (docs/algorithms.md#random-length)."""
    cfg.diffusion.random_length_mode = "llada_truncate"


def illada_split(cfg: fdl.Config) -> None:
    """iLLaDA's 30%-per-sequence two-segment split (docs/algorithms.md#random-length)."""
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


def pod_settings(cfg: fdl.Config, *, remat: str = "full") -> fdl.Config:
    """What a TPU pod recipe sets (and `illada compile` then reports on): Pallas splash
    attention, bf16 compute with fp32 parameters and optimizer state, the `remat` policy, and
    FSDP over every chip of a slice (`mesh.fsdp=-1`) with the `fsdp` rule table."""
    cfg.model.attention_impl = "splash"
    cfg.model.param_dtype = "float32"
    cfg.model.compute_dtype = "bfloat16"
    cfg.model.remat_policy = remat
    cfg.mesh.fsdp = -1
    cfg.mesh.rules = "fsdp"
    return cfg
