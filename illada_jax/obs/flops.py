"""FLOPs per token, the peak FLOP/s of the hardware, and model FLOPs utilisation (MFU).

The FLOP model is docs/architecture.md#flops's, for a *bidirectional* transformer (every query
attends to all S keys, so there is no causal halving of the attention term):

    forward FLOPs / token        = 2·N + 4·n_layers·d·S
    train (fwd + bwd) FLOPs / token = 6·N + 12·n_layers·d·S

with N the matmul parameters — the non-embedding parameters plus the output head (vocab·d_model),
counted once whether the head is tied to the embedding or not (the embedding lookup is a gather,
not a matmul) — and d = n_heads·head_dim, the width of the attention scores/values products.
Norms, RoPE, softmax and the loss are left out, as in the usual 6·N accounting.

Peak FLOP/s: a table of dense bf16 peaks for known accelerators (`PEAK_FLOPS`), matched on
`device.device_kind`; on the CPU the dense-matmul rate is measured once per process. An unknown
accelerator gets `None`, and `mfu` then returns NaN rather than a number against a wrong peak.
"""

from __future__ import annotations

import functools
import math
import re
import time

import jax
import jax.numpy as jnp

from illada_jax.config.schema import ModelConfig

# Dense (no 2:4 sparsity) bf16 peak FLOP/s of ONE JAX device, from the vendors' spec sheets.
# On TPU v4 and later one JAX device is one chip (v4/v5p megacore: both TensorCores), so the
# per-chip numbers apply directly. NVIDIA sheets quote bf16 "with sparsity"; dense is half.
PEAK_FLOPS: dict[str, float] = {
    # Google Cloud TPU system architecture pages (peak bf16 compute per chip).
    "tpu_v4": 275e12,
    "tpu_v5e": 197e12,
    "tpu_v5p": 459e12,
    "tpu_v6e": 918e12,  # Trillium
    # NVIDIA H100 datasheet: SXM 1,979 TFLOPS bf16 with sparsity -> 989 dense; the H800 SXM has
    # the same tensor cores (it differs in NVLink bandwidth), GH200 carries an H100 SXM die.
    "h100_sxm": 989e12,
    # Same datasheet: PCIe 1,513 -> 756 dense; NVL 1,671 -> 835 dense.
    "h100_pcie": 756e12,
    "h100_nvl": 835e12,
    # NVIDIA H200 datasheet: SXM 1,979 -> 989 dense (same compute as H100, more/faster HBM);
    # H200 NVL 1,671 -> 835 dense.
    "h200": 989e12,
    "h200_nvl": 835e12,
    # NVIDIA A100 datasheet: 312 TFLOPS bf16 dense (SXM and PCIe alike).
    "a100": 312e12,
}

# `device_kind` (lower-cased) -> PEAK_FLOPS key, first match wins: the specific variants come
# before the generic names they contain. Observed kinds: "TPU v4", "TPU v5 lite" (v5e),
# "TPU v5" / "TPU v5p", "TPU v6 lite" (v6e), "NVIDIA H100 80GB HBM3", "NVIDIA H200".
_DEVICE_KIND_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"^tpu v4$", "tpu_v4"),
    (r"^tpu v5 ?(lite|e)$", "tpu_v5e"),
    (r"^tpu v5p?$", "tpu_v5p"),
    (r"^tpu v6 ?(lite|e)$", "tpu_v6e"),
    (r"\b(h100|h800)\b.*\bpcie\b", "h100_pcie"),
    (r"\bh100\b.*\bnvl\b", "h100_nvl"),
    (r"\bh200\b.*\bnvl\b", "h200_nvl"),
    (r"\b(h100|h800|gh200)\b", "h100_sxm"),
    (r"\bh200\b", "h200"),
    (r"\ba100\b", "a100"),
)


def peak_table_key(device_kind: str) -> str | None:
    """The `PEAK_FLOPS` key for a `device.device_kind` string, or None when it is not known."""
    kind = " ".join(device_kind.lower().split())
    for pattern, key in _DEVICE_KIND_PATTERNS:
        if re.search(pattern, kind):
            return key
    return None


@functools.cache
def matmul_params(cfg: ModelConfig) -> int:
    """N of the FLOP model: non-embedding parameters + the output head (vocab·d_model), once."""
    # Imported here: the model package pulls in flax, which `illada_jax.obs` users may not need.
    from illada_jax.model.transformer import count_params

    _, non_embedding = count_params(cfg)
    return non_embedding + cfg.vocab_size * cfg.d_model


def _attention_width(cfg: ModelConfig) -> int:
    return cfg.n_heads * cfg.head_dim


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs per token at sequence length `seq_len`: 2·N + 4·n_layers·d·S
    (docs/architecture.md#flops)."""
    return float(2 * matmul_params(cfg) + 4 * cfg.n_layers * _attention_width(cfg) * seq_len)


def sampler_forward_flops(cfg: ModelConfig, seq_len: int, head_positions: int) -> float:
    """FLOPs of one sampler forward of one sequence: the layers over all `seq_len` canvas
    positions (2·(N − vocab·d) + 4·n_layers·d·S per position) and the output head on
    `head_positions` of them only (2·vocab·d each), as the sampler runs it (on the block)."""
    head = cfg.vocab_size * cfg.d_model
    layers = 2 * (matmul_params(cfg) - head) + 4 * cfg.n_layers * _attention_width(cfg) * seq_len
    return float(seq_len * layers + head_positions * 2 * head)


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward+backward FLOPs per token: 6·N + 12·n_layers·d·S (docs/architecture.md#flops, no
    causal halving)."""
    return float(6 * matmul_params(cfg) + 12 * cfg.n_layers * _attention_width(cfg) * seq_len)


def train_step_work(experiment) -> tuple[int, float]:
    """(token positions per optimizer step, FLOPs per such position) of `experiment`'s train
    step: batch × seq_len at `train_flops_per_token`; for preference optimisation (vrpo) each
    pair runs 2 answers × `vrpo.samples` masked copies through the policy (forward and backward)
    and the reference (forward), so positions count those copies and each adds a forward; for
    online RL (grpo) each row also carries its share of the rollout, made once every μ steps:
    `grpo.steps` sampler forwards and μ forwards each of the old policy and the reference; for
    block diffusion with blocks shorter than the sequence, every token runs twice (the noisy and
    the clean copy of the 2·seq_len canvas, attention over 2·seq_len keys) and the output head
    once."""
    tcfg, cfg = experiment.train, experiment.model
    tokens, per_token = tcfg.batch_size * tcfg.seq_len, train_flops_per_token(cfg, tcfg.seq_len)
    diffusion = experiment.diffusion
    if diffusion.objective == "block_diffusion" and diffusion.block_size < tcfg.seq_len:
        head = cfg.vocab_size * cfg.d_model
        per_token = 2 * train_flops_per_token(cfg, 2 * tcfg.seq_len) - 6 * head
    if experiment.diffusion.objective == "vrpo":
        tokens *= 2 * experiment.vrpo.samples
        per_token += forward_flops_per_token(cfg, tcfg.seq_len)
    if experiment.diffusion.objective == "grpo":
        grpo = experiment.grpo
        rollout_forwards = (grpo.steps + 2 * grpo.inner_updates) / grpo.inner_updates
        per_token += rollout_forwards * forward_flops_per_token(cfg, tcfg.seq_len)
    return tokens, per_token


def mfu(tokens_per_s: float, flops_per_token: float, peak_total: float | None) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the summed peak of all devices used.

    `peak_total` is the peak of the whole job (`total_peak_flops`), not of one device. Returns NaN
    when the peak is unknown (None), zero, negative or not finite.
    """
    if peak_total is None or not math.isfinite(peak_total) or peak_total <= 0:
        return math.nan
    return float(tokens_per_s) * float(flops_per_token) / float(peak_total)


@functools.cache
def _measured_matmul_flops(
    device: jax.Device, dtype: str, size: int, max_repeats: int, budget_s: float
) -> float:
    a = jax.device_put(jax.random.normal(jax.random.key(0), (size, size), dtype), device)
    b = jax.device_put(jax.random.normal(jax.random.key(1), (size, size), dtype), device)
    matmul = jax.jit(jnp.matmul)
    jax.block_until_ready(matmul(a, b))  # compile + warm-up
    best = math.inf
    spent = 0.0
    for repeat in range(max_repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, b))
        elapsed = time.perf_counter() - start
        best = min(best, elapsed)
        spent += elapsed
        if repeat >= 1 and spent > budget_s:  # a slow host: two repeats are enough
            break
    return 2 * size**3 / best


def measure_matmul_flops(
    device: jax.Device | None = None,
    dtype: str = "float32",
    *,
    size: int = 2048,
    max_repeats: int = 5,
    budget_s: float = 1.0,
) -> float:
    """Dense-matmul FLOP/s of `device` (default `jax.devices()[0]`): best of a few repeats of a
    jitted `size`x`size` matmul in `dtype`, compilation excluded. Cached per process.

    On the CPU one XLA device runs its matmul on the host's whole intra-op thread pool, so this is
    the rate of the host, however many virtual CPU devices share it.
    """
    device = jax.devices()[0] if device is None else device
    return _measured_matmul_flops(device, str(jnp.dtype(dtype)), size, max_repeats, budget_s)


def device_peak_flops(
    device: jax.Device | None = None, measured_cpu_dtype: str = "float32"
) -> tuple[float | None, str]:
    """(peak FLOP/s of one device, where the number comes from).

    - Known accelerators: the `PEAK_FLOPS` dense bf16 table entry for `device.device_kind`.
    - CPU: the measured dense-matmul rate of the host (`measure_matmul_flops` in
      `measured_cpu_dtype`) divided by the number of local CPU devices, since virtual CPU devices
      (`--xla_force_host_platform_device_count`) share the same cores; summing over the devices
      (`total_peak_flops`) gives the host rate back. Several processes on one host would each
      count the whole host: CPU MFU is only meaningful for one process.
    - Anything else: None, and a description saying so (`mfu` then gives NaN).
    """
    device = jax.devices()[0] if device is None else device
    kind = device.device_kind
    if device.platform == "cpu":
        host_rate = measure_matmul_flops(device, measured_cpu_dtype)
        n_cpu = sum(1 for d in jax.local_devices(backend="cpu"))
        return host_rate / n_cpu, (
            f"cpu: measured {host_rate:.3g} FLOP/s dense {measured_cpu_dtype} matmul for the host,"
            f" shared by {n_cpu} local CPU device(s)"
        )
    key = peak_table_key(kind)
    if key is None:
        return None, (
            f"{device.platform} device kind {kind!r} is not in the peak table "
            "(illada_jax.obs.flops.PEAK_FLOPS): MFU is reported as NaN"
        )
    return PEAK_FLOPS[key], f"{kind}: {PEAK_FLOPS[key]:.4g} FLOP/s dense bf16 peak ({key}, table)"


def total_peak_flops(
    devices: list[jax.Device] | None = None, measured_cpu_dtype: str = "float32"
) -> tuple[float | None, str]:
    """(summed peak FLOP/s of `devices` (default: all devices of the job), description).

    Assumes one kind of device, as a JAX job has; the peak of the first is multiplied by the count.
    """
    devices = jax.devices() if devices is None else list(devices)
    peak, source = device_peak_flops(devices[0], measured_cpu_dtype)
    if peak is None:
        return None, source
    return peak * len(devices), f"{len(devices)} x {source}"
