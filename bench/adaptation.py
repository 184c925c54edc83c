"""Adapting an autoregressive model, measured on the CPU demo (docs/algorithms.md#adapting-an-
autoregressive-model), and SMDM's comparison of masked diffusion with an autoregressive model at
equal training FLOPs.

    python bench/adaptation.py [--workdir DIR] [--config DIRECTIVE ...] [--json FILE]

Three `illada train` runs (subprocesses, the recipes as documented, `--config` directives
appended to each), kept in `--workdir` (default: a temporary directory):
1. `tiny`: masked diffusion from scratch (the quickstart), its held-out bound every 250 steps;
2. `tiny_ar`: the autoregressive baseline, same model, data, batch and steps;
3. `tiny_ar_to_dlm`: run 2's parameters adapted with the block-size schedule (blocks of 1, 4,
   16, then the whole window), evaluated every 125 steps.

`adapted_steps_to_match`: the first evaluation step of run 3 whose held-out bound is at or below
run 1's final bound (None: never within its steps); `adapted_step_fraction` that step over run
1's steps (the issue's target: at most 0.5). The AR step and the diffusion step cost the same
model FLOPs per token here (`obs.flops`: dense attention in both), so runs 1 and 2 are the
equal-FLOPs comparison: `ar_final_nll` (the exact held-out NLL) next to `scratch_final_bound`
(an upper bound on the diffusion model's NLL), both nats per token on the same held-out windows.

Final line `RESULT scratch_final_bound=<float> ar_final_nll=<float> adapted_final_bound=<float>
adapted_steps_to_match=<int|None> adapted_step_fraction=<float|None>`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile


def train(recipe: str, workdir: pathlib.Path, directives: list[str]) -> list[dict]:
    """`illada train --config=config:<recipe>` into `workdir`; its metrics.jsonl records."""
    command = [sys.executable, "-m", "illada_jax.cli", "train", f"--config=config:{recipe}",
               *[f"--config={d}" for d in directives], f"--workdir={workdir}"]  # fmt: skip
    print("running:", " ".join(command), flush=True)
    if subprocess.run(command, stdout=subprocess.DEVNULL).returncode:
        raise SystemExit(f"the {recipe} run failed (its error is above)")
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def evaluations(records: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in records if key in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="keep the three runs here")
    parser.add_argument("--config", action="append", default=[], metavar="DIRECTIVE",
                        help="a --config directive appended to every run")  # fmt: skip
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="bench-adaptation-"))
    scratch = evaluations(train("tiny", root / "tiny", args.config), "eval_nll_bound")
    ar = evaluations(train("tiny_ar", root / "tiny-ar", args.config), "eval_ar_nll")
    adapt_directives = [*args.config, f"set:checkpoint.init_from={str(root / 'tiny-ar')!r}"]
    adapted_records = train("tiny_ar_to_dlm", root / "tiny-ar-to-dlm", adapt_directives)
    adapted = evaluations(adapted_records, "eval_nll_bound")
    if not (scratch and ar and adapted):
        raise SystemExit("a run logged no held-out evaluation: give it train.eval_every > 0")
    target, scratch_steps = scratch[-1][1], scratch[-1][0]
    matched = next((step for step, bound in adapted if bound <= target), None)
    results = {
        "scratch_final_bound": target,
        "ar_final_nll": ar[-1][1],
        "adapted_final_bound": adapted[-1][1],
        "adapted_steps_to_match": matched,
        "adapted_step_fraction": None if matched is None else matched / scratch_steps,
        "scratch_steps": scratch_steps,
        "curves": {"tiny": scratch, "tiny_ar": ar, "tiny_ar_to_dlm": adapted},
        "workdir": str(root),
    }
    print(json.dumps(results, indent=2))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
    fraction = results["adapted_step_fraction"]
    print(f"RESULT scratch_final_bound={target:.4f} ar_final_nll={ar[-1][1]:.4f} "
          f"adapted_final_bound={adapted[-1][1]:.4f} adapted_steps_to_match={matched} "
          f"adapted_step_fraction={'None' if fraction is None else f'{fraction:.3f}'}")  # fmt: skip


if __name__ == "__main__":
    main()
