"""HF safetensors (LLaDA / iLLaDA layouts) <-> native parameters and checkpoints
(docs/models.md#hf-checkpoint-layouts).

No torch: tensors are read and written with the safetensors numpy API, one tensor at a time.

Layouts (names as in docs/models.md#hf-checkpoint-layouts; PyTorch Linear weights are `[out, in]`):
- `llada`: `model.transformer.{wte,ln_f,ff_out}` and `model.transformer.blocks.{i}.{attn_norm,
  q_proj,k_proj,v_proj,attn_out,ff_norm,ff_proj,up_proj,ff_out}.weight` (OLMo-style config:
  `model_type: llada`, `d_model`, `n_heads`, ...). `ff_proj` is the SiLU gate, `up_proj` the
  linear branch, the block `ff_out` the down projection; the top-level `ff_out` is the untied head.
- `illada`: HF Llama names `model.embed_tokens`, `model.norm`, `lm_head` and
  `model.layers.{i}.{input_layernorm,self_attn.{q,k,v,o}_proj,post_attention_layernorm,
  mlp.{gate,up,down}_proj}.weight` (config `hidden_size`, `num_attention_heads`, ...).

Native pure-dict layout (`illada_jax.model.transformer`): `embed [V, d]`, `final_norm.scale [d]`,
`lm_head [d, V]` (untied only) and, stacked over layers, `blocks.attn_norm.scale [L, d]`,
`blocks.attn.{q_proj [L, d, H, hd], k_proj/v_proj [L, d, KV, hd], o_proj [L, H, hd, d]}`,
`blocks.mlp_norm.scale [L, d]`, `blocks.mlp.{gate, up [L, d, F], down [L, F, d]}`. A Linear weight
W `[out, in]` becomes `W.T.reshape(native shape)`; back, `native.reshape(in, out).T`: a pure
permutation of the same numbers, so both directions are bit-exact.

Tied heads: when the config ties embeddings, a materialised head tensor (iLLaDA usually ships
`lm_head.weight`) must equal the embedding (compared after the dtype conversion) and is dropped;
a missing head is fine. `*.rotary_emb.inv_freq` buffers are ignored. Any other missing, unexpected
or wrongly shaped tensor raises `HfFormatError` naming it, before any tensor data is read.

Reading: safe_open(framework="numpy") reads and validates every header (names, shapes, dtypes)
before any data; the data is then read tensor by tensor with plain positioned reads (`_read_raw`,
see there why not `get_tensor`). BF16 data becomes `ml_dtypes.bfloat16` arrays (what
safetensors >= 0.6 `get_tensor` returns too; older versions raise on BF16). `param_dtype=None` keeps the checkpoint's dtype
(BF16 -> bfloat16, F32 -> float32; F16 is upcast to float32, exactly); `compute_dtype` follows the
parameters (bf16 inference as in the references, docs/models.md#the-block). Memory: each stacked
`[L, ...]` array is allocated once in the target dtype and filled layer by layer, so the peak is
about the model in the target dtype plus the largest single tensor.

How config.json maps to a `ModelConfig`: `ckpt/hf_config.py`. Native checkpoint directories,
`load_hf` and the `illada convert` command: `ckpt/convert.py`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
from collections.abc import Iterator

import ml_dtypes
import numpy as np

from illada_jax import storage
from illada_jax.ckpt.hf_config import (  # noqa: F401  (re-exported: the converter's public names)
    AR_LAYOUTS,
    LAYOUTS,
    HfFormatError,
    check_layout,
    config_from_hf,
    config_to_hf,
    detect_layout,
)
from illada_jax.config.schema import ModelConfig
from illada_jax.errors import IlladaError

log = logging.getLogger(__name__)

DEFAULT_SHARD_BYTES = 5_000_000_000  # transformers' default max_shard_size ("5GB")
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "chat_template.jinja")  # fmt: skip
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_DTYPE_BY_CODE = {"BF16": "bfloat16", "F32": "float32", "F16": "float32"}
_NUMPY_DTYPE = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32}
_RAW_DTYPES = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32}


# ---------------------------------------------------------------------------------------------
# Tensor maps
# ---------------------------------------------------------------------------------------------

# Native role -> (HF name per layout, native path in the pure dict). Per-layer names hold {i}.
_GLOBAL_NAMES = {
    "embed": ("model.transformer.wte.weight", "model.embed_tokens.weight", ("embed",)),
    "final_norm": ("model.transformer.ln_f.weight", "model.norm.weight", ("final_norm", "scale")),
    "lm_head": ("model.transformer.ff_out.weight", "lm_head.weight", ("lm_head",)),
}
_LAYER_NAMES = {
    "attn_norm": ("attn_norm", "input_layernorm", ("attn_norm", "scale")),
    "q": ("q_proj", "self_attn.q_proj", ("attn", "q_proj")),
    "k": ("k_proj", "self_attn.k_proj", ("attn", "k_proj")),
    "v": ("v_proj", "self_attn.v_proj", ("attn", "v_proj")),
    "o": ("attn_out", "self_attn.o_proj", ("attn", "o_proj")),
    "mlp_norm": ("ff_norm", "post_attention_layernorm", ("mlp_norm", "scale")),
    "gate": ("ff_proj", "mlp.gate_proj", ("mlp", "gate")),
    "up": ("up_proj", "mlp.up_proj", ("mlp", "up")),
    "down": ("ff_out", "mlp.down_proj", ("mlp", "down")),
}
_LAYER_PREFIX = {"llada": "model.transformer.blocks.{i}.", "illada": "model.layers.{i}.",
                 "llama": "model.layers.{i}.", "qwen2": "model.layers.{i}."}  # fmt: skip
_BIASES = {"q": ("q_bias", "heads"), "k": ("k_bias", "kv_heads"), "v": ("v_bias", "kv_heads")}
VOCAB_MULTIPLE = 128  # an added mask token grows the vocabulary to a multiple of this


def _column(layout: str) -> int:
    """Which name column of `_GLOBAL_NAMES` / `_LAYER_NAMES`: LLaDA's or the Llama-style one."""
    check_layout(layout)
    return 0 if layout == "llada" else 1


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One native parameter and its HF tensor(s).

    `shape` is the native shape of one layer (`per_layer`) or of the whole parameter. For a Linear
    (`in_axes > 0`) the first `in_axes` native axes form the input: HF `[out, in]` =
    `native.reshape(in, out).T`. Otherwise (norm scales, the embedding) the shapes are equal.
    """

    path: tuple[str, ...]
    hf_name: str
    shape: tuple[int, ...]
    in_axes: int
    per_layer: bool
    flat: bool = False  # a bias: HF [out] = native [heads, head_dim] flattened

    @property
    def hf_shape(self) -> tuple[int, ...]:
        if self.flat:
            return (math.prod(self.shape),)
        if not self.in_axes:
            return self.shape
        return (math.prod(self.shape[self.in_axes :]), math.prod(self.shape[: self.in_axes]))

    def hf_names(self, n_layers: int) -> list[str]:
        if not self.per_layer:
            return [self.hf_name]
        return [self.hf_name.format(i=i) for i in range(n_layers)]


def tensor_specs(cfg: ModelConfig, layout: str, vocab_size: int | None = None) -> list[TensorSpec]:
    """The native parameters of `cfg` with their HF names in `layout`, in HF order (embedding,
    layers, final norm, head). The head is listed for untied configs only; Qwen2's q/k/v biases
    when `cfg.qkv_bias`. `vocab_size`: the checkpoint's, when it differs from `cfg`'s."""
    col = _column(layout)
    d, h, kv, hd, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim
    v = vocab_size or cfg.vocab_size
    layer_shapes = {
        "attn_norm": ((d,), 0), "q": ((d, h, hd), 1), "k": ((d, kv, hd), 1),
        "v": ((d, kv, hd), 1), "o": ((h, hd, d), 2), "mlp_norm": ((d,), 0),
        "gate": ((d, f), 1), "up": ((d, f), 1), "down": ((f, d), 1),
    }  # fmt: skip
    specs = [TensorSpec(_GLOBAL_NAMES["embed"][2], _GLOBAL_NAMES["embed"][col], (v, d), 0, False)]
    for role, (shape, in_axes) in layer_shapes.items():
        names = _LAYER_NAMES[role]
        hf_name = f"{_LAYER_PREFIX[layout]}{names[col]}.weight"
        specs.append(TensorSpec(("blocks", *names[2]), hf_name, shape, in_axes, True))
        if cfg.qkv_bias and role in _BIASES:
            bias, heads = _BIASES[role]
            shape = (h if heads == "heads" else kv, hd)
            bias_name = f"{_LAYER_PREFIX[layout]}{names[col]}.bias"
            specs.append(TensorSpec(("blocks", "attn", bias), bias_name, shape, 0, True, True))
    norm = _GLOBAL_NAMES["final_norm"]
    specs.append(TensorSpec(norm[2], norm[col], (d,), 0, False))
    if not cfg.tie_embeddings:
        head = _GLOBAL_NAMES["lm_head"]
        specs.append(TensorSpec(head[2], head[col], (d, v), 1, False))
    return specs


def head_name(layout: str) -> str:
    """HF name of the output head in `layout` (optional when embeddings are tied)."""
    return _GLOBAL_NAMES["lm_head"][_column(layout)]


# ---------------------------------------------------------------------------------------------
# Reading safetensors
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Entry:
    file: pathlib.Path
    shape: tuple[int, ...]
    dtype: str  # safetensors code: "BF16", "F32", ...


def _safetensors_files(src: pathlib.Path) -> list[pathlib.Path]:
    """The checkpoint's shard files: from the index json, else model.safetensors, else the only
    *.safetensors file."""
    index = src / INDEX_FILE
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise HfFormatError(f"{index}: no 'weight_map' object")
        files = sorted({src / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise HfFormatError(f"{index} names shard(s) missing from {src}: {missing}")
        return files
    if (src / SINGLE_FILE).is_file():
        return [src / SINGLE_FILE]
    found = sorted(src.glob("*.safetensors"))
    if len(found) == 1:
        return found
    raise HfFormatError(
        f"{src}: expected {SINGLE_FILE} or {INDEX_FILE} with its shards, found "
        f"{[f.name for f in found] or 'no *.safetensors file'}"
    )


def _read_json(path) -> dict:
    """A JSON object file of the checkpoint (config.json, the shard index); HfFormatError naming
    it when it is not one."""
    fix = "the checkpoint is damaged or incompletely downloaded"
    return storage.read_json_object(path, HfFormatError, fix)


def _tensor_headers(file) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) of one shard. Local files: validated by safetensors' safe_open;
    object storage (which safe_open cannot map): the JSON header, read with a ranged read.
    A file that is not safetensors (damaged, truncated, empty) raises HfFormatError naming it."""
    try:
        if not storage.is_local(file):
            _, header = _file_header(file)
            return {
                n: (tuple(i["shape"]), i["dtype"]) for n, i in header.items() if n != "__metadata__"
            }
        from safetensors import safe_open

        with safe_open(str(file), framework="numpy") as handle:
            return {
                name: (
                    tuple(handle.get_slice(name).get_shape()),
                    handle.get_slice(name).get_dtype(),
                )
                for name in handle.keys()  # noqa: SIM118 (safe_open is not iterable)
            }
    except (IlladaError, OSError):  # named already, or the storage failed, not the file
        raise
    except Exception as err:  # SafetensorError, or a damaged header read directly
        raise HfFormatError(
            f"{file} is not a readable safetensors file ({type(err).__name__}: {err}); it is "
            "damaged or incompletely downloaded: fetch it again"
        ) from err


def _scan_headers(src: pathlib.Path) -> dict[str, _Entry]:
    """Name -> (file, shape, dtype) of every tensor, from the file headers only (no data read)."""
    entries: dict[str, _Entry] = {}
    for file in _safetensors_files(src):
        for name, (shape, dtype) in _tensor_headers(file).items():
            if name in entries:
                raise HfFormatError(f"tensor {name} is stored twice ({entries[name].file.name}"
                                    f" and {file.name})")  # fmt: skip
            entries[name] = _Entry(file, shape, dtype)
    return entries


def _file_header(file: pathlib.Path) -> tuple[int, dict]:
    """(byte offset of the data, JSON header) of a safetensors file."""
    with storage.path(file).open("rb") as stream:
        header_len = int.from_bytes(stream.read(8), "little")
        try:
            header = json.loads(stream.read(header_len))
        except ValueError as err:
            raise HfFormatError(
                f"{file} is not a readable safetensors file (its header: {err}); it is damaged "
                "or incompletely downloaded: fetch it again"
            ) from None
        return 8 + header_len, header


def _read_raw(file: pathlib.Path, name: str, header: tuple[int, dict] | None = None):
    """One tensor read with a plain positioned file read into a fresh numpy array.

    Not `safe_open(...).get_tensor`: that maps the whole shard and copies out of the map, so the
    touched pages stay resident while the handle is open (measured +1.3 GB at 1B, bench/convert.py).
    The headers are validated by safe_open in `_scan_headers` first.
    """
    data_start, entries = header or _file_header(file)
    info = entries[name]
    dtype = np.dtype(_RAW_DTYPES[info["dtype"]])
    begin, end = info["data_offsets"]
    if not storage.is_local(file):  # a ranged read of this tensor's bytes
        with storage.path(file).open("rb") as stream:
            stream.seek(data_start + begin)
            data = np.frombuffer(stream.read(end - begin), dtype=dtype).copy()
        return data.reshape(info["shape"])
    data = np.fromfile(file, dtype=dtype, count=(end - begin) // dtype.itemsize,
                       offset=data_start + begin)  # fmt: skip
    return data.reshape(info["shape"])


def _validate(entries: dict[str, _Entry], specs: list[TensorSpec], cfg: ModelConfig,
              layout: str, vocab_size: int) -> None:  # fmt: skip
    """Missing / unexpected / wrongly shaped tensors -> HfFormatError naming them."""
    expected = {name: spec.hf_shape for spec in specs for name in spec.hf_names(cfg.n_layers)}
    optional = {} if not cfg.tie_embeddings else {head_name(layout): (vocab_size, cfg.d_model)}
    missing = [name for name in expected if name not in entries]
    if missing:
        raise HfFormatError(
            f"missing tensor(s) for the {layout} layout: {missing[:5]}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            + (
                ". config.json unties the head (weight_tying / tie_word_embeddings false)"
                if head_name(layout) in missing
                else ""
            )  # fmt: skip
        )
    known = {**expected, **optional}
    unexpected = [n for n in entries if n not in known and not n.endswith(_IGNORED_SUFFIXES)]
    if unexpected:
        hint = " (biases are not supported)" if any(n.endswith(".bias") for n in unexpected) else ""
        raise HfFormatError(
            f"unexpected tensor(s) for the {layout} layout{hint}: {sorted(unexpected)[:5]}"
            + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        )
    for name, shape in known.items():
        if name in entries and entries[name].shape != shape:
            raise HfFormatError(
                f"tensor {name}: expected shape {list(shape)} from config.json, "
                f"got {list(entries[name].shape)}"
            )
        if name in entries and entries[name].dtype not in _DTYPE_BY_CODE:
            raise HfFormatError(
                f"tensor {name}: dtype {entries[name].dtype} is not supported (BF16, F16 or F32)"
            )


def _checkpoint_dtype(entries: dict[str, _Entry], names: list[str]) -> str:
    """bfloat16 when every tensor is BF16, else float32 (F16 and F32 load exactly as float32)."""
    codes = {entries[n].dtype for n in names}
    return "bfloat16" if codes == {"BF16"} else "float32"


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get_path(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def _place(array: np.ndarray, spec: TensorSpec, dest: np.ndarray) -> None:
    """Write one HF tensor into its native slot (`dest`: the whole parameter or one layer)."""
    if spec.flat:
        dest[...] = array.reshape(spec.shape)
    else:
        dest[...] = array.T.reshape(spec.shape) if spec.in_axes else array


def _tokenizer_size(src: pathlib.Path) -> int | None:
    """Ids the checkpoint's tokenizer.json can produce (added tokens included), or None."""
    if not (src / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer as HfTokenizer

    return HfTokenizer.from_file(str(src / "tokenizer.json")).get_vocab_size(with_added_tokens=True)


def _ar_mask(src: pathlib.Path, config_json: dict, mask_token_id, add_mask_token: bool):
    """(mask id, vocabulary size of the native model) of an autoregressive checkpoint: the
    given id; else config.json's; else a new row (`add_mask_token`); else the first embedding
    row the tokenizer never produces (Qwen2's padded vocabulary); else None (config_from_hf then
    names the fix)."""
    vocab = config_json.get("vocab_size")
    if isinstance(vocab, bool) or not isinstance(vocab, int):
        raise HfFormatError(f"config.json: vocab_size={vocab!r} must be an integer")
    if add_mask_token:
        if mask_token_id is not None:
            raise HfFormatError("give --mask-token-id or --add-mask-token, not both")
        return vocab, -(-(vocab + 1) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    if mask_token_id is None and config_json.get("mask_token_id") is None:
        used = _tokenizer_size(src)
        if used is not None and used < vocab:
            log.info("%s: mask token = first unused embedding row %d", src, used)
            mask_token_id = used
    return mask_token_id, vocab


def _grow_vocabulary(params: dict, vocab_size: int) -> None:
    """Extend `embed` (rows) and an untied `lm_head` (columns) to `vocab_size`; the new entries
    are the mean of the existing ones (the added mask token starts as an average token)."""
    embed = params["embed"]
    extra = vocab_size - embed.shape[0]
    params["embed"] = np.concatenate([embed, np.repeat(embed.mean(0, keepdims=True).astype(
        embed.dtype), extra, axis=0)])  # fmt: skip
    if "lm_head" in params:
        head = params["lm_head"]
        params["lm_head"] = np.concatenate([head, np.repeat(head.mean(1, keepdims=True).astype(
            head.dtype), extra, axis=1)], axis=1)  # fmt: skip


def hf_to_native(src_dir: str | pathlib.Path, *, param_dtype: str | None = None,
                 mask_token_id: int | None = None,
                 add_mask_token: bool = False) -> tuple[ModelConfig, dict]:  # fmt: skip
    """Read an HF checkpoint directory (config.json + safetensors) of any layout.

    Returns (ModelConfig, params): params is the native pure dict of numpy arrays in
    `param_dtype` (None: the checkpoint's, see the module docstring). An autoregressive (llama /
    qwen2) checkpoint needs a mask id: `mask_token_id`, or `add_mask_token` (a new embedding row,
    the vocabulary rounded up to a multiple of 128), or one found by `_ar_mask`. Raises
    `HfFormatError`.
    """
    src = storage.path(src_dir)
    config_path = src / "config.json"
    if not config_path.is_file():
        raise HfFormatError(f"{src}: no config.json; give an HF checkpoint directory")
    config_json = _read_json(config_path)
    layout = detect_layout(config_json)
    hf_vocab = config_json.get("vocab_size")
    if layout in AR_LAYOUTS:
        mask_token_id, vocab = _ar_mask(src, config_json, mask_token_id, add_mask_token)
        config_json = {**config_json, "vocab_size": vocab}
    elif mask_token_id is not None or add_mask_token:
        raise HfFormatError(f"the {layout} layout has its own mask token: drop --mask-token-id / "
                            "--add-mask-token (they are for llama and qwen2 checkpoints)")  # fmt: skip
    cfg = config_from_hf(config_json, name=src.absolute().name or None,
                         mask_token_id=mask_token_id)  # fmt: skip
    hf_vocab = hf_vocab if layout in AR_LAYOUTS else cfg.vocab_size
    specs = tensor_specs(cfg, layout, vocab_size=hf_vocab)
    entries = _scan_headers(src)
    _validate(entries, specs, cfg, layout, hf_vocab)
    names = [n for spec in specs for n in spec.hf_names(cfg.n_layers)]
    dtype_name = param_dtype or _checkpoint_dtype(entries, names)
    if dtype_name not in _NUMPY_DTYPE:
        raise HfFormatError(f"param_dtype={dtype_name!r}: choose float32 or bfloat16")
    cfg = dataclasses.replace(cfg, param_dtype=dtype_name, compute_dtype=dtype_name)
    dtype = _NUMPY_DTYPE[dtype_name]

    params: dict = {}
    slots: dict[str, tuple[TensorSpec, np.ndarray]] = {}
    for spec in specs:
        full = np.empty(((cfg.n_layers,) if spec.per_layer else ()) + spec.shape, dtype)
        _set(params, spec.path, full)
        for i, name in enumerate(spec.hf_names(cfg.n_layers)):
            slots[name] = (spec, full[i] if spec.per_layer else full)
    for file in sorted({entries[n].file for n in names}):
        header = _file_header(file)
        for name in (n for n in names if entries[n].file == file):
            spec, dest = slots[name]
            _place(_read_raw(file, name, header), spec, dest)
    head = head_name(layout)
    if cfg.tie_embeddings and head in entries:
        _check_tied_head(entries[head], head, params["embed"])
    if cfg.vocab_size != hf_vocab:
        _grow_vocabulary(params, cfg.vocab_size)
    return cfg, params


def _check_tied_head(entry: _Entry, name: str, embed: np.ndarray) -> None:
    weight = _read_raw(entry.file, name)
    if not np.array_equal(weight.astype(embed.dtype), embed):
        raise HfFormatError(
            f"tensor {name} differs from the embedding but config.json ties them "
            "(tie_word_embeddings / weight_tying true): an untied head in a tied config. Set the "
            "tie flag to false if the head is meant to be separate"
        )


# ---------------------------------------------------------------------------------------------
# Writing safetensors
# ---------------------------------------------------------------------------------------------


def _hf_tensors(cfg: ModelConfig, params: dict, specs: list[TensorSpec]) -> Iterator[tuple]:
    """(name, [out, in] contiguous numpy array) one at a time, in HF order."""
    for spec in specs:
        full = np.asarray(_get_path(params, spec.path))
        expected = ((cfg.n_layers,) if spec.per_layer else ()) + spec.shape
        if full.shape != expected:
            raise HfFormatError(
                f"parameter {'.'.join(spec.path)}: expected shape {list(expected)}, "
                f"got {list(full.shape)}"
            )
        for i, name in enumerate(spec.hf_names(cfg.n_layers)):
            value = full[i] if spec.per_layer else full
            if spec.flat:
                value = value.reshape(-1)
            elif spec.in_axes:
                out_dim, in_dim = spec.hf_shape
                value = value.reshape(in_dim, out_dim).T
            yield name, np.ascontiguousarray(value)


def _shard_plan(sizes: list[tuple[str, int]], shard_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes:
        if shards[-1] and used + size > shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def native_to_hf(cfg: ModelConfig, params: dict, dst_dir: str | pathlib.Path, *,
                 layout: str = "llada", shard_bytes: int = DEFAULT_SHARD_BYTES) -> pathlib.Path:  # fmt: skip
    """Write `config.json` and safetensors shards (`model.safetensors`, or
    `model-0000k-of-0000n.safetensors` + `model.safetensors.index.json` when over `shard_bytes`)
    with the layout's names and `[out, in]` Linear weights, in the parameters' dtype. A tied
    config writes no head tensor. Returns the directory."""
    from safetensors.numpy import save, save_file

    dst = storage.path(dst_dir)
    hf_config = config_to_hf(cfg, layout)
    specs = tensor_specs(cfg, layout)
    sizes = []
    for spec in specs:
        itemsize = np.dtype(np.asarray(_get_path(params, spec.path)).dtype).itemsize
        sizes += [(n, math.prod(spec.shape) * itemsize) for n in spec.hf_names(cfg.n_layers)]
    shards = _shard_plan(sizes, shard_bytes)
    files = [SINGLE_FILE] if len(shards) == 1 else [
        f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))
    ]  # fmt: skip
    dst.mkdir(parents=True, exist_ok=True)
    tensors = _hf_tensors(cfg, params, specs)
    weight_map = {}
    for file, shard in zip(files, shards):
        batch = dict(next(tensors) for _ in shard)
        if storage.is_local(dst):
            save_file(batch, str(dst / file), metadata={"format": "pt"})
        else:  # object storage: one upload of the serialised shard
            (dst / file).write_bytes(save(batch, metadata={"format": "pt"}))
        weight_map.update(dict.fromkeys(batch, file))
        del batch
    if len(files) > 1:
        index = {"metadata": {"total_size": sum(s for _, s in sizes)}, "weight_map": weight_map}
        (dst / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    (dst / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    return dst
