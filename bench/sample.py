"""Sampling speed of the `small` preset: the baseline sampler against the hardware, and Fast-dLLM
decoding (dual cache + confidence threshold) on a trained model.

    python bench/sample.py [--checkpoint RUN_DIR | --train-steps 200 | --random]
                           [--train-batch 8] [--train-dir DIR] [--preset small] [--prompt-len 64]
                           [--gen-length 256] [--block 32] [--threshold 0.9] [--batch 1]
                           [--mc 32] [--repeats 3] [--json out.json]

The model: `--checkpoint` (a run directory), else `config:<preset>` trained here for
`--train-steps` of `--train-batch` sequences of prompt+gen length on the embedded corpus
(`illada train` in a subprocess, about 15 minutes for `small` on 2 CPU cores; the run is kept
in `--train-dir` and can be reused with `--checkpoint`), or `--random` (random weights: speeds
only; an untrained model is never confident, so threshold decoding commits one token per pass). The prompt is the start of a held-out document of the
embedded corpus (random tokens with `--random`).

(a) Baseline: fixed canvas, pure diffusion, one token per step (G = N = K = gen length).
    `forward_efficiency` = the model FLOPs of one sampler step (layers over the whole canvas,
    head on the block: `obs.flops.sampler_forward_flops`) / (seconds per step × the peak: on a
    CPU the same process's measured fp32 dense-matmul rate, else the device's bf16 peak). Also
    the bare forward (the same computation jitted alone) and the sampler's overhead over it.
(b) Dual K/V cache (docs/algorithms.md#caches-and-parallel-decoding) with threshold decoding in
    semi-AR blocks of `--block`: `cache_speedup` over (a), `agreement` (the fraction of generated
    tokens equal to (a)'s), and the MC ELBO (`--mc` samples) of both outputs and of the held-out
    document's true continuation under the same model, as `nll_bound_*` (nats per generated
    token, an upper bound on the NLL): parallel decoding that hurt the text would show as a
    higher bound than the baseline's.

Final line `RESULT tokens_per_s=<float> forward_efficiency=<float> overhead=<float>
cache_speedup=<float> agreement=<float>`.

`--block-diffusion` (random weights of `--preset`: speeds only) instead times the sampler of a
block-diffusion model (docs/algorithms.md#sampling-a-block-diffusion-model) against the masked-
diffusion baseline at the same setting: `--gen-length` tokens after a `--prompt-len` prompt, in
blocks of `--block`, one token committed per step. The baseline runs the whole canvas at every
step (semi-autoregressive blocks, `sampling/generate.py`); block diffusion runs only the block
against its exact K/V cache of the committed blocks; `recompute` is the same block sampler with
the cache off (the whole canvas under the block-causal mask at every step). Final line
`RESULT block_tokens_per_s=<float> baseline_tokens_per_s=<float> block_speedup=<float>
recompute_tokens_per_s=<float>`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time


def _time(fn, repeats: int) -> float:
    fn()  # compile + warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_model(preset: str, steps: int, batch: int, seq_len: int, workdir: pathlib.Path) -> None:
    """`illada train` of `config:<preset>` for `steps` at `seq_len` (a subprocess, so this
    process's devices stay as they are)."""
    directives = [
        f"config:{preset}", f"set:train.steps={steps}", f"set:train.seq_len={seq_len}",
        f"set:train.batch_size={batch}", f"set:optim.warmup_steps={max(1, min(20, steps // 5))}",
        "set:train.log_every=50",
        f"set:checkpoint.every={steps}", "set:train.sample_prompts=()",
    ]  # fmt: skip
    command = [sys.executable, "-m", "illada_jax.cli", "train", f"--workdir={workdir}"]
    command += [f"--config={d}" for d in directives]
    print("training:", " ".join(command), flush=True)
    if subprocess.run(command).returncode:
        raise SystemExit(f"training the {preset} model failed (its error is above)")


def heldout_prompt(tokenizer, prompt_len: int, gen_length: int):
    """(prompt ids, the true continuation's ids) from the first held-out document of the
    embedded corpus long enough for both."""
    import numpy as np

    from illada_jax.data.sources.corpus import embedded_documents

    for doc in embedded_documents("heldout"):
        ids = tokenizer.encode(doc.text)
        if len(ids) >= prompt_len + gen_length:
            ids = np.asarray(ids, np.int32)
            return ids[:prompt_len], ids[prompt_len : prompt_len + gen_length]
    raise SystemExit(f"no held-out document has {prompt_len + gen_length} tokens")


def load_model(args):
    """(Model, prompt [P] int32, true continuation [G] or None, description)."""
    import dataclasses

    import numpy as np
    from flax import nnx

    import illada_jax
    from illada_jax.config.presets import MODEL_PRESETS
    from illada_jax.config.schema import ModelConfig
    from illada_jax.model.transformer import Transformer

    if args.random:
        cfg = dataclasses.replace(
            ModelConfig(**MODEL_PRESETS[args.preset]),
            max_seq_len=args.prompt_len + args.gen_length,
        )
        model = illada_jax.Model.from_module(Transformer(cfg, rngs=nnx.Rngs(0)))
        prompt = np.random.default_rng(0).integers(10, cfg.vocab_size, args.prompt_len)
        return model, prompt.astype(np.int32), None, f"random {args.preset}"
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = args.train_dir or tempfile.mkdtemp(prefix="bench-sample-")
        train_model(args.preset, args.train_steps, args.train_batch,
                    args.prompt_len + args.gen_length, pathlib.Path(checkpoint))  # fmt: skip
        print(f"trained run kept in {checkpoint} (reuse: --checkpoint {checkpoint})")
    model = illada_jax.load(checkpoint)
    prompt, truth = heldout_prompt(model.tokenizer, args.prompt_len, args.gen_length)
    return model, prompt, truth, f"checkpoint {checkpoint} (step {model.step})"


def block_diffusion_bench(args) -> None:
    """`--block-diffusion`: tokens/s of cached block sampling, recomputation and the baseline."""
    import numpy as np

    from illada_jax.sampling.blockwise import generate_blocks
    from illada_jax.sampling.generate import SamplingOptions, generate

    model, prompt, _, source_text = load_model(args)
    prompts = np.tile(prompt, (args.batch, 1))
    ids, g, k = model.special_ids, args.gen_length, args.block
    baseline_opts = SamplingOptions(gen_length=g, steps=g, block_length=k)
    block_opts = SamplingOptions(gen_length=g, steps=k, block_length=k)

    def baseline():
        return generate(model.graphdef, model.params, ids, prompts, baseline_opts)

    def blocks(cached: bool):
        result = generate_blocks(model.graphdef, model.params, ids, prompts, block_opts,
                                 block_size=k, max_seq_len=args.prompt_len + g, cached=cached)  # fmt: skip
        assert result.ids.shape[1] == args.prompt_len + g  # no stop ids: every block decoded
        return result

    tokens = args.batch * g
    seconds = {
        "baseline": _time(baseline, args.repeats),
        "block": _time(lambda: blocks(True), args.repeats),
        "recompute": _time(lambda: blocks(False), args.repeats),
    }
    results = {f"{name}_tokens_per_s": tokens / s for name, s in seconds.items()}
    results["block_speedup"] = seconds["baseline"] / seconds["block"]
    results.update(model=source_text, gen_length=g, block=k, prompt_len=args.prompt_len,
                   batch=args.batch, seconds=seconds)  # fmt: skip
    print(json.dumps(results, indent=2))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
    print("RESULT " + " ".join(f"{name}={results[name]:.4g}" for name in (
        "block_tokens_per_s", "baseline_tokens_per_s", "block_speedup",
        "recompute_tokens_per_s")))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", default=None, help="a trained run directory")
    source.add_argument("--random", action="store_true", help="random weights (speeds only)")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-dir", default=None, help="where to keep the trained run")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--gen-length", type=int, default=256)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--mc", type=int, default=32, help="MC samples of each ELBO")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("--block-diffusion", action="store_true",
                        help="time block-diffusion sampling against the baseline (random weights)")  # fmt: skip
    args = parser.parse_args()
    if args.gen_length % args.block:
        parser.error(f"--gen-length {args.gen_length} must be a multiple of --block {args.block}")
    if args.block_diffusion:
        if args.prompt_len % args.block:
            parser.error(f"--prompt-len {args.prompt_len} must be a multiple of --block")
        args.random = True
        return block_diffusion_bench(args)

    model, prompt, truth, source_text = load_model(args)

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from illada_jax.obs import flops
    from illada_jax.sampling.generate import SamplingOptions, generate

    cfg = model.config
    prompts = np.tile(prompt[None], (args.batch, 1))
    g, p = args.gen_length, args.prompt_len
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
        return net.project(hidden[:, p:])

    forward_s = _time(lambda: jax.block_until_ready(bare_forward(params, canvas, key_mask)),
                      max(args.repeats, 5))  # fmt: skip

    device = jax.devices()[0]
    if device.platform == "cpu":
        peak = flops.measure_matmul_flops(device, "float32")
        peak_source = f"measured fp32 matmul {peak:.3g} FLOP/s"
    else:
        peak, peak_source = flops.device_peak_flops(device)
    step_flops = args.batch * flops.sampler_forward_flops(cfg, p + g, g)
    efficiency = step_flops / ((base_s / g) * peak) if peak else float("nan")

    results = {
        "model": source_text,
        "device": device.device_kind,
        "batch": args.batch,
        "prompt_len": p,
        "gen_length": g,
        "baseline_s": base_s,
        "tokens_per_s": args.batch * g / base_s,
        "step_ms": 1e3 * base_s / g,
        "forward_ms": 1e3 * forward_s,
        "step_gflop": step_flops / 1e9,
        "peak": peak_source,
        "forward_efficiency": efficiency,
        "bare_forward_efficiency": step_flops / (forward_s * peak) if peak else float("nan"),
        "overhead": base_s / (g * forward_s) - 1.0,
        "fast_s": fast_s,
        "fast_tokens_per_s": args.batch * g / fast_s,
        "cache_speedup": base_s / fast_s,
        "agreement": float(np.mean(outputs["base"][:, p:] == outputs["fast"][:, p:])),
    }
    if truth is not None and args.mc:
        scored = {"baseline": outputs["base"][0, p:], "fast": outputs["fast"][0, p:],
                  "heldout_text": truth}  # fmt: skip
        for name, answer in scored.items():
            nll = model.log_likelihood(prompt, answer, mc_num=args.mc, batch_size=args.mc)
            # log_likelihood is the ELBO (<= log p); its negation per token bounds the NLL.
            results[f"nll_bound_{name}"] = -nll / len(answer)
        results["sample_baseline"] = model.tokenizer.decode(list(outputs["base"][0, p:]))[:200]
        results["sample_fast"] = model.tokenizer.decode(list(outputs["fast"][0, p:]))[:200]
    for key, value in results.items():
        print(f"{key:<24} {value:.4g}" if isinstance(value, float) else f"{key:<24} {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    print(
        f"RESULT tokens_per_s={results['tokens_per_s']:.6g} "
        f"forward_efficiency={efficiency:.4f} overhead={results['overhead']:.4f} "
        f"cache_speedup={results['cache_speedup']:.4g} agreement={results['agreement']:.4f}"
    )


if __name__ == "__main__":
    from illada_jax.cli._quiet import quiet_startup

    quiet_startup()  # before JAX starts a backend: no libtpu / absl start-up lines on CPU hosts
    main()
