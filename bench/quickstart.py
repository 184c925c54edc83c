"""The quickstart contract: does `illada train` (the `tiny` recipe) learn enough in a few CPU
minutes to write corpus words?

    python bench/quickstart.py [--checkpoint RUN_DIR | --workdir DIR [--config DIRECTIVE ...]
                                [--fresh-cache]]
                               [--gen-length 32] [--block-length 4] [--steps 32]
                               [--temperature 0.7] [--remasking low_confidence]
                               [--seeds 0] [--json out.json]

The model: `--checkpoint` (a trained run directory), else `illada train` with no arguments
(plus any `--config` directives, e.g. `--config=set:train.steps=500`) in a subprocess into
`--workdir` (default: a temporary directory, removed afterwards), timed. `--fresh-cache` first
prepares the embedded corpus into an empty cache (`$ILLADA_CACHE` set to a temporary directory for
the training subprocess too), timed separately as `prepare_seconds`, so `prepare_seconds +
train_seconds` is what a first `illada train` costs a new user.

Measured:
- the run's last held-out bound (`eval_nll_bound` in metrics.jsonl, nats/token) and the unigram
  baseline of its tokenizer (`unigram_baseline_nats`, logged at step 0); `gap_nats` = baseline -
  bound (the contract: >= 0.4);
- samples: a continuation of `--gen-length` tokens after each of 8 fixed prompts (the Python API,
  `illada_jax.load(...).generate_text`), once per seed in `--seeds`, with the sampler flags below;
- `corpus_word_fraction`: of the generated words (`[a-z]+` runs of the lower-cased continuation,
  the prompt excluded), the fraction that occur as words (same regex) in the embedded corpus's
  training split (the contract: >= 0.8);
- `max_repeat`: the longest run of one word repeated back to back in prompt + continuation (the
  contract: <= 2).

The default sampler (semi-autoregressive blocks of 4, one token per step, temperature 0.7,
low-confidence remasking, seed 0) is the one the contract was met with: greedy decoding of a
model this small loops ("And the LORD, And the LORD, ...") or, in long blocks, repeats "the the
the"; `--temperature 0` measures greedy decoding.

With several seeds the fractions and repeats are also printed per seed (`seed N: ...` lines: a
seed is one contract measurement of 8 prompts); the RESULT line pools all seeds (the fraction over
all generated words, the longest repeat of any sample).

Prints the training command and its log, each sample, and a final line
`RESULT gap_nats=<float> corpus_word_fraction=<float> max_repeat=<int> train_seconds=<float>
prepare_seconds=<float> eval_nll_bound=<float> unigram_baseline_nats=<float>
tokens_per_s=<float> steps=<int>` (train_seconds, prepare_seconds and tokens_per_s are `nan`
with `--checkpoint`: nothing was timed; tokens_per_s is the mean of the run's logged rates).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

PROMPTS = (
    "In the beginning",
    "The LORD is my",
    "And God said",
    "To be, or not to be",
    "Thou shalt",
    "My lord,",
    "And it came to pass",
    "What is",
)
_WORD = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    """The words of `text` as the contract counts them: letters-only runs, lower-cased."""
    return _WORD.findall(text.lower())


def corpus_vocabulary() -> set[str]:
    """Every word of the embedded corpus's training split (Shakespeare + the King James Bible)."""
    from illada_jax.data.sources.corpus import embedded_documents

    vocab: set[str] = set()
    for doc in embedded_documents("train"):
        vocab.update(words(doc.text))
    return vocab


def max_repeat(tokens: list[str]) -> int:
    """The longest run of one word repeated back to back (1 = no word follows itself)."""
    best = run = 0
    for i, word in enumerate(tokens):
        run = run + 1 if i and word == tokens[i - 1] else 1
        best = max(best, run)
    return best


def read_metrics(run_dir: pathlib.Path) -> dict:
    """The last held-out bound, the unigram baseline, the last step and the mean tokens/s of a
    run's metrics.jsonl."""
    out = {"eval_nll_bound": math.nan, "unigram_baseline_nats": math.nan, "steps": 0,
           "tokens_per_s": math.nan}  # fmt: skip
    rates = []
    with (run_dir / "metrics.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            for key in ("eval_nll_bound", "unigram_baseline_nats"):
                if key in row:
                    out[key] = row[key]
            if "tokens_per_s" in row:
                rates.append(row["tokens_per_s"])
            out["steps"] = max(out["steps"], int(row.get("step", 0)))
    if rates:
        out["tokens_per_s"] = sum(rates) / len(rates)
    return out


def prepare_corpus(cache_dir: pathlib.Path, tokenizer: str) -> float:
    """Prepare the embedded corpus (train and held-out splits) into `cache_dir`; seconds."""
    from illada_jax.data.pipeline.batches import embedded_dataset_dir

    start = time.perf_counter()
    for split in ("train", "heldout"):
        embedded_dataset_dir(split, cache_dir, tokenizer=tokenizer)
    return time.perf_counter() - start


def recipe_tokenizer(directives: list[str]) -> str:
    """The tokenizer the training run will use (the `tiny` recipe's unless a directive sets
    data.tokenizer)."""
    from illada_jax.config.experiments import tiny

    tokenizer = tiny().data.tokenizer
    for directive in directives:
        if directive.startswith("set:data.tokenizer="):
            tokenizer = directive.split("=", 1)[1].strip("'\"")
    return tokenizer


def train(workdir: pathlib.Path, directives: list[str], env: dict) -> float:
    """`illada train` (the default recipe plus `directives`) into `workdir`; wall seconds."""
    command = [sys.executable, "-m", "illada_jax.cli", "train", f"--workdir={workdir}"]
    command += [f"--config={d}" for d in directives]
    print("training:", " ".join(command), flush=True)
    start = time.perf_counter()
    if subprocess.run(command, env=env).returncode:
        raise SystemExit("training failed (its error is above)")
    return time.perf_counter() - start


def sample(run_dir: pathlib.Path, args: argparse.Namespace) -> list[tuple[int, str, str]]:
    """(seed, prompt, continuation) for every prompt and seed."""
    import illada_jax

    model = illada_jax.load(run_dir)
    print(f"sampling {model!r}: gen_length {args.gen_length}, block_length {args.block_length}, "
          f"steps {args.steps}, temperature {args.temperature}, remasking {args.remasking}, "
          f"seeds {args.seeds}", flush=True)  # fmt: skip
    out = []
    for seed in args.seeds:
        texts = model.generate_text(
            list(PROMPTS), args.gen_length, steps=args.steps, block_length=args.block_length,
            temperature=args.temperature, remasking=args.remasking, seed=seed,
        )  # fmt: skip
        out += [(seed, prompt, text) for prompt, text in zip(PROMPTS, texts)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="a trained run directory (no training)")
    parser.add_argument("--workdir", default=None, help="where to train (default: a temp dir)")
    parser.add_argument("--config", action="append", default=[], metavar="DIRECTIVE",
                        help="a directive for `illada train` (repeatable)")  # fmt: skip
    parser.add_argument("--fresh-cache", action="store_true",
                        help="prepare the corpus into an empty cache first (timed)")  # fmt: skip
    parser.add_argument("--gen-length", type=int, default=32)
    parser.add_argument("--block-length", type=int, default=4)
    parser.add_argument("--steps", type=int, default=None, help="default: one per token")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--remasking", choices=["low_confidence", "random"],
                        default="low_confidence")  # fmt: skip
    parser.add_argument(
        "--seeds",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[0],
        help="comma-separated sampling seeds (matter when temperature > 0)",
    )
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.checkpoint and (args.workdir or args.config or args.fresh_cache):
        parser.error("--checkpoint samples an existing run: no --workdir/--config/--fresh-cache")

    train_seconds = prepare_seconds = math.nan
    scratch = []
    if args.checkpoint:
        run_dir = pathlib.Path(args.checkpoint)
    else:
        env = dict(os.environ)
        if args.fresh_cache:
            cache = pathlib.Path(tempfile.mkdtemp(prefix="illada-cache-"))
            scratch.append(cache)
            env["ILLADA_CACHE"] = str(cache)
            prepare_seconds = prepare_corpus(cache, recipe_tokenizer(args.config))
            print(f"prepared the embedded corpus in {prepare_seconds:.1f} s", flush=True)
        if args.workdir:
            run_dir = pathlib.Path(args.workdir)
        else:
            run_dir = pathlib.Path(tempfile.mkdtemp(prefix="illada-quickstart-")) / "run"
            scratch.append(run_dir.parent)
        train_seconds = train(run_dir, args.config, env)

    try:
        metrics = read_metrics(run_dir)
        samples = sample(run_dir, args)
    finally:
        for path in scratch:
            shutil.rmtree(path, ignore_errors=True)

    vocab = corpus_vocabulary()
    generated, longest = [], 0
    per_seed: dict[int, list] = {}  # seed -> [words in the corpus, words, longest repeat]
    for seed, prompt, text in samples:
        print(f"sample | seed {seed} | {prompt}{text}".replace("\n", " / "))
        new, run = words(text), max_repeat(words(prompt + text))
        generated += new
        longest = max(longest, run)
        counts = per_seed.setdefault(seed, [0, 0, 0])
        counts[0] += sum(w in vocab for w in new)
        counts[1] += len(new)
        counts[2] = max(counts[2], run)
    if len(per_seed) > 1:
        for seed, (hits, total, run) in per_seed.items():
            print(f"seed {seed}: corpus_word_fraction {hits / max(total, 1):.3f}, max_repeat {run}")
    in_corpus = sum(w in vocab for w in generated)
    fraction = in_corpus / len(generated) if generated else 0.0
    gap = metrics["unigram_baseline_nats"] - metrics["eval_nll_bound"]
    print(f"{len(generated)} generated words, {in_corpus} in the corpus vocabulary "
          f"({len(vocab)} words); out of it: "
          f"{sorted({w for w in generated if w not in vocab})[:30]}")  # fmt: skip
    result = {
        "gap_nats": gap, "corpus_word_fraction": fraction, "max_repeat": longest,
        "train_seconds": train_seconds, "prepare_seconds": prepare_seconds,
        "eval_nll_bound": metrics["eval_nll_bound"],
        "unigram_baseline_nats": metrics["unigram_baseline_nats"],
        "tokens_per_s": metrics["tokens_per_s"], "steps": metrics["steps"],
    }  # fmt: skip
    if args.json:
        record = dict(result, samples=[dict(seed=s, prompt=p, text=t) for s, p, t in samples],
                      sampler=dict(gen_length=args.gen_length, block_length=args.block_length,
                                   steps=args.steps, temperature=args.temperature,
                                   remasking=args.remasking, seeds=args.seeds))  # fmt: skip
        pathlib.Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    print(
        "RESULT "
        + " ".join(f"{k}={v}" if isinstance(v, int) else f"{k}={v:.4g}" for k, v in result.items())
    )


if __name__ == "__main__":
    from illada_jax.cli._quiet import quiet_startup

    quiet_startup()  # before JAX starts a backend: no libtpu / absl start-up lines on CPU hosts
    main()
