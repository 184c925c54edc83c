"""Forward / forward+backward throughput of the `small` preset and compile time vs depth.

    python bench/forward.py [--batch 4] [--seq 512] [--repeats 5] [--json out.json]

Measures, in one process (absolute CPU timings are noisy; compare ratios):
- dense fp32 matmul FLOP/s (jitted 2048x2048, the machine's practical peak);
- `small` forward (logits) and forward+backward (the pre-training objective with chunked CE) at
  sequence 512: tokens/s, achieved FLOP/s (docs/architecture.md#flops model: 2N + 4·n_layers·d·S per
  token forward, 6N + 12·n_layers·d·S for forward+backward, N = matmul parameters incl. the output
  head) and the ratio to the measured matmul FLOP/s;
- compile time of the forward+backward of a `llada_1b`-shaped model at 4 and 32 layers (lowered
  from abstract shapes, nothing allocated): with scan over layers the 32-layer compile must stay
  within 1.5x of the 4-layer one.
Prints a table and a final line
`RESULT fwd_bwd_tokens_per_s=... fwd_bwd_matmul_fraction=... compile_s_4_layers=...
compile_s_32_layers=...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from illada_jax.config.presets import MODEL_PRESETS
from illada_jax.config.schema import DiffusionConfig, ModelConfig
from illada_jax.model.transformer import Transformer, abstract_model, count_params
from illada_jax.train.objective import diffusion_loss

DIFFUSION = DiffusionConfig(random_length_mode="none")


def timed(fn, *args, repeats: int) -> float:
    """Median wall time of `fn(*args)` after one warm-up call (compilation excluded)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_flops_per_s(size: int = 2048, repeats: int = 10) -> float:
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    seconds = timed(jax.jit(jnp.matmul), a, b, repeats=repeats)
    return 2 * size**3 / seconds


def flops_per_token(cfg: ModelConfig, seq_len: int) -> tuple[float, float]:
    """(forward, forward+backward) FLOPs per token, docs/architecture.md#flops (no causal
    halving)."""
    _, non_embedding = count_params(cfg)
    matmul_params = non_embedding + cfg.vocab_size * cfg.d_model  # trunk + output head
    attention = 4 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
    return 2 * matmul_params + attention, 6 * matmul_params + 3 * attention


def throughput(batch: int, seq: int, repeats: int, peak: float) -> dict:
    cfg = ModelConfig(**MODEL_PRESETS["small"])
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    tokens = jax.random.randint(jax.random.key(2), (batch, seq), 5, cfg.vocab_size, jnp.int32)
    key = jax.random.key(3)

    forward = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))

    @jax.jit
    def forward_backward(p, t, k):
        return jax.value_and_grad(
            lambda p: diffusion_loss(nnx.merge(graphdef, p), {"tokens": t}, k, DIFFUSION)[0]
        )(p)

    fwd_s = timed(forward, params, tokens, repeats=repeats)
    bwd_s = timed(forward_backward, params, tokens, key, repeats=repeats)
    fwd_flops, train_flops = flops_per_token(cfg, seq)
    n_tokens = batch * seq
    return {
        "fwd_tokens_per_s": n_tokens / fwd_s,
        "fwd_flops_per_s": n_tokens * fwd_flops / fwd_s,
        "fwd_matmul_fraction": n_tokens * fwd_flops / fwd_s / peak,
        "fwd_bwd_tokens_per_s": n_tokens / bwd_s,
        "fwd_bwd_flops_per_s": n_tokens * train_flops / bwd_s,
        "fwd_bwd_matmul_fraction": n_tokens * train_flops / bwd_s / peak,
    }


def compile_seconds(n_layers: int, seq: int = 512) -> float:
    """Lower + compile the forward+backward of a llada_1b-shaped model from abstract shapes."""
    cfg = dataclasses.replace(
        ModelConfig(**MODEL_PRESETS["llada_1b"]), n_layers=n_layers, max_seq_len=seq
    )
    graphdef, abstract_params = nnx.split(abstract_model(cfg))
    tokens = jax.ShapeDtypeStruct((1, seq), jnp.int32)
    key = jax.eval_shape(lambda: jax.random.key(0))

    def loss(p, t, k):
        return diffusion_loss(nnx.merge(graphdef, p), {"tokens": t}, k, DIFFUSION)[0]

    start = time.perf_counter()
    jax.jit(jax.value_and_grad(loss)).lower(abstract_params, tokens, key).compile()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()

    # Matmul peak measured before and after; the best of both resists a noisy neighbour.
    peak_before = matmul_flops_per_s()
    measured = throughput(args.batch, args.seq, args.repeats, 1.0)
    peak = max(peak_before, matmul_flops_per_s())
    for name in ("fwd_matmul_fraction", "fwd_bwd_matmul_fraction"):
        measured[name] /= peak
    results = {"device": str(jax.devices()[0]), "matmul_flops_per_s": peak, **measured}
    results["compile_s_4_layers"] = compile_seconds(4)
    results["compile_s_32_layers"] = compile_seconds(32)
    results["compile_ratio_32_over_4"] = (
        results["compile_s_32_layers"] / results["compile_s_4_layers"]
    )
    for name, value in results.items():
        print(f"{name:<28} {value:.4g}" if isinstance(value, float) else f"{name:<28} {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    print(
        "RESULT "
        + " ".join(
            f"{k}={results[k]:.6g}"
            for k in (
                "fwd_bwd_tokens_per_s",
                "fwd_bwd_matmul_fraction",
                "compile_s_4_layers",
                "compile_s_32_layers",
            )
        )
    )


if __name__ == "__main__":
    from illada_jax.cli._quiet import quiet_startup

    quiet_startup()  # before JAX starts a backend: no libtpu / absl start-up lines on CPU hosts
    main()
