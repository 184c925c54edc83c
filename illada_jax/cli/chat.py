"""`illada chat`: multi-turn chat with a checkpoint on stdin/stdout."""

from __future__ import annotations

import argparse
import sys

from illada_jax.cli._sampling import (
    add_sampling_arguments,
    check_sampling_arguments,
    load_model,
    sampling_kwargs,
)


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "chat",
        help="multi-turn chat with a checkpoint on stdin/stdout",
        description="Chat using the chat template; /quit or EOF ends. Example: illada chat "
        "--checkpoint runs/sft",
    )
    add_sampling_arguments(parser, gen_length=128, block_length=32)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Each reply is generated from the whole dialogue so far in the chat template (LLaDA's
    chat.py re-feeds the previous canvas the same way)."""
    check_sampling_arguments(args)
    model = load_model(args.checkpoint)
    model.need_tokenizer()
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
                           **sampling_kwargs(args, model))  # fmt: skip
        messages.append({"role": "assistant", "content": reply})
        print(f"model> {reply}", flush=True)
