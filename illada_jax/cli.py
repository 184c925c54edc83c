"""`illada` command line: one subcommand per job, each a thin wrapper over the library."""

from __future__ import annotations

import argparse
import sys

from illada_jax.ckpt.manager import CheckpointError
from illada_jax.config.schema import ConfigError
from illada_jax.data import tokenizer_train
from illada_jax.data.packing import DataError
from illada_jax.data.prepare import PrepareError
from illada_jax.data.sft import SftFormatError
from illada_jax.data.sources import SourceError
from illada_jax.data.tokenizer import TokenizerError

# Mistakes in what the user gave us (data, paths, options): a message, exit code 2, no traceback.
USER_ERRORS = (
    DataError,
    PrepareError,
    SourceError,
    TokenizerError,
    SftFormatError,
    FileNotFoundError,
    CheckpointError,
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

    tokenizer = sub.add_parser("tokenizer", help="tokenizer tools (train)")
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
