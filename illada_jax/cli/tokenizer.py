"""`illada tokenizer train`: a SentencePiece or byte-level BPE tokenizer with the special ids the
models need (`illada_jax.data.tokenizers.tokenizer_train`)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from illada_jax.cli._common import existing_path, positive_int


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "tokenizer",
        help="tokenizer tools (train)",
        description="Tokenizer tools. Example: illada tokenizer train --embedded --vocab-size "
        "8192 --output tok/sp8k",
    )
    tools = parser.add_subparsers(dest="tokenizer_command", required=True, metavar="COMMAND")
    train = tools.add_parser(
        "train",
        help="train a SentencePiece BPE or HF byte-level BPE tokenizer",
        description="Train a tokenizer with the special ids the models need. Example: illada "
        "tokenizer train --embedded --vocab-size 8192 --output tok/sp8k",
    )
    add_train_arguments(train)
    train.set_defaults(func=run_train)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from illada_jax.data.tokenizers.tokenizer_train import TRAIN_TYPES

    parser.add_argument("--input", nargs="+", type=existing_path("file"), default=[], metavar="FILE",
                        help="text files (whole file) or .jsonl files ({'text': ...} per line)")  # fmt: skip
    parser.add_argument("--embedded", action="store_true",
                        help="also train on the embedded corpus (train split)")  # fmt: skip
    parser.add_argument("--vocab-size", type=positive_int, default=8192)
    parser.add_argument("--type", choices=TRAIN_TYPES, default="sentencepiece", dest="type")
    parser.add_argument("--output", required=True,
                        help="sentencepiece: writes OUTPUT.model; bpe: directory OUTPUT/ with "
                        "tokenizer.json (or OUTPUT itself if it ends in .json)")  # fmt: skip
    parser.add_argument("--num-threads", type=positive_int, default=2)


def run_train(args: argparse.Namespace) -> int:
    """Train, load the result (which validates it) and print a summary."""
    from illada_jax.data.tokenizers.tokenizer import Tokenizer, TokenizerError
    from illada_jax.data.tokenizers.tokenizer_train import train_tokenizer

    if not args.input and not args.embedded:
        raise TokenizerError("give --input FILE ... and/or --embedded")
    texts: Iterable[str] = ()
    if args.embedded:
        from illada_jax.data.sources.corpus import embedded_documents

        texts = (doc.text for doc in embedded_documents("train"))
    path = train_tokenizer(args.input, args.output, args.vocab_size, args.type, texts=texts,
                           num_threads=args.num_threads)  # fmt: skip
    tokenizer = Tokenizer.load(path)
    print(f"wrote {path}")
    print(f"vocab_size={tokenizer.vocab_size} special_ids={tokenizer.special_ids()}")
    print(f"identity={tokenizer.identity}")
    return 0
