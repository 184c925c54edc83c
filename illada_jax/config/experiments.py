"""The experiments built into the package, and fiddlers (`--config=fiddler:NAME`).

The project's recipes (pre-training LLaDA-8B and iLLaDA-8B, ablations, SFT, sweeps) live in the
repository's top-level `configs/` (`illada_jax.config.registry` finds them; a wheel carries a copy
as `illada_jax.recipes`). The experiments here are the ones that must work without any recipe
file: `tiny`, the default of `illada train` (the CPU demo), and `small` (the CPU benchmark
shape). `experiment_for_preset` is the starting
point recipes build on.
"""

from __future__ import annotations

import dataclasses
import math

import fiddle as fdl

from illada_jax.config.post_training import GrpoConfig, VrpoConfig
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
        vrpo=fdl.Config(VrpoConfig),
        grpo=fdl.Config(GrpoConfig),
    )


def tiny() -> fdl.Config:
    """The default `illada train`: the CPU demo (configs/demo.py documents what it shows).

    A model this small (0.62M parameters, 2 layers, 1024-piece tokenizer) processes ~25k
    tokens/s on 2 cores, so in ~2 minutes it sees 2.6M tokens in 2,500 steps of 16 x 64 and its
    held-out bound goes well below the unigram baseline; larger models or vocabularies spend the
    same minutes on fewer steps and end at the baseline (the plateau every masked-diffusion model
    crosses before it uses context).
    """
    cfg = experiment_for_preset("tiny")
    # Two layers (the preset has four) and a wider initialisation leave the unigram plateau
    # early: in the same minutes the 4-layer model ended 0.26 nats below the baseline, this one
    # 0.85 (bench/quickstart.py).
    cfg.model.n_layers = 2
    cfg.model.init_std = 0.08
    cfg.diffusion.time_sampling = "antithetic"
    cfg.diffusion.random_length_mode = "none"
    cfg.data.tokenizer = "shipped:sp1k"
    cfg.train.steps = 2500
    cfg.train.batch_size = 16
    cfg.train.seq_len = 64
    cfg.train.log_every = 100
    cfg.train.eval_every = 250
    cfg.train.eval_batches = 32
    cfg.optim.learning_rate = 5e-3
    cfg.optim.warmup_steps = 50
    cfg.optim.schedule = "cosine"
    cfg.optim.final_learning_rate = 5e-4
    cfg.train.sample_block_length = 4  # greedy decoding of a model this small loops
    cfg.train.sample_temperature = 0.7
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


REHEARSAL_STEPS = 24
REHEARSAL_BATCH = 8  # sequences per step: divides the data-parallel size of up to 8 hosts
REHEARSAL_SEQ_LEN = 64
REHEARSAL_CHECKPOINT_EVERY = 8
REHEARSAL_OWN_VOCAB = 8192  # the largest of the project's tokenizers (published ones are larger)
_SPECIAL_ID_FIELDS = tuple(f"{role}_token_id" for role in ("mask", "pad", "bos", "eos", "eot"))


def rehearsal(cfg: fdl.Config) -> None:
    """A pod recipe at toy size, for the pod rehearsal (`launch/rehearse.py`, docs/pods.md): the
    one override between a recipe and what the rehearsal's CPU "hosts" train.

    The run keeps the recipe's code path: its objective, random-length mode, dtypes, remat
    policy, mesh axes and rule table, schedule kind, optimizer, datasets, tokenizer, held-out set
    and checkpoint paths. It changes only sizes, and the attention kernel:
    - the network of the `tiny` preset (4 layers of width 128, 4 query heads: on 1 key/value
      head when the recipe groups its query heads, else on 4), keeping the recipe's embedding
      tying. A published vocabulary (over 8192 ids: LLaDA's, iLLaDA's) becomes tiny's (1024 ids
      with the project's special ids), which the rehearsal's stand-in for the published
      tokenizer has; the project's own tokenizers' vocabularies are kept;
    - XLA attention instead of Pallas splash attention, which compiles only for a TPU;
    - one CPU device per host (`mesh.cpu_devices=1`: a host stands in for one chip);
    - 24 steps of 8 x 64 tokens; warmup and the schedule's decay points scaled from the
      recipe's steps to 24; a checkpoint every 8 steps (a permanent one every 16 when the recipe
      keeps some); the held-out bound once, at the end, on 2 batches; a log line per step;
    - block diffusion: block sizes that divide the 64-token windows (their gcd with 64), a
      block-size schedule's phase starts scaled to the 24 steps;
    - online RL (grpo): completions of 16 tokens in one block of 16 steps, groups of 4 when the
      recipe's do not divide the batch.

    The rehearsal appends it to a documented command, after the command's own directives, so
    it wins over their sizes and kernel (a GPU command's `cudnn`) and keeps the rest (paths).
    """
    model = cfg.model
    keep = {"tie_embeddings": model.tie_embeddings}
    if model.vocab_size <= REHEARSAL_OWN_VOCAB:  # the project's tokenizer: keep it
        keep |= {f: getattr(model, f) for f in ("vocab_size", *_SPECIAL_ID_FIELDS)}
    grouped = model.n_kv_heads < model.n_heads
    defaults = {field.name: field.default for field in dataclasses.fields(ModelConfig)}
    for field in _SPECIAL_ID_FIELDS:  # the project's layout of special ids
        setattr(model, field, defaults[field])
    for field, value in MODEL_PRESETS["tiny"].items():
        if field != "name":
            setattr(model, field, value)
    for field, value in keep.items():
        setattr(model, field, value)
    model.n_kv_heads = 1 if grouped else model.n_heads
    model.attention_impl = "xla"
    cfg.mesh.cpu_devices = 1
    steps = cfg.train.steps
    for field in ("warmup_steps", "decay_steps", "decay_start_step", "wsd_drop_step"):
        value = getattr(cfg.optim, field)
        if value:
            setattr(
                cfg.optim,
                field,
                max(1, min(REHEARSAL_STEPS - 1, round(value * REHEARSAL_STEPS / steps))),
            )
    cfg.train.steps = REHEARSAL_STEPS
    cfg.train.batch_size = REHEARSAL_BATCH
    cfg.train.seq_len = REHEARSAL_SEQ_LEN
    cfg.train.grad_accum = 1
    cfg.train.log_every = 1
    if cfg.train.eval_every:
        cfg.train.eval_every = REHEARSAL_STEPS
        cfg.train.eval_batches = 2
    cfg.checkpoint.every = REHEARSAL_CHECKPOINT_EVERY
    if cfg.checkpoint.keep_every:
        cfg.checkpoint.keep_every = 2 * REHEARSAL_CHECKPOINT_EVERY
    if cfg.diffusion.objective == "block_diffusion":
        _rehearse_blocks(cfg.diffusion, steps)
    if cfg.diffusion.objective == "grpo":  # completions of 16 tokens, groups that fill a batch
        if REHEARSAL_BATCH % cfg.grpo.group_size:
            cfg.grpo.group_size = 4
        cfg.grpo.gen_length = cfg.grpo.steps = cfg.grpo.block_length = 16


def _rehearse_blocks(diffusion, steps: int) -> None:
    """Block sizes that tile the rehearsal's windows (at most REHEARSAL_SEQ_LEN), and a
    block-size schedule's phase starts scaled from the recipe's steps (each phase keeps a step)."""
    size = lambda s: math.gcd(s, REHEARSAL_SEQ_LEN)  # noqa: E731
    diffusion.block_size = size(diffusion.block_size)
    starts = []
    for start in diffusion.block_schedule_steps:
        scaled = round(start * REHEARSAL_STEPS / steps)
        starts.append(max(scaled, starts[-1] + 1) if starts else 0)
    diffusion.block_schedule_steps = tuple(starts)
    diffusion.block_schedule_sizes = tuple(size(s) for s in diffusion.block_schedule_sizes)


FIDDLERS = {
    f.__name__: f
    for f in (
        antithetic_time,
        no_random_length,
        llada_truncate,
        illada_split,
        bf16,
        remat_full,
        rehearsal,
    )
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
