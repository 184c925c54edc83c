"""`illada convert`: HF LLaDA / iLLaDA safetensors <-> native checkpoints, and Llama / Qwen2
autoregressive checkpoints in and out (`illada_jax.ckpt`; docs/models.md#autoregressive-checkpoints)."""

from __future__ import annotations

import argparse
import json

from illada_jax import storage
from illada_jax.cli._common import existing_path, output_dir


def parse_size(text: str) -> int:
    """'5GB' / '500MB' / '2GiB' / '1000' -> bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10,
             "MIB": 2**20, "GIB": 2**30}  # fmt: skip
    stripped = text.strip().upper()
    number = stripped.rstrip("KMGIB")
    unit = stripped[len(number) :]
    try:
        return int(float(number) * units[unit])
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 5GB or 500MB") from None


def add_parser(sub) -> None:
    from illada_jax.ckpt.hf import DEFAULT_SHARD_BYTES, LAYOUTS

    parser = sub.add_parser(
        "convert",
        help="HF LLaDA / iLLaDA / Llama / Qwen2 safetensors <-> native checkpoints",
        description="Convert weights. Example: illada convert --from hf --to native --src "
        "HF_DIR --dst runs/llada8b",
    )
    parser.add_argument("--from", dest="source_format", choices=["hf", "native"], required=True)
    parser.add_argument("--to", dest="target_format", choices=["hf", "native"], required=True)
    parser.add_argument("--src", type=existing_path("dir"), required=True,
                        help="HF checkpoint directory, or a run / checkpoint step directory")  # fmt: skip
    parser.add_argument(
        "--dst", type=output_dir, required=True, help="output directory (new or empty)"
    )
    parser.add_argument("--layout", choices=list(LAYOUTS), default=None,
                        help="HF layout to write (default: llada for untied heads, else illada; "
                        "llama / qwen2 for a model converted from one)")  # fmt: skip
    parser.add_argument("--mask-token-id", type=int, default=None,
                        help="hf -> native, llama / qwen2: the id used as the mask token (one the "
                        "tokenizer never produces; default: the first unused embedding row)")  # fmt: skip
    parser.add_argument("--add-mask-token", action="store_true",
                        help="hf -> native, llama / qwen2: add a mask token row (the mean "
                        "embedding), growing the vocabulary to a multiple of 128")  # fmt: skip
    parser.add_argument("--param-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="hf -> native: parameter dtype (auto: the checkpoint's)")  # fmt: skip
    parser.add_argument("--shard-size", type=parse_size, default=DEFAULT_SHARD_BYTES,
                        help="native -> hf: bytes per safetensors shard (default 5GB)")  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """hf -> native or native -> hf. Returns an exit code."""
    from illada_jax.ckpt.convert import native_dir_to_hf, save_native
    from illada_jax.ckpt.hf import HfFormatError, detect_layout, hf_to_native

    src, dst = storage.path(args.src), storage.path(args.dst)
    direction = (args.source_format, args.target_format)
    if direction not in (("hf", "native"), ("native", "hf")):
        raise HfFormatError(f"--from {direction[0]} --to {direction[1]}: convert between hf "
                            "and native")  # fmt: skip
    if not src.is_dir():
        raise HfFormatError(f"--src {src} is not a directory")
    interrupted = (dst / storage.INCOMPLETE_MARKER).exists()  # written again from scratch
    if dst.exists() and not interrupted and (not dst.is_dir() or any(dst.iterdir())):
        raise HfFormatError(f"--dst {dst} exists and is not empty; choose a new directory")
    storage.check_complete(src)
    # The output appears whole at the end or not at all (a killed convert leaves no half
    # checkpoint that would load): written in a staging directory, renamed at the end.
    if direction == ("hf", "native"):
        dtype = None if args.param_dtype == "auto" else args.param_dtype
        cfg, params = hf_to_native(src, param_dtype=dtype, mask_token_id=args.mask_token_id,
                                   add_mask_token=args.add_mask_token)  # fmt: skip
        with storage.atomic_directory(dst) as staging:
            save_native(cfg, params, staging, tokenizer_dir=src, final_dir=dst)
        layout = detect_layout(json.loads((src / "config.json").read_text()))
        print(f"converted {src} ({layout} layout, {cfg.param_dtype}) -> native checkpoint {dst}")
        return 0
    with storage.atomic_directory(dst) as staging:
        layout = native_dir_to_hf(src, staging, layout=args.layout, shard_bytes=args.shard_size)
    print(f"converted {src} -> HF {layout} checkpoint {dst}")
    return 0
