"""The configuration schema: frozen dataclasses, validated when they are built.

Every experiment is one `Experiment` made of a few section dataclasses. Fiddle builds them
(`illada_jax.config.flags`), so any field can be overridden from the command line with
`--config=set:model.n_layers=8`. Validation runs in `__post_init__`, i.e. before anything is
traced or compiled; a bad value raises `ConfigError` naming the field, the value and what is
allowed.

Every field here is consumed by the package; docs/architecture.md#configuration says how the
sections fit together.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from illada_jax.config import field_types
from illada_jax.config.checks import ConfigError  # noqa: F401  (re-exported)
from illada_jax.config.checks import check_choice as _check_choice
from illada_jax.config.checks import check_int as _check_int
from illada_jax.config.checks import check_prob as _check_prob
from illada_jax.config.checks import fail as _fail
from illada_jax.config.objectives import check_objective
from illada_jax.config.post_training import GrpoConfig, VrpoConfig

ATTENTION_IMPLS = ("xla", "cudnn", "splash")
ROPE_SCALINGS = ("none", "linear", "llama3")
REMAT_POLICIES = ("none", "full", "save_dots", "save_dots_no_batch")
DTYPES = ("float32", "bfloat16")
TIME_SAMPLINGS = ("uniform", "antithetic")
RANDOM_LENGTH_MODES = ("none", "llada_truncate", "illada_split")
OBJECTIVES = ("pretrain", "sft_llada", "sft_illada", "vrpo", "grpo", "ar", "block_diffusion")
SCHEDULES = ("constant", "cosine", "wsd", "illada")
DECAY_EXCLUDES = ("none", "norms_and_embeddings")
RULE_TABLES = ("auto", "fsdp", "fsdp_tp", "dp")
HEALTH_POLICIES = ("none", "skip", "rollback")
WANDB_MODES = ("online", "offline", "disabled")


# Path/URL fields and fixed-choice string fields: type errors name them so (`field_types`).
PATH_FIELDS = frozenset({"cache_dir", "tokenizer", "seqio_module", "tfds_data_dir", "init_from",
                         "eval_dataset", "compilation_cache"})  # fmt: skip
CHOICE_FIELDS = {
    "attention_impl": ATTENTION_IMPLS, "rope_scaling": ROPE_SCALINGS,
    "remat_policy": REMAT_POLICIES, "param_dtype": DTYPES, "compute_dtype": DTYPES,
    "objective": OBJECTIVES, "time_sampling": TIME_SAMPLINGS,
    "random_length_mode": RANDOM_LENGTH_MODES, "raw_text_unit": ("file", "block"),
    "schedule": SCHEDULES, "decay_exclude": DECAY_EXCLUDES, "rules": RULE_TABLES,
    "health_policy": HEALTH_POLICIES, "wandb_mode": WANDB_MODES,
}  # fmt: skip


def _check_types(section: Any) -> None:
    """Every field of a section has its declared type (from the type hints): a wrong type fails
    here, naming the field, what it must be and what it got, before any range check runs."""
    problem = field_types.type_problem(section, CHOICE_FIELDS, PATH_FIELDS)
    if problem:
        raise ConfigError(problem)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The bidirectional transformer (docs/models.md#shapes). Special ids are model properties
    (docs/models.md#special-ids)."""

    name: str = "custom"
    vocab_size: int = 8192
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 4
    head_dim: int = 64
    mlp_dim: int = 768
    max_seq_len: int = 256
    rope_theta: float = 500_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    use_bias: bool = False
    # q/k/v projection biases only (Qwen2's attention; docs/models.md#autoregressive-checkpoints).
    qkv_bias: bool = False
    # The logits at position i-1 predict the token at position i, as an autoregressive head
    # does (Dream, Fast-dLLM v2: an adapted AR model keeps its head's meaning); position 0 then
    # reads its own hidden state and is never masked in training (docs/models.md#shifted-logits).
    shifted_logits: bool = False
    # RoPE scaling of imported AR models (docs/models.md#rope-scaling): none, linear (positions
    # / factor) or llama3 (low frequencies / factor, smooth between the low and high bands).
    rope_scaling: str = "none"
    rope_scaling_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    # Initialisation (docs/models.md#the-block, iLLaDA `_init_weights`): N(0, init_std) for linears,
    # init_std / sqrt(2 n_layers) for the residual output projections, N(0, sqrt(1/(2 d)))
    # for the embedding.
    init_std: float = 0.02
    attention_impl: str = "xla"
    scan_layers: bool = True
    # Save the layer's matmul outputs without batch dims and recompute the rest (the [B, H, L, L]
    # attention probabilities among them) in the backward pass: less memory everywhere, and on
    # CPU 1.2x faster than saving everything (bench/train.py --remat).
    remat_policy: str = "save_dots_no_batch"
    # q/k/v as one matmul and gate/up as one (the weights are concatenated at compute time; the
    # parameters, their sharding and the checkpoints stay separate). Skipped under a mesh whose
    # `tensor` axis splits heads / mlp. bench/train.py on 2 CPU cores: +9% to +17% tokens/s.
    fused_projections: bool = True
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    mask_token_id: int = 4
    pad_token_id: int = 0
    bos_token_id: int = 2
    eos_token_id: int = 3
    eot_token_id: int | None = 7  # the default tokenizer's <|eot_id|>

    def __post_init__(self) -> None:
        _check_types(self)
        for field in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                      "mlp_dim", "max_seq_len"):  # fmt: skip
            _check_int(field, getattr(self, field), 1)
        if self.n_heads % self.n_kv_heads:
            divisors = [d for d in range(1, self.n_heads + 1) if self.n_heads % d == 0]
            _fail(
                "n_kv_heads",
                self.n_kv_heads,
                f"must divide n_heads={self.n_heads}; allowed values are {divisors}",
            )
        if self.head_dim % 2:
            _fail("head_dim", self.head_dim, "must be even (rotate-half RoPE pairs the two halves)")
        if not self.rope_theta > 0:
            _fail("rope_theta", self.rope_theta, "must be > 0")
        _check_choice("rope_scaling", self.rope_scaling, ROPE_SCALINGS)
        _check_int("rope_original_max_len", self.rope_original_max_len, 1)
        if not self.rope_scaling_factor >= 1 or not (
            0 < self.rope_low_freq_factor < self.rope_high_freq_factor
        ):
            _fail("rope_scaling_factor", self.rope_scaling_factor, "must be >= 1, with "
                  "0 < rope_low_freq_factor < rope_high_freq_factor")  # fmt: skip
        if not 0 < self.norm_eps < 1:
            _fail("norm_eps", self.norm_eps, "must lie in (0, 1)")
        if not self.init_std > 0:
            _fail("init_std", self.init_std, "must be > 0")
        _check_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
        _check_choice("remat_policy", self.remat_policy, REMAT_POLICIES)
        _check_choice("param_dtype", self.param_dtype, DTYPES)
        _check_choice("compute_dtype", self.compute_dtype, DTYPES)
        if self.attention_impl == "cudnn" and self.compute_dtype != "bfloat16":
            _fail(
                "attention_impl",
                self.attention_impl,
                "cuDNN flash attention runs in bf16: set compute_dtype=bfloat16 (or use xla)",
            )
        for field in ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id",
                      "eot_token_id"):  # fmt: skip
            value = getattr(self, field)
            if value is None and field == "eot_token_id":
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not (0 <= value < self.vocab_size)
            ):
                _fail(field, value, f"must be a token id in [0, vocab_size={self.vocab_size})")
        # docs/models.md#special-ids: masked positions are found by `noisy == mask_id`, so the mask
        # id must never be a real token the data or padding can produce.
        for field in ("pad_token_id", "eos_token_id", "bos_token_id"):
            if getattr(self, field) == self.mask_token_id:
                _fail(
                    "mask_token_id",
                    self.mask_token_id,
                    f"must differ from {field}={getattr(self, field)}",
                )

    @property
    def rope_scaling_params(self) -> tuple | None:
        """(kind, factor, low_freq_factor, high_freq_factor, original_max_len), or None."""
        if self.rope_scaling == "none":
            return None
        return (self.rope_scaling, self.rope_scaling_factor, self.rope_low_freq_factor,
                self.rope_high_freq_factor, self.rope_original_max_len)  # fmt: skip

    @property
    def q_per_kv(self) -> int:
        """Query heads sharing one key/value head (1 = plain multi-head attention)."""
        return self.n_heads // self.n_kv_heads


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """The forward process and the training objective (docs/algorithms.md: the
    pre-training loss, time sampling, random length, SFT, block diffusion, the autoregressive
    baseline)."""

    objective: str = "pretrain"
    # p_mask = (1 - mask_eps) * t + mask_eps keeps 1/p_mask bounded.
    mask_eps: float = 1e-3
    time_sampling: str = "uniform"
    # "llada_truncate": with probability `random_length_prob` per *step* the whole batch is cut to
    # a random length (static shapes: the tail becomes padding). "illada_split": each *sequence*
    # is split in two independent segments with probability `two_segment_prob`.
    random_length_mode: str = "illada_split"
    random_length_prob: float = 0.01
    two_segment_prob: float = 0.3
    # Sequence positions per cross-entropy chunk: [batch, chunk, vocab] fp32 logits at most.
    loss_chunk_size: int = 512
    # objective=block_diffusion: tokens per block; must divide train.seq_len (= seq_len is masked
    # diffusion exactly). 0 (unset) for the other objectives. With a block-size schedule, phase k
    # trains blocks of block_schedule_sizes[k] from step block_schedule_steps[k] on (the first
    # phase starts at 0; the last size is block_size, the one the model samples with).
    block_size: int = 0
    block_schedule_steps: tuple[int, ...] = ()
    block_schedule_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check_types(self)
        _check_choice("objective", self.objective, OBJECTIVES)
        _check_prob("mask_eps", self.mask_eps, open_high=True)
        _check_choice("time_sampling", self.time_sampling, TIME_SAMPLINGS)
        _check_choice("random_length_mode", self.random_length_mode, RANDOM_LENGTH_MODES)
        _check_prob("random_length_prob", self.random_length_prob)
        _check_prob("two_segment_prob", self.two_segment_prob)
        _check_int("loss_chunk_size", self.loss_chunk_size, 1)
        _check_int("block_size", self.block_size, 0)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Training data (`illada_jax.data.pipeline.batches`): prepared datasets mixed with weights.

    A dataset is a directory written by `illada prepare`; `embedded` / `embedded:heldout`: the
    embedded corpus, prepared with the default tokenizer on first use into `cache_dir` (default
    `$ILLADA_CACHE` or `~/.cache/illada_jax`); or `raw:FORMAT:PATHS`, raw files (jsonl, text,
    parquet, arrayrecord; files, directories or globs, local or gs://) tokenised with `tokenizer`
    while training, or `raw:seqio:TASK_OR_MIXTURE[:SPLIT]`, registered seqio tasks read while
    training (docs/data.md#on-the-fly-tokenisation).
    """

    datasets: tuple[str, ...] = ("embedded",)
    # One weight per dataset (empty = equal); each global batch holds exactly the rounded shares.
    weights: tuple[float, ...] = ()
    # Windows with one segment per document (no attention across documents) instead of plain
    # windows over the concatenated stream.
    document_aware: bool = False
    shuffle: bool = True
    read_threads: int = 4
    cache_dir: str = ""
    # objective=sft_llada reads dialogues (datasets[0]: a JSONL file or `demo`) and formats them
    # with this tokenizer (empty = the shipped default); raw: datasets are tokenised with it.
    tokenizer: str = ""
    # raw: datasets: the jsonl field / parquet column holding the document; text files as one
    # document per file or per blank-line block; tokeniser worker processes per raw dataset (0 =
    # in the reading thread). The worker count is part of the data order (like the seed).
    raw_field: str = "text"
    raw_text_unit: str = "file"
    tokenize_workers: int = 2
    # raw:seqio: datasets: the module that registers the tasks (imported in every tokeniser
    # worker) and seqio's TFDS data dir for tasks that read TFDS.
    seqio_module: str = ""
    tfds_data_dir: str = ""

    def __post_init__(self) -> None:
        _check_types(self)
        if (
            isinstance(self.datasets, str)
            or not self.datasets
            or not all(isinstance(d, str) and d for d in self.datasets)
        ):
            _fail("datasets", self.datasets, "must be a non-empty tuple of dataset paths")
        if self.weights:
            if len(self.weights) != len(self.datasets):
                _fail(
                    "weights",
                    self.weights,
                    f"needs one weight per dataset ({len(self.datasets)}) or none",
                )
            if (
                any(not isinstance(w, int | float) or w < 0 for w in self.weights)
                or not sum(self.weights) > 0
            ):
                _fail("weights", self.weights, "must be non-negative numbers with a positive sum")
        _check_int("read_threads", self.read_threads, 1)
        _check_int("tokenize_workers", self.tokenize_workers, 0)
        _check_choice("raw_text_unit", self.raw_text_unit, ("file", "block"))
        if not isinstance(self.raw_field, str) or not self.raw_field:
            _fail("raw_field", self.raw_field, "must be a non-empty field or column name")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with global-norm clipping and one of the learning-rate schedules of
    docs/algorithms.md#learning-rate-schedules.

    Schedules (`illada_jax.train.optim.learning_rate_schedule`; step = optimiser update count,
    0 for the first update; every schedule starts with a linear 0 -> learning_rate warmup over
    `warmup_steps`; T = the run's total steps):

    - "constant": then hold `learning_rate`.
    - "cosine": then cosine decay to `final_learning_rate` at step T (SMDM,
      docs/algorithms.md#learning-rate-schedules).
    - "wsd": LLaDA's Warmup-Stable-Decay (docs/algorithms.md#learning-rate-schedules): hold
      `learning_rate`; from `wsd_drop_step` (0 = no drop) hold `learning_rate * wsd_drop_factor`;
      then linear decay to `final_learning_rate` over the last `decay_steps` steps (reached at step
      T).
    - "illada": iLLaDA's constant -> cosine-to-floor (docs/algorithms.md#learning-rate-schedules):
      hold `learning_rate` until `decay_start_step`, then cosine decay to `final_learning_rate` at
      step T.

    `decay_exclude="norms_and_embeddings"` keeps RMSNorm scales, biases, `embed` and `lm_head` out
    of weight decay. Fields a schedule ignores must stay 0, so a setting never silently does nothing.
    """

    learning_rate: float = 1e-3
    warmup_steps: int = 20
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip_norm: float = 1.0
    schedule: str = "constant"
    final_learning_rate: float = 0.0
    decay_steps: int = 0
    decay_start_step: int = 0
    wsd_drop_step: int = 0
    wsd_drop_factor: float = 0.25
    decay_exclude: str = "none"

    def __post_init__(self) -> None:
        _check_types(self)
        if not self.learning_rate > 0:
            _fail("learning_rate", self.learning_rate, "must be > 0")
        _check_int("warmup_steps", self.warmup_steps, 0)
        _check_prob("b1", self.b1, open_high=True)
        _check_prob("b2", self.b2, open_high=True)
        if not self.eps > 0:
            _fail("eps", self.eps, "must be > 0")
        if self.weight_decay < 0:
            _fail("weight_decay", self.weight_decay, "must be >= 0")
        if not self.grad_clip_norm > 0:
            _fail("grad_clip_norm", self.grad_clip_norm, "must be > 0")
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("decay_exclude", self.decay_exclude, DECAY_EXCLUDES)
        final = self.final_learning_rate
        if isinstance(final, bool) or not isinstance(final, int | float) or not final >= 0:
            _fail("final_learning_rate", final, "must be a number >= 0")
        if final > self.learning_rate:
            _fail(
                "final_learning_rate",
                final,
                f"must be <= learning_rate={self.learning_rate} (the schedules only decay)",
            )
        for field in ("decay_steps", "decay_start_step", "wsd_drop_step"):
            _check_int(field, getattr(self, field), 0)
        _check_prob("wsd_drop_factor", self.wsd_drop_factor, open_low=True)
        # A field the chosen schedule ignores must keep its default.
        used_by = {
            "final_learning_rate": ("cosine", "wsd", "illada"),
            "decay_steps": ("wsd",),
            "decay_start_step": ("illada",),
            "wsd_drop_step": ("wsd",),
        }
        for field, schedules in used_by.items():
            if getattr(self, field) != 0 and self.schedule not in schedules:
                _fail(
                    field,
                    getattr(self, field),
                    f"is only used by schedule={' or '.join(schedules)}; "
                    f"with schedule={self.schedule} leave it at 0",
                )
        if self.schedule == "wsd":
            if self.decay_steps < 1:
                _fail(
                    "decay_steps",
                    self.decay_steps,
                    "schedule=wsd needs the length of its final linear decay (>= 1 steps)",
                )
            if self.wsd_drop_step:
                if self.wsd_drop_step < self.warmup_steps:
                    _fail(
                        "wsd_drop_step",
                        self.wsd_drop_step,
                        f"must be 0 (no drop) or >= warmup_steps={self.warmup_steps}",
                    )
                dropped = self.learning_rate * self.wsd_drop_factor
                if final > dropped:
                    _fail(
                        "final_learning_rate",
                        final,
                        f"must be <= learning_rate * wsd_drop_factor = {dropped:g} "
                        "(the final phase decays from the dropped rate)",
                    )
        if self.schedule == "illada" and self.decay_start_step < self.warmup_steps:
            _fail(
                "decay_start_step",
                self.decay_start_step,
                f"must be >= warmup_steps={self.warmup_steps} (the cosine decay follows "
                "the warmup and the constant phase)",
            )


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh (`illada_jax.parallel`): ICI axes data, fsdp, tensor and a DCN data axis across
    slices. -1 on one axis takes the remaining devices. `rules` picks the logical-axis table."""

    dcn_data: int = 1
    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    # auto: dp on CPU hosts, fsdp on accelerators (see illada_jax.parallel.rules).
    rules: str = "auto"
    # CPU hosts only: virtual devices to split the host into (0 = one per core).
    cpu_devices: int = 0

    def __post_init__(self) -> None:
        _check_types(self)
        sizes = {
            "dcn_data": self.dcn_data,
            "data": self.data,
            "fsdp": self.fsdp,
            "tensor": self.tensor,
        }
        for name, size in sizes.items():
            if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
                _fail(name, size, "must be a positive integer or -1 (the remaining devices)")
        if sum(size == -1 for size in sizes.values()) > 1:
            _fail("fsdp", self.fsdp, "at most one mesh axis may be -1")
        _check_choice("rules", self.rules, RULE_TABLES)
        _check_int("cpu_devices", self.cpu_devices, 0)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints in WORKDIR/checkpoints: every `every` steps and at the end, keeping the
    last `keep` plus every `keep_every`-th step (0 = none kept permanently)."""

    every: int = 100
    keep: int = 3
    keep_every: int = 0
    async_save: bool = True
    # A checkpoint (a step directory or a run directory) whose parameters initialise this run,
    # e.g. a pre-trained model for SFT. Optimiser state and step start fresh.
    init_from: str = ""
    # A multi-host run needs a workdir every host sees: object storage (gs://...) or, with this
    # set, a local path on a shared filesystem (NFS, Lustre, a gcsfuse mount) mounted on all hosts.
    shared_filesystem: bool = False
    # A save that fails (storage errors left after the clients' own per-request retries) is tried
    # `save_attempts` times, `save_retry_seconds` apart (doubling); if every try fails, training
    # goes on from the last good checkpoint and the failure is logged (the final save: an error).
    save_attempts: int = 3
    save_retry_seconds: float = 10.0
    # Retries of each checkpoint request on object storage (tensorstore's; 1 s doubling to 32 s).
    request_retries: int = 10

    def __post_init__(self) -> None:
        _check_types(self)
        _check_int("every", self.every, 1)
        _check_int("save_attempts", self.save_attempts, 1)
        _check_int("request_retries", self.request_retries, 0)
        if not self.save_retry_seconds >= 0:
            _fail("save_retry_seconds", self.save_retry_seconds, "must be >= 0")
        _check_int("keep", self.keep, 1)
        _check_int("keep_every", self.keep_every, 0)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How long and on what shapes to train."""

    steps: int = 100
    batch_size: int = 8  # global batch (sequences per optimizer step)
    seq_len: int = 128
    seed: int = 0
    log_every: int = 10
    # Micro-batches per step: gradients are summed over them before the update.
    grad_accum: int = 1
    # Held-out ELBO bound (docs/algorithms.md#the-held-out-bound, fixed seeds) every `eval_every`
    # steps (0 = off) on `eval_batches` batches of `eval_dataset`.
    eval_every: int = 0
    eval_batches: int = 4
    eval_dataset: str = "embedded:heldout"
    # Loss health: NaN/Inf or a spike above rolling mean + spike_sigma·std over spike_window steps.
    # skip: drop the update; rollback: restore the last good checkpoint, skip the offending
    # batches and multiply the learning rate by rollback_lr_factor.
    health_policy: str = "skip"
    spike_window: int = 50
    spike_sigma: float = 6.0
    rollback_lr_factor: float = 0.5
    # Testing hook: make the loss NaN at this step (-1 = never).
    inject_nan_step: int = -1
    # (first, last) steps to trace with jax.profiler into WORKDIR/profile (empty = off).
    profile_steps: tuple[int, ...] = ()
    # Samples in WORKDIR/samples/ at every eval step, printed at the end: `sample_length` tokens
    # (0 = off) after each prompt (chat-formatted for SFT), in blocks of `sample_block_length`
    # (0 = one block), greedy or at `sample_temperature` (train/samples.py).
    sample_prompts: tuple[str, ...] = ("In the beginning", "The LORD is my", "Hello, how are")
    sample_length: int = 32
    sample_block_length: int = 0
    sample_temperature: float = 0.0
    # JAX's persistent compilation cache, so a restarted job (preemption, crash) loads its
    # compiled steps instead of compiling them again: "auto" = WORKDIR/compile_cache (gs:// works),
    # "off", or a directory of your own (shared by runs; a cache set by JAX_COMPILATION_CACHE_DIR
    # wins over "auto").
    compilation_cache: str = "auto"

    def __post_init__(self) -> None:
        _check_types(self)
        for field in ("steps", "batch_size", "seq_len", "log_every", "grad_accum", "eval_batches",
                      "spike_window"):  # fmt: skip
            _check_int(field, getattr(self, field), 1)
        _check_int("seed", self.seed, 0)
        _check_int("eval_every", self.eval_every, 0)
        if str(self.eval_dataset).startswith("raw:"):
            _fail(
                "eval_dataset",
                self.eval_dataset,
                "held-out evaluation reads fixed batches of a prepared dataset; prepare it with "
                "`illada prepare` and name the directory",
            )
        _check_int("sample_length", self.sample_length, 0)
        _check_int("sample_block_length", self.sample_block_length, 0)
        if self.sample_block_length and self.sample_length % self.sample_block_length:
            _fail("sample_block_length", self.sample_block_length,
                  f"must divide sample_length={self.sample_length} (or 0: one block)")  # fmt: skip
        if not self.sample_temperature >= 0:
            _fail("sample_temperature", self.sample_temperature, "must be >= 0 (0: greedy)")
        if not isinstance(self.compilation_cache, str) or not self.compilation_cache.strip():
            _fail("compilation_cache", self.compilation_cache,
                  '"auto" (WORKDIR/compile_cache), "off", or a directory')  # fmt: skip
        _check_choice("health_policy", self.health_policy, HEALTH_POLICIES)
        if not self.spike_sigma > 0:
            _fail("spike_sigma", self.spike_sigma, "must be > 0")
        if not 0 < self.rollback_lr_factor <= 1:
            _fail("rollback_lr_factor", self.rollback_lr_factor, "must lie in (0, 1]")
        if isinstance(self.inject_nan_step, bool) or not isinstance(self.inject_nan_step, int):
            _fail("inject_nan_step", self.inject_nan_step, "must be an integer step or -1")
        steps = tuple(self.profile_steps)
        if steps and (len(steps) != 2 or not 1 <= steps[0] <= steps[1]):
            _fail(
                "profile_steps",
                self.profile_steps,
                "must be () or (first, last) with 1 <= first <= last",
            )


@dataclasses.dataclass(frozen=True)
class ObsConfig:
    """Where a run's metrics go besides `metrics.jsonl` and TensorBoard (`illada_jax.obs.writers`):
    Weights & Biases when `wandb_project` is set (process 0 only; needs the `wandb` extra,
    `pip install "illada-jax[wandb]"`). The W&B run stores the resolved config and is named
    after the run directory. `wandb_mode` None leaves the mode to wandb (`WANDB_MODE`, else
    online); `wandb_entity` None: the API key's default entity."""

    wandb_project: str | None = None
    wandb_entity: str | None = None
    wandb_mode: str | None = None

    def __post_init__(self) -> None:
        _check_types(self)
        for field in ("wandb_project", "wandb_entity"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, str) or not value):
                _fail(field, value, "must be a non-empty string or None")
        if self.wandb_mode is not None:
            _check_choice("wandb_mode", self.wandb_mode, WANDB_MODES)
        if self.wandb_project is None:
            for field in ("wandb_entity", "wandb_mode"):
                if getattr(self, field) is not None:
                    _fail(field, getattr(self, field), "is only used with wandb_project set")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One run: everything `illada train` needs. Serialises to JSON (`config.json`)."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    obs: ObsConfig = dataclasses.field(default_factory=ObsConfig)
    vrpo: VrpoConfig = dataclasses.field(default_factory=VrpoConfig)
    grpo: GrpoConfig = dataclasses.field(default_factory=GrpoConfig)

    def __post_init__(self) -> None:
        if self.train.seq_len > self.model.max_seq_len:
            _fail(
                "train.seq_len",
                self.train.seq_len,
                f"must be <= model.max_seq_len={self.model.max_seq_len}",
            )
        check_objective(self)
