"""Sampling speed of the `small` preset: the baseline sampler and Fast-dLLM decoding.

    python bench/sample.py [--checkpoint RUN_DIR] [--preset small] [--prompt-len 64]
                           [--gen-length 256] [--block 32] [--threshold 0.9] [--batch 1]
                           [--json out.json]

(a) Fixed canvas, pure diffusion, one token per step (G = N = K = gen length): tokens/s, and the
    sampler's overhead over the bare forward time × steps, where the bare forward is the model
    computation one step needs (hidden states over the canvas, head on the generated region),
    jitted and timed alone.
(b) Dual K/V cache (prefix and suffix, docs/algorithms.md#caches-and-parallel-decoding) with
confidence-threshold parallel decoding,
    semi-AR blocks of `--block`: speed-up over (a) and the fraction of generated tokens equal to
    (a)'s.

Without `--checkpoint` the model is randomly initialised: speeds are meaningful, agreement and
parallelism are not (an untrained model is never confident, so (b) commits one token per pass).
With a trained run the prompt is the start of a held-out document of the embedded corpus.
Final line `RESULT tokens_per_s=<float> overhead=<float> cache_speedup=<float>
agreement=<float>`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time


def _time(fn, repeats: int) -> float:
    fn()  # compile + warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--gen-length", type=int, default=256)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    import illada_jax
    from illada_jax.config.presets import MODEL_PRESETS
    from illada_jax.config.schema import ModelConfig
    from illada_jax.model.transformer import Transformer
    from illada_jax.sampling.generate import SamplingOptions, generate

    if args.checkpoint:
        model = illada_jax.load(args.checkpoint)
        from illada_jax.data.corpus import embedded_documents

        text = next(embedded_documents("heldout")).text
        prompt = np.asarray(model.tokenizer.encode(text)[: args.prompt_len], np.int32)
        source = f"checkpoint {args.checkpoint} (step {model.step})"
    else:
        cfg = dataclasses.replace(
            ModelConfig(**MODEL_PRESETS[args.preset]),
            max_seq_len=args.prompt_len + args.gen_length,
        )
        model = illada_jax.Model.from_module(Transformer(cfg, rngs=nnx.Rngs(0)))
        prompt = np.random.default_rng(0).integers(10, cfg.vocab_size, args.prompt_len)
        source = f"random {args.preset}"
    prompts = np.tile(prompt[None].astype(np.int32), (args.batch, 1))
    g = args.gen_length
    graphdef, params, ids = model.graphdef, model.params, model.special_ids

    baseline = SamplingOptions(gen_length=g, steps=g, block_length=g)
    fast = SamplingOptions(gen_length=g, steps=g // args.block, block_length=args.block,
                           threshold=args.threshold, cache="dual")  # fmt: skip

    outputs = {}

    def run(name, opts):
        def call():
            outputs[name] = generate(graphdef, params, ids, prompts, opts)

        return call

    base_s = _time(run("base", baseline), args.repeats)
    fast_s = _time(run("fast", fast), args.repeats)

    canvas = jnp.asarray(outputs["base"])
    key_mask = jnp.ones(canvas.shape, bool)

    @jax.jit
    def bare_forward(params, canvas, key_mask):
        net = nnx.merge(graphdef, params)
        hidden = net.hidden_states(canvas, key_mask=key_mask)
        return net.project(hidden[:, args.prompt_len :])

    forward_s = _time(lambda: jax.block_until_ready(bare_forward(params, canvas, key_mask)),
                      max(args.repeats, 5))  # fmt: skip

    p = args.prompt_len
    agreement = float(np.mean(outputs["base"][:, p:] == outputs["fast"][:, p:]))
    tokens = args.batch * g
    results = {
        "model": source,
        "device": jax.devices()[0].device_kind,
        "batch": args.batch,
        "prompt_len": p,
        "gen_length": g,
        "baseline_s": base_s,
        "tokens_per_s": tokens / base_s,
        "forward_s": forward_s,
        "overhead": base_s / (g * forward_s) - 1.0,
        "fast_s": fast_s,
        "fast_tokens_per_s": tokens / fast_s,
        "cache_speedup": base_s / fast_s,
        "agreement": agreement,
    }
    for key, value in results.items():
        print(f"{key:<18} {value:.4g}" if isinstance(value, float) else f"{key:<18} {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    print(
        f"RESULT tokens_per_s={results['tokens_per_s']:.6g} overhead={results['overhead']:.4f} "
        f"cache_speedup={results['cache_speedup']:.4g} agreement={agreement:.4f}"
    )


if __name__ == "__main__":
    main()
