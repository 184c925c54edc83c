"""The three training objectives on one model and batch, timed in one run: masked diffusion
(pretrain), the autoregressive baseline (ar) and block diffusion (BD3-LM's noisy + clean canvas).

    python bench/objectives.py [--preset small] [--batch 16] [--seq 512] [--block-size 32]
                               [--steps 4] [--loop-steps 6] [--rounds 2] [--devices 0]
                               [--json FILE]

Each objective is `bench/train.py`'s variant (the runner's compiled step and its loop, on a real
batch of the embedded corpus) of `config:<preset>` with `diffusion.objective` set; the three run
interleaved in `--rounds` rounds (A B C, A B C, ...), so a change in the machine's load touches
them alike. Figures per objective: tokens/s and MFU of the loop and of the bare step (MFU with
`obs.flops.train_step_work`: block diffusion counts the noisy and the clean half). The cost of
block diffusion at equal tokens is `block_over_pretrain` = its seconds per step over masked
diffusion's (BD3-LM reports 70-85% slower for blocks shorter than the sequence); `ar_over_pretrain`
the same for the autoregressive step (the same dense attention, masked causally).

Final line `RESULT pretrain_tokens_per_s=<float> ar_tokens_per_s=<float>
block_tokens_per_s=<float> block_over_pretrain=<float> ar_over_pretrain=<float>
pretrain_mfu=<float> ar_mfu=<float> block_mfu=<float>`.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile

OBJECTIVES = ("pretrain", "ar", "block_diffusion")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--loop-steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--devices", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from illada_jax.parallel.mesh import configure_cpu_devices

    configure_cpu_devices(args.devices)  # before JAX's backends start, as `illada train` does

    import jax
    from train import Variant  # bench/train.py: the runner's step and loop, timed

    from illada_jax.obs import flops
    from illada_jax.parallel.rules import resolve

    rules = resolve("auto", jax.devices()[0].platform)
    base = argparse.Namespace(preset=args.preset, config=[], batch=args.batch, seq=args.seq,
                              rounds=args.rounds, loop_steps=args.loop_steps, remat=None,
                              loss_chunk=None, no_scan=False, no_fuse=False,
                              objective=None, block_size=args.block_size)  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        variants = {}
        for index, objective in enumerate(OBJECTIVES):
            variant_args = copy.copy(base)
            variant_args.objective = objective
            variants[objective] = Variant(variant_args, rules, "float32", f"{workdir}/{index}",
                                          log1=False)  # fmt: skip
        try:
            for variant in variants.values():
                variant.warm_up()
            for _ in range(args.rounds):
                for variant in variants.values():
                    variant.time_round(args.steps, args.loop_steps)
            for objective, variant in variants.items():
                per_token = flops.train_step_work(variant.run.experiment)[1]
                figures = variant.figures(args.batch * args.seq, per_token)
                figures["flops_per_token"] = per_token
                results[objective] = figures
        finally:
            for variant in variants.values():
                variant.close()
    seconds = {name: r["loop_step_s"] for name, r in results.items()}
    summary = {
        "pretrain_tokens_per_s": results["pretrain"]["tokens_per_s"],
        "ar_tokens_per_s": results["ar"]["tokens_per_s"],
        "block_tokens_per_s": results["block_diffusion"]["tokens_per_s"],
        "block_over_pretrain": seconds["block_diffusion"] / seconds["pretrain"],
        "ar_over_pretrain": seconds["ar"] / seconds["pretrain"],
        "pretrain_mfu": results["pretrain"]["mfu"],
        "ar_mfu": results["ar"]["mfu"],
        "block_mfu": results["block_diffusion"]["mfu"],
    }
    report = {**summary, "preset": args.preset, "batch": args.batch, "seq": args.seq,
              "block_size": args.block_size, "devices": jax.device_count(), "objectives": results}  # fmt: skip
    print(json.dumps(report, indent=2, default=str))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2, default=str)
    print("RESULT " + " ".join(f"{k}={v:.4g}" for k, v in summary.items()))


if __name__ == "__main__":
    from illada_jax.cli._quiet import quiet_startup

    quiet_startup()
    main()
