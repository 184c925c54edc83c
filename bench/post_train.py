"""Post-training on the CPU demo: does preference optimisation (VRPO) learn the demo preference,
how much do its variance reductions cut the variance of its preference score, and does online
RL (diffu-GRPO) raise the demo task's held-out reward?

    python bench/post_train.py [--workdir DIR] [--reuse] [--config DIRECTIVE ...]
                               [--grpo-config DIRECTIVE ...] [--pairs 64] [--draws 100]
                               [--samples 4] [--json out.json]

In `--workdir` (default: a temporary directory, removed afterwards) it runs the recipes'
commands as a user would, each timed: `illada prepare --format pref --input demo` (held out
0.2), `illada prepare --format rl --input demo` (held out 0.1), `illada train` (the
quickstart), `illada train --config=config:tiny_sft_llada`, `illada train
--config=config:tiny_vrpo` and `illada train --config=config:tiny_grpo`, each train command with
the `--config` directives given here appended (e.g. a shorter run; `--grpo-config` ones go to
the GRPO run only, after them). With `--reuse`, runs already in `--workdir` are kept.

Measured:
- `vrpo_heldout_accuracy`: the held-out preference accuracy of the final VRPO model, as
  `illada eval` reports it (`train.eval_batches` batches of the held-out pairs, fixed keys):
  pairs whose chosen answer gains more ELBO over the reference than the rejected one (0.5 at the
  start, where policy and reference are the same model; the contract: >= 0.9);
  `vrpo_likelihood_accuracy_start` / `_end`: pairs whose chosen answer the model itself gives
  the higher ELBO, the SFT model's and the final model's;
- `vrpo_variance_reduction`: on `--pairs` held-out pairs, the variance over `--draws` keys of
  the preference score (B_θ(w) - B_ref(w)) - (B_θ(l) - B_ref(l)) with independent draws, divided
  by its variance with stratified counts and antithetic draws, at the same budget (`--samples`
  draws per answer), averaged over pairs; for the policy at its first kept checkpoint (step 25)
  and at the end (`_end`) (the contract: >= 4);
- `vrpo_train_seconds`: the VRPO run, compile included;
- `grpo_reward_start` / `grpo_reward_end` / `grpo_reward_gain`: the GRPO run's held-out reward
  (`eval_reward_mean`: `grpo.group_size` completions of each held-out prompt, fixed keys, the
  rollouts' sampler) at step 0 (the SFT model) and at the end, and their difference (the
  contract: >= 0.2, or the end >= 2x the start);
- `grpo_step_s`: seconds per GRPO step, rollouts included (the median over the logged windows
  of rows x seq_len / tokens_per_s), and `sampling_share`: the fraction of it spent sampling
  (`sample_s` per step over `grpo_step_s`); `grpo_train_seconds`: the GRPO run, compile and
  held-out evaluations included.

Prints each command and the last lines of its log, then `RESULT vrpo_heldout_accuracy=...
vrpo_variance_reduction=... vrpo_variance_reduction_end=... vrpo_likelihood_accuracy_start=...
vrpo_likelihood_accuracy_end=... vrpo_train_seconds=... grpo_reward_start=... grpo_reward_end=...
grpo_reward_gain=... grpo_step_s=... sampling_share=... grpo_train_seconds=...`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

COMMANDS = [
    ("data/pref", ["prepare", "--format", "pref", "--input", "demo", "--tokenizer",
                   "shipped:sp1k", "--heldout-fraction", "0.2", "--output", "data/pref"]),
    ("runs/tiny", ["train"]),
    ("runs/tiny-sft-llada", ["train", "--config=config:tiny_sft_llada",
                             "--workdir=runs/tiny-sft-llada"]),
    ("runs/tiny-vrpo", ["train", "--config=config:tiny_vrpo", "--workdir=runs/tiny-vrpo"]),
    ("data/rl", ["prepare", "--format", "rl", "--input", "demo", "--tokenizer", "shipped:sp1k",
                 "--heldout-fraction", "0.1", "--output", "data/rl"]),
    ("runs/tiny-grpo", ["train", "--config=config:tiny_grpo", "--workdir=runs/tiny-grpo"]),
]  # fmt: skip


def run_commands(workdir: pathlib.Path, reuse: bool, directives: list[str],
                 grpo_directives: list[str]) -> dict[str, float]:  # fmt: skip
    seconds = {}
    for output, args in COMMANDS:
        if args[0] == "train":
            extra = [*directives, *(grpo_directives if output == "runs/tiny-grpo" else ())]
            args = [*args, *(f"--config={d}" for d in extra)]
        if reuse and (workdir / output).exists():
            print(f"reusing {output}")
            continue
        print("$ illada " + " ".join(args), flush=True)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "illada_jax.cli", *args], cwd=workdir,
                                capture_output=True, text=True)  # fmt: skip
        seconds[output] = time.perf_counter() - start
        print("\n".join(result.stdout.splitlines()[-6:]))
        if result.returncode:
            sys.exit(f"failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return seconds


def _models(workdir: pathlib.Path, step: int | None):
    """(policy Model, reference Model, [policy, reference] as nnx modules)."""
    from flax import nnx

    import illada_jax

    run = workdir / "runs/tiny-vrpo"
    policy = illada_jax.load(run / "checkpoints" / str(step) if step else run)
    reference = illada_jax.load(workdir / "runs/tiny-sft-llada")
    return policy, reference, [nnx.merge(m.graphdef, m.params) for m in (policy, reference)]


def held_out(workdir: pathlib.Path) -> dict:
    """{"final": the final model's held-out preference record (what `illada eval` prints),
    "start": the same measure with the SFT model as both policy and reference}."""
    import functools

    import jax.numpy as jnp

    from illada_jax.eval.heldout import _preference, heldout_bound
    from illada_jax.train.builder import make_pipeline
    from illada_jax.train.evaluate import EVAL_SEED, heldout_preference

    policy, reference, _ = _models(workdir, None)
    final = heldout_bound(policy, checkpoint=workdir / "runs/tiny-vrpo")
    experiment = policy.experiment  # the VRPO run's held-out data, batch shape and settings
    pipeline = make_pipeline(experiment, dataset=experiment.train.eval_dataset, seed=EVAL_SEED)
    step = functools.partial(_preference, reference.graphdef, experiment.vrpo,
                             experiment.diffusion.loss_chunk_size)  # fmt: skip
    start = heldout_preference(step, (reference.params, reference.params), pipeline,
                               experiment.train.eval_batches,
                               put=lambda local: {k: jnp.asarray(v) for k, v in local.items()})  # fmt: skip
    return {"final": final, "start": start}


def variance_reduction(workdir: pathlib.Path, step: int | None, pairs: int, draws: int,
                       samples: int) -> float:  # fmt: skip
    """Mean over held-out pairs of var(score | independent) / var(score | stratified+antithetic)."""
    import jax
    import numpy as np

    from illada_jax.config.post_training import VrpoConfig
    from illada_jax.data.pipeline.preference import PreferencePipeline
    from illada_jax.train.objective import preference_elbos

    policy, _, models = _models(workdir, step)
    seq_len = policy.experiment.train.seq_len
    held = str(workdir / "data/pref-heldout")
    batch = PreferencePipeline(held, seq_len, pairs, 0).process_batch(0)

    def scores(cfg):
        @jax.jit
        def one(key):
            elbos = preference_elbos(*models, batch, key, cfg, 512)
            (pw, rw, *_), (pl, rl, *_) = elbos["chosen"], elbos["rejected"]
            return (pw - rw) - (pl - rl)

        return np.stack([np.asarray(one(jax.random.key(k))) for k in range(draws)])

    reduced = scores(VrpoConfig(samples=samples, stratified=True, antithetic=True)).var(0)
    independent = scores(VrpoConfig(samples=samples, stratified=False, antithetic=False)).var(0)
    return float(np.mean(independent / np.maximum(reduced, 1e-12)))


def grpo_measures(workdir: pathlib.Path) -> dict[str, float]:
    """The GRPO run's held-out rewards and step timings, read from its metrics.jsonl."""
    import numpy as np

    run = workdir / "runs/tiny-grpo"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((run / "config.json").read_text())
    held = [r for r in records if "eval_reward_mean" in r]
    logged = [r for r in records if "sample_s" in r and r.get("tokens_per_s")]
    rows = config["train"]["batch_size"] * config["train"]["seq_len"]
    step_s = float(np.median([rows / r["tokens_per_s"] for r in logged]))
    sample_s = float(np.median([r["sample_s"] for r in logged]))
    start, end = held[0]["eval_reward_mean"], held[-1]["eval_reward_mean"]
    return {"grpo_reward_start": start, "grpo_reward_end": end, "grpo_reward_gain": end - start,
            "grpo_step_s": step_s, "sampling_share": sample_s / step_s}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=pathlib.Path, default=None)
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--config", action="append", default=[], metavar="DIRECTIVE",
                        help="appended to every train command as --config=DIRECTIVE")  # fmt: skip
    parser.add_argument("--grpo-config", action="append", default=[], metavar="DIRECTIVE",
                        help="appended to the GRPO train command only, after --config")  # fmt: skip
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args()
    temporary = None
    if args.workdir is None:
        temporary = tempfile.TemporaryDirectory(prefix="illada-post-")
        args.workdir = pathlib.Path(temporary.name)
    args.workdir = args.workdir.resolve()  # the bench changes into it below
    args.workdir.mkdir(parents=True, exist_ok=True)
    seconds = run_commands(args.workdir, args.reuse, args.config, args.grpo_config)
    os.chdir(args.workdir)  # the runs name their data relative to it, as the commands did
    held = held_out(args.workdir)
    kept = sorted(int(p.name) for p in (args.workdir / "runs/tiny-vrpo/checkpoints").iterdir()
                  if p.name.isdigit())  # fmt: skip
    result = {
        "vrpo_heldout_accuracy": held["final"]["eval_pref_accuracy"],
        "vrpo_variance_reduction": variance_reduction(
            args.workdir, kept[0], args.pairs, args.draws, args.samples
        ),  # fmt: skip
        "vrpo_variance_reduction_end": variance_reduction(
            args.workdir, None, args.pairs, args.draws, args.samples
        ),  # fmt: skip
        "vrpo_likelihood_accuracy_start": held["start"]["eval_likelihood_accuracy"],
        "vrpo_likelihood_accuracy_end": held["final"]["eval_likelihood_accuracy"],
        "vrpo_train_seconds": seconds.get("runs/tiny-vrpo", float("nan")),
        **grpo_measures(args.workdir),
        "grpo_train_seconds": seconds.get("runs/tiny-grpo", float("nan")),
    }
    print(f"held-out pairs: {held['final']['eval_pairs']:.0f}; policy at step {kept[0]} for "
          "the variance")  # fmt: skip
    print("RESULT " + " ".join(f"{k}={v:.4g}" for k, v in result.items()))
    if args.json:
        args.json.write_text(json.dumps({**result, "seconds": seconds}, indent=2))
    if temporary is not None:
        temporary.cleanup()


if __name__ == "__main__":
    main()
