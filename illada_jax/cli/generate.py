"""`illada generate`: sample text after prompts from a checkpoint."""

from __future__ import annotations

import argparse

from illada_jax.cli._sampling import (
    add_sampling_arguments,
    check_sampling_arguments,
    load_model,
    sampling_kwargs,
)


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "generate",
        help="sample text from a checkpoint",
        description="Generate after each --prompt. Example: illada generate --checkpoint "
        "runs/tiny --prompt 'In the beginning' --gen-length 64 --block-length 16",
    )
    add_sampling_arguments(parser, gen_length=64, block_length=None)
    parser.add_argument("--prompt", action="append", required=True, help="prompt (repeatable)")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn")
    parser.add_argument("--add-bos", action="store_true", help="prepend BOS to the prompt")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_sampling_arguments(args)
    if "" in args.prompt and not (args.add_bos or args.chat):
        from illada_jax.sampling.schedule import SamplingError

        raise SamplingError(
            "--prompt '' is empty: a generation needs at least one prompt token; give some text, "
            "or add --add-bos to start from BOS alone"
        )
    model = load_model(args.checkpoint)
    texts = model.generate_text(args.prompt, args.gen_length, chat=args.chat,
                                add_bos=args.add_bos, stop_strings=args.stop,
                                **sampling_kwargs(args, model))  # fmt: skip
    for prompt, text in zip(args.prompt, texts):
        if len(args.prompt) > 1:
            print(f"### {prompt}")
        print(text if args.chat else prompt + text)
    return 0
