"""`illada eval`: the held-out ELBO bound of a checkpoint, or lm-evaluation-harness tasks."""

from __future__ import annotations

import argparse

from illada_jax.cli._common import (
    dataset_spec,
    existing_path,
    non_negative_int,
    output_file,
    positive_int,
)
from illada_jax.cli._sampling import load_model
from illada_jax.errors import IlladaError


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "eval",
        help="held-out ELBO bound of a checkpoint, lm-eval tasks, or reward tasks",
        description="Without --tasks: the held-out negative ELBO (nats/token, fixed seeds) on "
        "prepared shards (a preference run: its held-out preference accuracy; an RL run: the "
        "mean reward of its held-out prompts with its own reward and sampler). With --tasks: "
        "lm-evaluation-harness tasks (the [eval] extra). With --rl-data: completions of RL "
        "prompts scored by --reward. "
        "Example: illada eval --checkpoint runs/tiny --tasks kjv_next_word --limit 20",
    )
    parser.add_argument(
        "--checkpoint",
        type=existing_path("dir"),
        required=True,
        help="run directory or checkpoint step",
    )
    parser.add_argument("--dataset", type=dataset_spec, default=None,
                        help="prepared shards (default: the run's train.eval_dataset)")  # fmt: skip
    parser.add_argument("--batches", type=positive_int, default=None,
                        help="default: train.eval_batches")  # fmt: skip
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="default: train.batch_size")  # fmt: skip
    parser.add_argument("--seq-len", type=positive_int, default=None,
                        help="default: train.seq_len")  # fmt: skip
    parser.add_argument("--tasks", default=None, help="comma-separated lm-eval task names")
    parser.add_argument("--limit", type=positive_int, default=None, help="examples per task")
    parser.add_argument(
        "--include-path",
        type=existing_path("dir"),
        default=None,
        help="extra lm-eval task directory",
    )
    parser.add_argument("--task-data", action="append", default=[], metavar="TASK=FILE",
                        help="run TASK (e.g. lm-eval's gsm8k) on a local copy of its data "
                        "(.jsonl/.json/.parquet/.csv with the task's fields), offline; "
                        "repeatable")  # fmt: skip
    parser.add_argument("--method", choices=["elbo", "confidence"], default="elbo",
                        help="loglikelihood: the Monte-Carlo ELBO or iLLaDA's confidence score "
                        "(docs/algorithms.md#likelihood-and-scoring)")  # fmt: skip
    parser.add_argument("--mc-num", type=positive_int, default=32,
                        help="MC samples for the ELBO")  # fmt: skip
    parser.add_argument("--gen-length", type=positive_int, default=64,
                        help="for generate_until tasks: the answer budget in tokens")  # fmt: skip
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="for generate_until tasks: sampling steps (default: one token per "
                        "step)")  # fmt: skip
    parser.add_argument("--block-length", type=positive_int, default=None,
                        help="for generate_until tasks: semi-autoregressive block length "
                        "(default: the whole answer as one block)")  # fmt: skip
    parser.add_argument("--num-fewshot", type=non_negative_int, default=None,
                        help="few-shot examples per prompt (default: each task's own)")  # fmt: skip
    parser.add_argument("--rl-data", type=existing_path("dir"), default=None, metavar="DIR",
                        help="RL prompts (illada prepare --format rl): sample completions and "
                        "report their mean reward and accuracy (with --gen-length, --steps, "
                        "--block-length, --temperature, --samples, --limit)")  # fmt: skip
    parser.add_argument("--reward", default="final_number", metavar="SPEC",
                        help="with --rl-data: a reward name (exact_match, final_number, "
                        "format_regex), regex:PATTERN, file.py:function, or a weighted sum "
                        "(final_number+0.5*format_regex)")  # fmt: skip
    parser.add_argument("--samples", type=positive_int, default=1,
                        help="with --rl-data: completions per prompt")  # fmt: skip
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="with --rl-data: sampling temperature")  # fmt: skip
    parser.add_argument("--output", type=output_file, default=None, metavar="FILE",
                        help="also write the results as JSON to FILE")  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.tasks is not None and args.rl_data is not None:
        from illada_jax.eval.harness import HarnessConfigError

        raise HarnessConfigError("--tasks and --rl-data are two evaluations: run one at a time")
    if args.tasks is not None:
        return _run_tasks(args)
    if args.rl_data is not None:
        return _run_rewards(args)
    model = load_model(args.checkpoint)
    experiment = model.experiment
    if experiment is not None and experiment.diffusion.objective == "grpo":
        # An RL run: the reward of its held-out prompts, with its reward and its sampler.
        grpo = experiment.grpo
        return _run_rewards(args, model, dataset=args.dataset or experiment.train.eval_dataset,
                            reward=grpo.reward, samples=grpo.group_size,
                            gen_length=grpo.gen_length, steps=grpo.steps,
                            block_length=grpo.block_length, temperature=grpo.temperature,
                            remasking=grpo.remasking)  # fmt: skip
    from illada_jax.eval.heldout import heldout_bound

    record = heldout_bound(model, dataset=args.dataset, batches=args.batches,
                           batch_size=args.batch_size, seq_len=args.seq_len,
                           checkpoint=args.checkpoint)  # fmt: skip
    measure = ("held-out preference accuracy (against the frozen reference)"
               if "eval_pref_accuracy" in record else
               "held-out next-token NLL (nats/token)" if "eval_ar_nll" in record else
               "held-out negative ELBO (nats/token)")  # fmt: skip
    print(f"checkpoint step {model.step}: {measure}")
    for key, value in record.items():
        print(f"{key}={value:.6g}" if isinstance(value, float) else f"{key}={value}")
    _write_output(args.output, {"checkpoint_step": model.step, "heldout": record})
    return 0


def _run_rewards(args: argparse.Namespace, model=None, **settings) -> int:
    """--rl-data: the mean reward of sampled completions; `settings` (an RL run's own) replace
    the command line's dataset, reward and sampler."""
    from illada_jax.eval.rewards import reward_eval

    model = model or load_model(args.checkpoint)
    options = {"dataset": args.rl_data, "reward": args.reward, "samples": args.samples,
               "gen_length": args.gen_length, "steps": args.steps,
               "block_length": args.block_length, "temperature": args.temperature, **settings}  # fmt: skip
    record = reward_eval(model, options.pop("dataset"), options.pop("reward"), limit=args.limit,
                         **options)  # fmt: skip
    print(f"checkpoint step {model.step}: reward {record['reward']} on {record['prompts']} "
          f"prompts x {record['samples']} samples")  # fmt: skip
    for example in record["examples"]:
        print(f"  {example['prompt']!r} -> {example['completion']!r}: {example['reward']:g}")
    print(f"reward_mean={record['reward_mean']:.6g}")
    print(f"accuracy={record['accuracy']:.6g}")
    _write_output(args.output, {"checkpoint_step": model.step, "rewards": record})
    return 0


def _write_output(path, results: dict) -> None:
    if path is None:
        return
    import json

    from illada_jax import storage

    storage.atomic_write(path, json.dumps(results, indent=1, sort_keys=True, default=str) + "\n")
    print(f"wrote {path}")


def _run_tasks(args: argparse.Namespace) -> int:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise IlladaError(f"--tasks {args.tasks!r} names no task; give comma-separated lm-eval "
                          "task names, e.g. --tasks kjv_next_word,kjv_verse_end")  # fmt: skip
    try:
        from illada_jax.eval.harness import run_tasks
    except ImportError as err:  # the [eval] extra is missing: the message says how to install it
        raise IlladaError(str(err)) from None

    task_data = {}
    for item in args.task_data:
        task, sep, path = item.partition("=")
        if not sep or not task or not path:
            raise IlladaError(f"--task-data {item!r}: write TASK=FILE, e.g. gsm8k=gsm8k_test.jsonl")
        task_data[task.strip()] = path.strip()
    model_args = dict(loglikelihood_method=args.method, mc_num=args.mc_num,
                      gen_length=args.gen_length, steps=args.steps,
                      block_length=args.block_length)  # fmt: skip

    def diffusion_model():
        model = load_model(args.checkpoint)
        if model.decoding.kind != "diffusion":  # lm-eval scores with masked-diffusion ELBOs
            raise IlladaError(
                f"{args.checkpoint} was trained with objective={model.experiment.diffusion.objective}"
                ": --tasks scores answers with masked-diffusion likelihoods, which this model does "
                "not define; evaluate it with its held-out measure (illada eval without --tasks) "
                "or --rl-data"
            )
        return model

    # The checkpoint loads only after run_tasks has checked the task names.
    results = run_tasks(diffusion_model, tasks, limit=args.limit,
                        include_path=args.include_path, num_fewshot=args.num_fewshot,
                        task_data=task_data, **model_args)  # fmt: skip
    for task, metrics in results["results"].items():
        shown = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        print(f"{task}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(shown.items())))
    _write_output(args.output, {
        "checkpoint": str(args.checkpoint), "tasks": tasks, "limit": args.limit,
        "num_fewshot": args.num_fewshot, "model_args": model_args, "results": results["results"],
    })  # fmt: skip
    return 0
