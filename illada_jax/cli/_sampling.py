"""Sampling arguments shared by `illada generate` and `illada chat`
(docs/algorithms.md#sampling)."""

from __future__ import annotations

import argparse

from illada_jax.cli._common import (
    existing_path,
    non_negative_int,
    non_negative_number,
    number_in,
    positive_int,
)


def add_sampling_arguments(parser: argparse.ArgumentParser, gen_length: int,
                           block_length: int | None) -> None:  # fmt: skip
    parser.add_argument("--checkpoint", type=existing_path("dir"), required=True,
                        help="run directory, checkpoint step or HF directory")  # fmt: skip
    parser.add_argument(
        "--gen-length", type=positive_int, default=gen_length, help="tokens to generate"
    )
    parser.add_argument(
        "--steps", type=positive_int, default=None,
        help="denoising steps (total; per block with --variable-length); default: one per token",
    )  # fmt: skip
    parser.add_argument(
        "--block-length", type=positive_int, default=block_length,
        help="semi-autoregressive block (default: gen length = pure diffusion; a block-diffusion "
        "model decodes its own blocks)",
    )  # fmt: skip
    parser.set_defaults(default_block_length=block_length)
    parser.add_argument("--temperature", type=non_negative_number, default=0.0)
    parser.add_argument("--remasking", choices=["low_confidence", "random"],
                        default="low_confidence")  # fmt: skip
    parser.add_argument(
        "--cfg-scale", type=non_negative_number, default=0.0, help="unsupervised CFG weight"
    )
    parser.add_argument("--variable-length", action="store_true",
                        help="iLLaDA variable-length decoding: open blocks until a stop")  # fmt: skip
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="stop string (repeatable; with --variable-length)")  # fmt: skip
    parser.add_argument("--threshold", type=number_in(0, 1, "0.9"), default=None,
                        help="Fast-dLLM parallel decoding confidence threshold (e.g. 0.9)")  # fmt: skip
    parser.add_argument("--cache", choices=["none", "prefix", "dual"], default="none",
                        help="Fast-dLLM K/V cache (needs --block-length < --gen-length to help)")  # fmt: skip
    parser.add_argument("--logits-eos-inf", action="store_true", help="never sample EOS")
    parser.add_argument("--confidence-eos-eot-inf", action="store_true",
                        help="commit EOS / end-of-turn tokens last")  # fmt: skip
    parser.add_argument("--think-boost", type=non_negative_number, default=0.0,
                        help="</think> logit boost B (docs/algorithms.md#the-think-boost; 100 in "
                        "iLLaDA's scripts)")  # fmt: skip
    parser.add_argument("--think-power", type=number_in(0, float("inf"), "3"), default=3.0)
    parser.add_argument("--think-text", default="</think>")
    parser.add_argument("--seed", type=non_negative_int, default=0)


def check_sampling_arguments(args: argparse.Namespace) -> None:
    """The flags' constraints on each other, before the checkpoint is loaded: on a fixed canvas
    --block-length divides --gen-length and --steps is a multiple of the blocks (with
    --variable-length, --steps is per block and any block length works)."""
    from illada_jax.sampling.schedule import SamplingError, block_plan

    if args.variable_length:
        return
    gen, block = args.gen_length, args.block_length or args.gen_length
    try:
        block_plan(gen, block, args.steps or gen)
    except SamplingError as err:
        flags = (f"--gen-length {gen}, --block-length {block}" if gen % block
                 else f"--steps {args.steps}")  # fmt: skip
        raise SamplingError(f"{flags}: {err}") from None


def sampling_kwargs(args: argparse.Namespace, model) -> dict:
    """Keyword arguments for `Model.generate_text` / `Model.chat` from the parsed flags."""
    block_length = args.block_length
    if model.decoding.kind != "diffusion" and block_length == args.default_block_length:
        block_length = None  # the command's default is masked diffusion's; the model has its own
    kwargs = dict(
        steps=args.steps, block_length=block_length, temperature=args.temperature,
        remasking=args.remasking, cfg_scale=args.cfg_scale,
        variable_length=args.variable_length, threshold=args.threshold, cache=args.cache,
        logits_eos_inf=args.logits_eos_inf, confidence_eos_eot_inf=args.confidence_eos_eot_inf,
        seed=args.seed,
    )  # fmt: skip
    if args.think_boost:
        kwargs.update(
            think_ids=tuple(model.need_tokenizer().encode(args.think_text)),
            think_boost=args.think_boost,
            think_power=args.think_power,
        )
    return kwargs


def load_model(path: str):
    """Start JAX (one process, CPU cores as devices) and load a model."""
    from illada_jax.inference import load
    from illada_jax.parallel.distributed import start_jax

    start_jax(0)
    return load(path)
