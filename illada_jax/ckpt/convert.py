"""Native checkpoint directories from converted weights, `illada_jax.load(HF_DIR)`, and the
`illada convert` command (the tensor mapping itself lives in `ckpt/hf.py`).

Native checkpoints (`save_native`): `DIR/config.json` (an `Experiment` holding the model) and an
orbax step `DIR/checkpoints/0/{state,data,meta}` with the runner's items (state uncompressed), with
`state = {"params": ...}` only. `illada_jax.load(DIR)` reads it, and `checkpoint.init_from=DIR`
starts a fine-tuning run from it; it is not a run directory to resume (no optimiser state).

Command line: `illada convert --from hf --to native --src HF_DIR --dst DIR` and `illada convert
--from native --to hf --src RUN_OR_CKPT_DIR --dst HF_DIR [--layout llada|illada]`
(`add_convert_arguments` + `run_convert`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import pathlib
import shutil

import numpy as np

from illada_jax.ckpt.hf import (
    DEFAULT_SHARD_BYTES,
    LAYOUTS,
    TOKENIZER_FILES,
    HfFormatError,
    detect_layout,
    hf_to_native,
    native_to_hf,
)
from illada_jax.config.schema import ModelConfig

log = logging.getLogger(__name__)


def copy_tokenizer(src_dir: pathlib.Path, dst_dir: pathlib.Path) -> bool:
    """Copy the tokenizer files present in `src_dir` into `dst_dir`; False when there are none."""
    present = [src_dir / n for n in TOKENIZER_FILES if (src_dir / n).is_file()]
    if not any(p.name in ("tokenizer.json", "tokenizer.model") for p in present):
        return False
    dst_dir.mkdir(parents=True, exist_ok=True)
    for path in present:
        shutil.copy2(path, dst_dir / path.name)
    return True


@contextlib.contextmanager
def _numpy_saved_in_place():
    """Orbax deep-copies numpy leaves before writing them (a guard against concurrent edits:
    +1x the model in host memory). The save here is synchronous and nothing touches the arrays
    meanwhile, so swap in a non-copying handler for its duration."""
    import orbax.checkpoint as ocp

    handlers = ocp.type_handlers
    original = handlers.get_type_handler(np.ndarray)
    handlers.register_type_handler(
        np.ndarray, handlers.NumpyHandler(deepcopy_host_arrays=False), override=True
    )
    try:
        yield
    finally:
        handlers.register_type_handler(np.ndarray, original, override=True)


def save_native(cfg: ModelConfig, params: dict, dst_dir: str | pathlib.Path, *,
                tokenizer_dir: str | pathlib.Path | None = None) -> pathlib.Path:  # fmt: skip
    """Write a native checkpoint `illada_jax.load(dst_dir)` reads (layout: module docstring).

    With `tokenizer_dir` holding tokenizer.json (or tokenizer.model), its files are copied to
    `dst_dir/tokenizer/` and the stored config's `data.tokenizer` points there (absolute path).
    Refuses a directory that already holds checkpoints. Returns the directory.
    """
    import orbax.checkpoint as ocp

    from illada_jax.config import flags
    from illada_jax.config.schema import DataConfig, Experiment, TrainConfig

    dst = pathlib.Path(dst_dir).expanduser().absolute()
    if (dst / "checkpoints").exists():
        raise HfFormatError(f"{dst} already holds checkpoints/; choose a new directory")
    dst.mkdir(parents=True, exist_ok=True)
    tokenizer = ""
    if tokenizer_dir is not None and copy_tokenizer(pathlib.Path(tokenizer_dir), dst / "tokenizer"):
        tokenizer = str(dst / "tokenizer")
    train = TrainConfig(seq_len=min(TrainConfig.seq_len, cfg.max_seq_len))
    experiment = Experiment(model=cfg, data=DataConfig(tokenizer=tokenizer), train=train)
    (dst / "config.json").write_text(flags.to_json(experiment) + "\n")
    meta = {"lr_scale": 1.0, "recent_losses": [], "config": flags.to_dict(experiment)}
    step_dir = dst / "checkpoints" / "0"
    step_dir.mkdir(parents=True)
    # The items the runner writes (`state`, `data`, `meta`), each committed atomically by orbax.
    # Uncompressed: zarr compression buffers a compressed copy of every array being written
    # (measured: +1x a 1.5 GB tree at peak; +0.08x uncompressed), and the host already holds the
    # whole model once (16 GB for an 8B model in bf16).
    state_handler = ocp.PyTreeCheckpointHandler(use_compression=False)
    with _numpy_saved_in_place(), ocp.Checkpointer(state_handler) as checkpointer:
        checkpointer.save(step_dir / "state", args=ocp.args.PyTreeSave({"params": params}))
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
        checkpointer.save(step_dir / "data", args=ocp.args.JsonSave({"next_data_step": 0}))
        checkpointer.save(step_dir / "meta", args=ocp.args.JsonSave(meta))
    return dst


def is_hf_checkpoint(path: str | pathlib.Path) -> bool:
    """A directory with config.json and *.safetensors and no native checkpoints/."""
    path = pathlib.Path(path)
    return (
        (path / "config.json").is_file()
        and any(path.glob("*.safetensors"))
        and not (path / "checkpoints").exists()
    )


def load_hf(path: str | pathlib.Path, *, param_dtype: str | None = None):
    """(ModelConfig, params as numpy pure dict, Tokenizer or None) of an HF checkpoint directory,
    for `illada_jax.load`. The tokenizer is loaded when tokenizer.json / tokenizer.model is there
    and its special ids match the config (else None, with a warning)."""
    from illada_jax.data.tokenizer import Tokenizer, TokenizerError

    path = pathlib.Path(path).expanduser()
    cfg, params = hf_to_native(path, param_dtype=param_dtype)
    tokenizer = None
    if (path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file():
        try:
            tokenizer = Tokenizer.load(path)
            tokenizer.check_model_config(cfg, allow_larger_model_vocab=True)
        except (TokenizerError, OSError, ValueError) as err:
            log.warning("%s: tokenizer not used: %s", path, err)
            tokenizer = None
    return cfg, params, tokenizer


def default_layout(cfg: ModelConfig) -> str:
    """llada for untied heads with head_dim * n_heads == d_model, else illada."""
    llada_ok = cfg.head_dim * cfg.n_heads == cfg.d_model
    return "llada" if llada_ok and not cfg.tie_embeddings else "illada"


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


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `illada convert`."""
    parser.add_argument("--from", dest="source_format", choices=["hf", "native"], required=True)
    parser.add_argument("--to", dest="target_format", choices=["hf", "native"], required=True)
    parser.add_argument("--src", required=True,
                        help="HF checkpoint directory, or a run / checkpoint step directory")  # fmt: skip
    parser.add_argument("--dst", required=True, help="output directory (new or empty)")
    parser.add_argument("--layout", choices=list(LAYOUTS), default=None,
                        help="HF layout to write (default: llada for untied heads, else illada)")  # fmt: skip
    parser.add_argument("--param-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="hf -> native: parameter dtype (auto: the checkpoint's)")  # fmt: skip
    parser.add_argument("--shard-size", type=parse_size, default=DEFAULT_SHARD_BYTES,
                        help="native -> hf: bytes per safetensors shard (default 5GB)")  # fmt: skip


def _check_new_dir(path: pathlib.Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise HfFormatError(f"--dst {path} exists and is not empty; choose a new directory")


def run_convert(args: argparse.Namespace) -> int:
    """`illada convert`: hf -> native or native -> hf. Returns an exit code."""
    src, dst = pathlib.Path(args.src).expanduser(), pathlib.Path(args.dst).expanduser()
    direction = (args.source_format, args.target_format)
    if direction not in (("hf", "native"), ("native", "hf")):
        raise HfFormatError(f"--from {direction[0]} --to {direction[1]}: convert between hf "
                            "and native")  # fmt: skip
    if not src.is_dir():
        raise HfFormatError(f"--src {src} is not a directory")
    _check_new_dir(dst)
    if direction == ("hf", "native"):
        dtype = None if args.param_dtype == "auto" else args.param_dtype
        cfg, params = hf_to_native(src, param_dtype=dtype)
        save_native(cfg, params, dst, tokenizer_dir=src)
        print(f"converted {src} ({detect_layout(json.loads((src / 'config.json').read_text()))} "
              f"layout, {cfg.param_dtype}) -> native checkpoint {dst}")  # fmt: skip
        return 0
    from illada_jax.api import load

    model = load(src)
    cfg = model.config
    params = _to_numpy(model.params)
    layout = args.layout or default_layout(cfg)
    native_to_hf(cfg, params, dst, layout=layout, shard_bytes=args.shard_size)
    tokenizer = getattr(model.tokenizer, "path", None)
    if tokenizer is not None and model.tokenizer.kind == "hf":
        copy_tokenizer(pathlib.Path(tokenizer).parent, dst)
    elif tokenizer is not None:  # SentencePiece: HF's slow-tokenizer file name
        shutil.copy2(tokenizer, dst / "tokenizer.model")
    print(f"converted {src} -> HF {layout} checkpoint {dst}")
    return 0


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {key: _to_numpy(value) for key, value in tree.items()}
    value = getattr(tree, "value", tree)  # nnx.State leaves hold .value
    return np.asarray(value)
