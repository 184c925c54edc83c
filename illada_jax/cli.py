"""`illada` command line: one subcommand per job, each a thin wrapper over the library."""

from __future__ import annotations

import argparse
import sys

from illada_jax.api import LoadError
from illada_jax.ckpt import convert as convert_lib
from illada_jax.ckpt import hf
from illada_jax.ckpt.manager import CheckpointError
from illada_jax.config.schema import ConfigError
from illada_jax.data import tokenizer_train
from illada_jax.data.packing import DataError
from illada_jax.data.prepare import PrepareError
from illada_jax.data.sft import SftFormatError
from illada_jax.data.sources import SourceError
from illada_jax.data.tokenizer import TokenizerError
from illada_jax.diffusion.likelihood import ScoringError
from illada_jax.sampling.schedule import SamplingError
from illada_jax.tools import aot
from illada_jax.train import sweep as sweep_lib

# Mistakes in what the user gave us (data, paths, options): a message, exit code 2, no traceback.
USER_ERRORS = (
    DataError,
    PrepareError,
    SourceError,
    TokenizerError,
    SftFormatError,
    FileNotFoundError,
    CheckpointError,
    SamplingError,
    ScoringError,
    LoadError,
    hf.HfFormatError,
)

CONFIG_HELP = (
    "configuration directive, repeatable, applied in order: config:NAME, "
    "fiddler:NAME, set:path.to.field=VALUE, file:PATH (default: config:tiny)"
)


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", action="append", default=[], metavar="DIRECTIVE", help=CONFIG_HELP
    )


def _start_jax(cpu_devices: int) -> None:
    """Before JAX's backends start: join a multi-process job when launched as one
    (`launch/local.py`, or any launcher setting the ILLADA_* variables), and split a CPU host
    into virtual devices."""
    import os

    import jax

    from illada_jax.parallel.mesh import configure_cpu_devices

    if os.environ.get("ILLADA_COORDINATOR"):
        jax.distributed.initialize(
            coordinator_address=os.environ["ILLADA_COORDINATOR"],
            num_processes=int(os.environ["ILLADA_NUM_PROCESSES"]),
            process_id=int(os.environ["ILLADA_PROCESS_ID"]),
        )
    elif os.environ.get("ILLADA_DISTRIBUTED") == "auto":  # TPU pods, SLURM: auto-detected
        jax.distributed.initialize()
    configure_cpu_devices(cpu_devices)


def cmd_train(args: argparse.Namespace) -> int:
    from illada_jax.config import flags

    experiment = flags.experiment_from_flags(args.config)
    _start_jax(experiment.mesh.cpu_devices)
    from illada_jax.train.loop import train

    workdir = args.workdir or f"runs/{experiment.model.name}"
    print(
        f"training {experiment.model.name} for {experiment.train.steps} steps; "
        f"run directory {workdir}"
    )
    history = train(experiment, workdir)
    losses = [r["loss"] for r in history if "loss" in r and "event" not in r]
    if history and history[-1].get("preempted"):
        print(
            f"preempted at step {history[-1]['step']}: checkpoint saved, resume with the same "
            "command"
        )
    elif losses:
        print(f"done: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from illada_jax.config import flags
    from illada_jax.model.transformer import count_params

    experiment = flags.experiment_from_flags(args.config)
    total, non_embedding = count_params(experiment.model)
    print(f"total_params={total}")
    print(f"non_embedding_params={non_embedding}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from illada_jax.data.prepare import prepare, prepare_sft

    if args.format == "sft":
        if len(args.input) != 1:
            raise PrepareError("--format sft takes one --input: a JSONL file of dialogues or demo")
        manifest = prepare_sft(args.input[0], args.output, tokenizer_path=args.tokenizer)
    else:
        manifest = prepare(
            args.input,
            args.format,
            args.output,
            tokenizer_path=args.tokenizer,
            field=args.field,
            text_unit=args.text_unit,
            seqio_module=args.seqio_module,
            shard_chars=args.shard_chars,
            max_doc_tokens=args.max_doc_tokens,
            workers=args.workers,
            progress=not args.quiet,
        )
    bad = {k: v for k, v in manifest["bad_records"].items() if v}
    print(
        f"prepared {manifest['documents']} documents, {manifest['tokens']} tokens in "
        f"{len(manifest['shards'])} shards -> {args.output}"
    )
    print(f"bad records: {bad or 'none'}")
    return 0


def _add_sampling(parser: argparse.ArgumentParser, gen_length: int, block_length: int | None):
    parser.add_argument("--checkpoint", required=True, help="run directory or checkpoint step")
    parser.add_argument("--gen-length", type=int, default=gen_length, help="tokens to generate")
    parser.add_argument(
        "--steps", type=int, default=None,
        help="denoising steps (total; per block with --variable-length); default: one per token",
    )  # fmt: skip
    parser.add_argument(
        "--block-length", type=int, default=block_length,
        help="semi-autoregressive block (default: gen length = pure diffusion)",
    )  # fmt: skip
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--remasking", choices=["low_confidence", "random"],
                        default="low_confidence")  # fmt: skip
    parser.add_argument("--cfg-scale", type=float, default=0.0, help="unsupervised CFG weight")
    parser.add_argument("--variable-length", action="store_true",
                        help="iLLaDA variable-length decoding: open blocks until a stop")  # fmt: skip
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="stop string (repeatable; with --variable-length)")  # fmt: skip
    parser.add_argument("--threshold", type=float, default=None,
                        help="Fast-dLLM parallel decoding confidence threshold (e.g. 0.9)")  # fmt: skip
    parser.add_argument("--cache", choices=["none", "prefix", "dual"], default="none",
                        help="Fast-dLLM K/V cache (needs --block-length < --gen-length to help)")  # fmt: skip
    parser.add_argument("--logits-eos-inf", action="store_true", help="never sample EOS")
    parser.add_argument("--confidence-eos-eot-inf", action="store_true",
                        help="commit EOS / end-of-turn tokens last")  # fmt: skip
    parser.add_argument("--think-boost", type=float, default=0.0,
                        help="</think> logit boost B (SPEC 5.4; 100 in iLLaDA's scripts)")  # fmt: skip
    parser.add_argument("--think-power", type=float, default=3.0)
    parser.add_argument("--think-text", default="</think>")
    parser.add_argument("--seed", type=int, default=0)


def _sampling_kwargs(args: argparse.Namespace, model) -> dict:
    kwargs = dict(
        steps=args.steps, block_length=args.block_length, temperature=args.temperature,
        remasking=args.remasking, cfg_scale=args.cfg_scale,
        variable_length=args.variable_length, threshold=args.threshold, cache=args.cache,
        logits_eos_inf=args.logits_eos_inf, confidence_eos_eot_inf=args.confidence_eos_eot_inf,
        seed=args.seed,
    )  # fmt: skip
    if args.think_boost:
        kwargs.update(
            think_ids=tuple(model._need_tokenizer().encode(args.think_text)),
            think_boost=args.think_boost,
            think_power=args.think_power,
        )
    return kwargs


def cmd_generate(args: argparse.Namespace) -> int:
    _start_jax(0)
    import illada_jax

    model = illada_jax.load(args.checkpoint)
    texts = model.generate_text(args.prompt, args.gen_length, chat=args.chat,
                                add_bos=args.add_bos, stop_strings=args.stop,
                                **_sampling_kwargs(args, model))  # fmt: skip
    for prompt, text in zip(args.prompt, texts):
        if len(args.prompt) > 1:
            print(f"### {prompt}")
        print(text if args.chat else prompt + text)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """Multi-turn chat on stdin/stdout: each reply is generated from the whole dialogue so far
    in the chat template (SPEC §5.1 notes: LLaDA's chat.py re-feeds the previous canvas)."""
    _start_jax(0)
    import illada_jax

    model = illada_jax.load(args.checkpoint)
    model._need_tokenizer()
    messages: list[dict] = []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("/quit", "/exit"):
            return 0
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.strip()})
        reply = model.chat(messages, args.gen_length, stop_strings=args.stop,
                           **_sampling_kwargs(args, model))  # fmt: skip
        messages.append({"role": "assistant", "content": reply})
        print(f"model> {reply}", flush=True)


def cmd_eval(args: argparse.Namespace) -> int:
    _start_jax(0)
    import illada_jax
    from illada_jax.eval.heldout import heldout_bound

    model = illada_jax.load(args.checkpoint)
    if args.tasks:
        try:
            from illada_jax.eval.harness import run_tasks
        except ImportError as err:  # the [eval] extra is missing: say how to install it
            print(f"illada eval: error: {err}", file=sys.stderr)
            return 2

        model_args = dict(loglikelihood_method=args.method, mc_num=args.mc_num,
                          gen_length=args.gen_length)  # fmt: skip
        results = run_tasks(model, args.tasks.split(","), limit=args.limit,
                            include_path=args.include_path, **model_args)  # fmt: skip
        for task, metrics in results["results"].items():
            shown = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
            print(f"{task}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(shown.items())))
        return 0
    record = heldout_bound(model, dataset=args.dataset, batches=args.batches,
                           batch_size=args.batch_size, seq_len=args.seq_len)  # fmt: skip
    print(f"checkpoint step {model.step}: held-out negative ELBO (nats/token)")
    for key, value in record.items():
        print(f"{key}={value:.6g}" if isinstance(value, float) else f"{key}={value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="illada", description="Masked-diffusion language models (LLaDA / iLLaDA) in JAX."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="pre-train or fine-tune from a config",
        description="Train from a config. Example: illada train --config=config:tiny "
        "--config=set:train.steps=200 --workdir=runs/x",
    )
    _add_config(train)
    train.add_argument(
        "--workdir",
        default=None,
        help="run directory for config.json and metrics.jsonl (default runs/<model name>)",
    )
    train.set_defaults(func=cmd_train)

    prep = sub.add_parser(
        "prepare",
        help="raw text / jsonl / parquet / tfds / seqio / embedded -> token shards",
        description="Tokenise documents into ArrayRecord shards and a manifest. Example: illada "
        "prepare --format embedded --input train --output data/embedded",
    )
    prep.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="files or directories (text, jsonl, parquet), DIR[:SPLIT] (tfds), "
        "TASK[:SPLIT] (seqio), or a split name (embedded)",
    )
    prep.add_argument(
        "--format",
        required=True,
        choices=["text", "jsonl", "parquet", "tfds", "seqio", "embedded", "sft"],
        help="sft: chat dialogues (JSONL with messages or prompt/response, or `demo`) as "
        "iLLaDA-style SFT streams",
    )
    prep.add_argument("--field", default="text", help="jsonl field / parquet column / feature")
    prep.add_argument(
        "--tokenizer",
        default=None,
        help="SentencePiece .model or HF tokenizer.json (default: the shipped one)",
    )
    prep.add_argument("--output", required=True, help="output directory")
    prep.add_argument(
        "--text-unit",
        default="file",
        choices=["file", "block"],
        help="text format: a document per file or per blank-line block",
    )
    prep.add_argument(
        "--max-doc-tokens",
        type=int,
        default=1 << 20,
        help="longer documents are split into records of this many tokens",
    )
    prep.add_argument(
        "--shard-chars",
        type=int,
        default=None,
        help="characters of text per shard (default 16M; 1M for embedded)",
    )
    prep.add_argument("--workers", type=int, default=2, help="tokeniser processes")
    prep.add_argument("--seqio-module", default=None, help="module that registers the task")
    prep.add_argument("--quiet", action="store_true", help="no progress bar")
    prep.set_defaults(func=cmd_prepare)

    tokenizer = sub.add_parser(
        "tokenizer",
        help="tokenizer tools (train)",
        description="Tokenizer tools. Example: illada tokenizer train --embedded --vocab-size "
        "8192 --output tok/sp8k",
    )
    tokenizer_sub = tokenizer.add_subparsers(dest="tokenizer_command", required=True)
    train_tokenizer = tokenizer_sub.add_parser(
        "train",
        help="train a SentencePiece BPE or HF byte-level BPE tokenizer",
        description="Train a tokenizer with the special ids the models need. Example: illada "
        "tokenizer train --embedded --vocab-size 8192 --output tok/sp8k",
    )
    tokenizer_train.add_train_arguments(train_tokenizer)
    train_tokenizer.set_defaults(func=tokenizer_train.run_train)

    params = sub.add_parser(
        "params",
        help="parameter counts (total, non-embedding) of a config",
        description="Count parameters without allocating them. Example: illada params "
        "--config=config:illada_8b",
    )
    _add_config(params)
    params.set_defaults(func=cmd_params)

    convert = sub.add_parser(
        "convert",
        help="HF LLaDA / iLLaDA safetensors <-> native checkpoints",
        description="Convert weights. Example: illada convert --from hf --to native --src "
        "HF_DIR --dst runs/llada8b",
    )
    convert_lib.add_convert_arguments(convert)
    convert.set_defaults(func=convert_lib.run_convert)

    compile_ = sub.add_parser(
        "compile",
        help="AOT-compile a config for a TPU topology; memory and FLOPs report",
        description="Compile the train step for a TPU slice without a TPU. Example: illada "
        "compile --config=config:illada_8b --topology=v5p-256 --global-batch 640 --seq-len 8192",
    )
    _add_config(compile_)
    aot.add_compile_arguments(compile_)
    compile_.set_defaults(func=aot.run_compile)

    sweep = sub.add_parser(
        "sweep", help=sweep_lib.SWEEP_HELP, description=sweep_lib.SWEEP_DESCRIPTION
    )
    sweep_lib.add_sweep_arguments(sweep)
    sweep.set_defaults(func=sweep_lib.run_sweep)

    gen = sub.add_parser(
        "generate",
        help="sample text from a checkpoint",
        description="Generate after each --prompt. Example: illada generate --checkpoint "
        "runs/tiny --prompt 'In the beginning' --gen-length 64 --block-length 16",
    )
    _add_sampling(gen, gen_length=64, block_length=None)
    gen.add_argument("--prompt", action="append", required=True, help="prompt (repeatable)")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn")
    gen.add_argument("--add-bos", action="store_true", help="prepend BOS to the prompt")
    gen.set_defaults(func=cmd_generate)

    chat = sub.add_parser(
        "chat",
        help="multi-turn chat with a checkpoint on stdin/stdout",
        description="Chat using the chat template; /quit or EOF ends. Example: illada chat "
        "--checkpoint runs/sft",
    )
    _add_sampling(chat, gen_length=128, block_length=32)
    chat.set_defaults(func=cmd_chat)

    ev = sub.add_parser(
        "eval",
        help="held-out ELBO bound of a checkpoint, or lm-eval tasks",
        description="Without --tasks: the held-out negative ELBO (nats/token, fixed seeds) on "
        "prepared shards. With --tasks: lm-evaluation-harness tasks (the [eval] extra). "
        "Example: illada eval --checkpoint runs/tiny --tasks kjv_next_word --limit 20",
    )
    ev.add_argument("--checkpoint", required=True, help="run directory or checkpoint step")
    ev.add_argument("--dataset", default=None,
                    help="prepared shards (default: the run's train.eval_dataset)")  # fmt: skip
    ev.add_argument("--batches", type=int, default=None, help="default: train.eval_batches")
    ev.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    ev.add_argument("--seq-len", type=int, default=None, help="default: train.seq_len")
    ev.add_argument("--tasks", default=None, help="comma-separated lm-eval task names")
    ev.add_argument("--limit", type=int, default=None, help="examples per task")
    ev.add_argument("--include-path", default=None, help="extra lm-eval task directory")
    ev.add_argument("--method", choices=["elbo", "confidence"], default="elbo",
                    help="loglikelihood: MC ELBO (SPEC 6.1) or confidence score (6.2)")  # fmt: skip
    ev.add_argument("--mc-num", type=int, default=32, help="MC samples for the ELBO")
    ev.add_argument("--gen-length", type=int, default=64, help="for generate_until tasks")
    ev.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"illada {args.command}: config error: {err}", file=sys.stderr)
        return 2
    except USER_ERRORS as err:
        print(f"illada {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
