"""Native checkpoint directories from converted weights, `illada_jax.load(HF_DIR)`, and the
`illada convert` command (the tensor mapping itself lives in `ckpt/hf.py`).

Native checkpoints (`save_native`): `DIR/config.json` (an `Experiment` holding the model) and an
orbax step `DIR/checkpoints/0/{state,data,meta}` with the runner's items (state uncompressed), with
`state = {"params": ...}` only. `illada_jax.load(DIR)` reads it, and `checkpoint.init_from=DIR`
starts a fine-tuning run from it; it is not a run directory to resume (no optimiser state).

Command line (`illada_jax/cli/convert.py`): `illada convert --from hf --to native --src HF_DIR
--dst DIR` (`hf_to_native` + `save_native`) and `illada convert --from native --to hf --src
RUN_OR_CKPT_DIR --dst HF_DIR [--layout llada|illada]` (`native_dir_to_hf`).
"""

from __future__ import annotations

import contextlib
import json
import logging

import numpy as np

from illada_jax import storage
from illada_jax.ckpt import rundir
from illada_jax.ckpt.hf import (
    DEFAULT_SHARD_BYTES,
    TOKENIZER_FILES,
    HfFormatError,
    hf_to_native,
    native_to_hf,
)
from illada_jax.config.schema import ModelConfig

log = logging.getLogger(__name__)


def copy_tokenizer(src_dir: storage.PathLike, dst_dir: storage.PathLike) -> bool:
    """Copy the tokenizer files present in `src_dir` into `dst_dir` (local or object storage);
    False when there are none."""
    src_dir, dst_dir = storage.path(src_dir), storage.path(dst_dir)
    present = [src_dir / n for n in TOKENIZER_FILES if (src_dir / n).is_file()]
    if not any(p.name in ("tokenizer.json", "tokenizer.model") for p in present):
        return False
    dst_dir.mkdir(parents=True, exist_ok=True)
    for path in present:
        storage.atomic_write(dst_dir / path.name, path.read_bytes())
    return True


MASK_PIECE = (
    "<|mdm_mask|>"  # the piece an added mask token gets (a name the tokenizer loader knows)
)


def align_tokenizer(tokenizer_dir: storage.PathLike, cfg: ModelConfig) -> None:
    """Make a copied HF tokenizer (tokenizer.json) name the model's special ids: a converted
    autoregressive checkpoint's tokenizer has no mask token, and its roles may be unnamed (Qwen2.5
    has no bos). Embedding rows past the tokenizer's last id get special pieces, so the two
    vocabularies match (prepared data checks that): the mask id's is `MASK_PIECE`, the others
    reserved `<|unused_k|>`; tokenizer_config.json then names the pieces of the model's mask /
    pad / bos / eos ids, which the loader reads first. A SentencePiece tokenizer or one that
    already matches is left as it is."""
    from tokenizers import Tokenizer as HfTokenizer

    from illada_jax.data.tokenizers.tokenizer import Tokenizer, TokenizerError

    directory = storage.path(tokenizer_dir)
    path = directory / "tokenizer.json"
    if not path.is_file():
        return
    with contextlib.suppress(TokenizerError, ValueError):
        Tokenizer.load(path).check_model_config(cfg, allow_larger_model_vocab=True)
        return  # already names every special id
    tok = HfTokenizer.from_str(path.read_text(encoding="utf-8"))
    size = tok.get_vocab_size(with_added_tokens=True)
    if size < cfg.vocab_size:  # one piece per embedding row: the mask and reserved ones
        pieces = [MASK_PIECE if i == cfg.mask_token_id else f"<|unused_{i}|>"
                  for i in range(size, cfg.vocab_size)]  # fmt: skip
        tok.add_special_tokens(pieces)
        storage.atomic_write(path, tok.to_str().encode("utf-8"))
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    for role in ("mask", "pad", "bos", "eos"):
        config[f"{role}_token"] = tok.id_to_token(getattr(cfg, f"{role}_token_id"))
    storage.atomic_write(config_path, (json.dumps(config, indent=2) + "\n").encode("utf-8"))


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


def save_native(cfg: ModelConfig, params: dict, dst_dir: storage.PathLike, *,
                tokenizer_dir: storage.PathLike | None = None,
                final_dir: storage.PathLike | None = None) -> storage.Path:  # fmt: skip
    """Write a native checkpoint `illada_jax.load(dst_dir)` reads (layout: module docstring).

    With `tokenizer_dir` holding tokenizer.json (or tokenizer.model), its files are copied to
    `dst_dir/tokenizer/` and the stored config's `data.tokenizer` points there (absolute path;
    under `final_dir` instead when `dst_dir` is a staging directory renamed to it afterwards,
    `storage.atomic_directory`). Refuses a directory that already holds checkpoints. Returns the
    directory.
    """
    import orbax.checkpoint as ocp

    from illada_jax.config.schema import DataConfig, Experiment, TrainConfig

    dst = storage.path(dst_dir)
    if (dst / "checkpoints").exists():
        raise HfFormatError(f"{dst} already holds checkpoints/; choose a new directory")
    dst.mkdir(parents=True, exist_ok=True)
    tokenizer = ""
    if tokenizer_dir is not None and copy_tokenizer(tokenizer_dir, dst / "tokenizer"):
        align_tokenizer(dst / "tokenizer", cfg)
        tokenizer = str(storage.path(final_dir or dst) / "tokenizer")
    train = TrainConfig(seq_len=min(TrainConfig.seq_len, cfg.max_seq_len))
    experiment = Experiment(model=cfg, data=DataConfig(tokenizer=tokenizer), train=train)
    rundir.write_config(dst, experiment)
    meta = rundir.checkpoint_meta(experiment)
    step_dir = dst / rundir.CHECKPOINTS / "0"
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


def is_hf_checkpoint(path: storage.PathLike) -> bool:
    """A directory with config.json and *.safetensors and no native checkpoints/."""
    path = storage.path(path)
    return (
        (path / "config.json").is_file()
        and any(path.glob("*.safetensors"))
        and not (path / "checkpoints").exists()
    )


def load_hf(path: storage.PathLike, *, param_dtype: str | None = None):
    """(ModelConfig, params as numpy pure dict, Tokenizer or None) of an HF checkpoint directory,
    for `illada_jax.load`. The tokenizer is loaded when tokenizer.json / tokenizer.model is there
    and its special ids match the config (else None, with a warning)."""
    from illada_jax.data.tokenizers.tokenizer import Tokenizer, TokenizerError

    path = storage.path(path)
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
    """qwen2 for q/k/v biases, llama for RoPE scaling (models converted from those), llada for
    untied heads with head_dim * n_heads == d_model, else illada."""
    if cfg.qkv_bias:
        return "qwen2"
    if cfg.rope_scaling != "none":
        return "llama"
    llada_ok = cfg.head_dim * cfg.n_heads == cfg.d_model
    return "llada" if llada_ok and not cfg.tie_embeddings else "illada"


def native_dir_to_hf(src: storage.PathLike, dst: storage.PathLike, *,
                     layout: str | None = None, shard_bytes: int = DEFAULT_SHARD_BYTES) -> str:  # fmt: skip
    """Write the newest checkpoint under `src` (a run or step directory) as an HF directory
    `dst` in `layout` (default: `default_layout`), with its tokenizer when the run has one.
    Returns the layout written."""
    from illada_jax.ckpt.manager import restore_checkpoint_params
    from illada_jax.data.tokenizers.tokenizer import Tokenizer

    experiment, _, params = restore_checkpoint_params(src)
    cfg = experiment.model
    layout = layout or default_layout(cfg)
    dst = storage.path(dst)
    native_to_hf(cfg, _to_numpy(params), dst, layout=layout, shard_bytes=shard_bytes)
    tokenizer, _ = Tokenizer.for_model(experiment.data.tokenizer, cfg)
    if tokenizer is not None and tokenizer.kind == "hf":
        copy_tokenizer(tokenizer.path.parent, dst)
    elif tokenizer is not None:  # SentencePiece: HF's slow-tokenizer file name
        storage.atomic_write(dst / "tokenizer.model", tokenizer.path.read_bytes())
    return layout


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {key: _to_numpy(value) for key, value in tree.items()}
    value = getattr(tree, "value", tree)  # nnx.State leaves hold .value
    return np.asarray(value)
