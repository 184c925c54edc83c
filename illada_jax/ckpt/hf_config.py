"""HF `config.json` <-> `ModelConfig` for the LLaDA (OLMo-style) and iLLaDA (Llama-style) layouts
(docs/models.md#hf-checkpoint-layouts).

config.json fields read (anything else is ignored):
- llada: d_model, n_heads, n_kv_heads (or multi_query_attention), n_layers, mlp_hidden_size (or
  mlp_ratio), embedding_size / vocab_size, max_sequence_length, rope_theta, rms_norm_eps,
  weight_tying, init_std, special ids; refused unless as the released models: block_type llama,
  activation_type silu, layer_norm_type rms, layer_norm_with_affine, rope, no alibi, no
  include_bias / include_qkv_bias / bias_for_layer_norm, no attention_layer_norm, no
  input_emb_norm, no scale_logits, no clip_qkv, block_group_size 1.
- illada (Llama style): hidden_size, num_attention_heads, num_key_value_heads, num_hidden_layers,
  head_dim, intermediate_size, vocab_size, max_position_embeddings, rope_theta (or
  rope_parameters.rope_theta), rms_norm_eps, tie_word_embeddings, initializer_range, special ids;
  refused: hidden_act other than silu/swish, attention_bias / mlp_bias, rope_scaling (or a
  rope_parameters.rope_type other than default), partial_rotary_factor != 1, layer_norm_eps
  (plain LayerNorm), qk norms, sliding windows.
- special ids: mask/pad/bos/eos_token_id (eos may be a list: its first entry) and our own
  eot_token_id; absent ones take the released model's ids (presets LLADA_SPECIAL_IDS /
  ILLADA_SPECIAL_IDS). Dropout fields are ignored (inference and fine-tuning run without dropout).
- llama / qwen2 (autoregressive checkpoints to adapt, docs/models.md#autoregressive-checkpoints):
  `model_type` llama or qwen2, the Llama-style fields above plus RoPE scaling (`rope_scaling` or
  `rope_parameters` of type linear or llama3; others refused), Qwen2's q/k/v biases (always
  there), tied or untied heads (default untied, as transformers). An AR vocabulary has no mask
  token: the caller names one (`mask_token_id`: an id the tokenizer never produces, e.g. a
  reserved special token or an unused embedding row); a `mask_token_id` field in config.json (one
  this converter wrote) is used otherwise. pad defaults to eos, bos to eos when absent.
"""

from __future__ import annotations

from typing import Any

from illada_jax.config.presets import ILLADA_SPECIAL_IDS, LLADA_SPECIAL_IDS
from illada_jax.config.schema import ConfigError, ModelConfig
from illada_jax.errors import IlladaError

LAYOUTS = ("llada", "illada", "llama", "qwen2")
AR_LAYOUTS = ("llama", "qwen2")  # autoregressive checkpoints (no mask token of their own)
_AR_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


class HfFormatError(IlladaError, ValueError):
    """An HF checkpoint (config.json or tensors) this converter cannot map; the message names the
    field or tensor, what was found and what is expected."""


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise HfFormatError(f"layout={layout!r} is unknown; choose one of {', '.join(LAYOUTS)}")


# ---------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------


def detect_layout(config_json: dict) -> str:
    """`llada` for OLMo-style LLaDA configs (`model_type: llada` or a `d_model` field), `llama` /
    `qwen2` for those autoregressive model types, `illada` for other HF Llama-style ones
    (`hidden_size`)."""
    model_type = config_json.get("model_type")
    if model_type == "llada" or "d_model" in config_json:
        return "llada"
    if model_type in AR_LAYOUTS:
        return model_type
    if model_type not in (None, "illada") and "hidden_size" in config_json:
        raise HfFormatError(
            f"config.json: model_type {model_type!r} is not supported; supported: llada, illada "
            "(diffusion models) and llama, qwen2 (autoregressive checkpoints to adapt)"
        )
    if "hidden_size" in config_json:
        return "illada"
    raise HfFormatError(
        "config.json: neither a LLaDA config (model_type 'llada' with d_model, n_heads, ...) nor "
        "a Llama-style iLLaDA config (hidden_size, num_attention_heads, ...); "
        f"model_type={config_json.get('model_type')!r}"
    )


def _get(config_json: dict, field: str, kind: type | tuple[type, ...], default: Any = ...):
    value = config_json.get(field, default)
    if value is ...:
        raise HfFormatError(f"config.json: required field {field!r} is missing")
    if value is None and default is None:
        return None
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise HfFormatError(f"config.json: {field}={value!r} must be of type {kind}")
    return value


def _refuse(config_json: dict, field: str, supported: Any, why: str) -> None:
    """Raise when `field` is present with a value other than the supported one(s)."""
    allowed = supported if isinstance(supported, tuple) else (supported,)
    if field in config_json and config_json[field] not in allowed:
        raise HfFormatError(
            f"config.json: {field}={config_json[field]!r} is not supported ({why}); "
            f"supported: {' or '.join(repr(a) for a in allowed)}"
        )


def _special_ids(config_json: dict, defaults: dict, vocab: int) -> dict[str, int | None]:
    ids = {}
    for field, default in defaults.items():
        value = config_json.get(field)
        if isinstance(value, list):  # e.g. several EOS ids: the first is the canonical one
            value = value[0] if value else None
        if value is None:
            value = default
            if field == "eot_token_id" and value is not None and value >= vocab:
                value = None  # optional: a small model without the released vocabulary
        ids[field] = value
    return ids


def _llada_fields(c: dict) -> dict[str, Any]:
    _refuse(c, "block_type", "llama", "only the LLaDA llama block with separate q/k/v and gate/up")
    _refuse(c, "activation_type", "silu", "the MLP is silu(ff_proj x) * up_proj x")
    _refuse(c, "layer_norm_type", "rms", "RMSNorm only; LayerNorm has a bias and centring")
    _refuse(c, "layer_norm_with_affine", True, "the RMSNorm scales are learned weights")
    _refuse(c, "rope", True, "RoPE is the only positional encoding")
    _refuse(c, "alibi", (False, None), "ALiBi is not implemented")
    for field in ("include_bias", "include_qkv_bias", "bias_for_layer_norm"):
        _refuse(c, field, (False, None), "the native model has no biases here")
    for field in ("attention_layer_norm", "input_emb_norm", "scale_logits"):
        _refuse(c, field, (False, None), "not part of the LLaDA / iLLaDA architecture")
    _refuse(c, "clip_qkv", None, "q/k/v clipping is not implemented")
    _refuse(c, "block_group_size", 1, "grouped blocks use other tensor names")
    d_model, n_heads = _get(c, "d_model", int), _get(c, "n_heads", int)
    kv_default = 1 if c.get("multi_query_attention") else n_heads
    mlp = _get(c, "mlp_hidden_size", int, None) or _get(c, "mlp_ratio", int, 4) * d_model
    vocab = _get(c, "embedding_size", int, None) or _get(c, "vocab_size", int)
    if d_model % n_heads:
        raise HfFormatError(
            f"config.json: d_model={d_model} is not a multiple of n_heads={n_heads}"
        )
    return dict(
        d_model=d_model, n_heads=n_heads, head_dim=d_model // n_heads,
        n_kv_heads=_get(c, "n_kv_heads", int, None) or kv_default,
        n_layers=_get(c, "n_layers", int), mlp_dim=mlp, vocab_size=vocab,
        max_seq_len=_get(c, "max_sequence_length", int, 4096),
        rope_theta=float(_get(c, "rope_theta", (int, float), 10_000.0)),
        norm_eps=float(_get(c, "rms_norm_eps", (int, float), 1e-5)),
        tie_embeddings=bool(_get(c, "weight_tying", bool, False)),
        init_std=float(_get(c, "init_std", (int, float), 0.02)),
        **_special_ids(c, {**LLADA_SPECIAL_IDS}, vocab),
    )  # fmt: skip


def _ar_rope_scaling(c: dict) -> dict[str, Any]:
    """ModelConfig's rope_* fields of an AR checkpoint's `rope_scaling` / `rope_parameters`."""
    params = c.get("rope_scaling") or c.get("rope_parameters") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return {}
    if kind not in ("linear", "llama3"):
        raise HfFormatError(f"config.json: RoPE scaling of type {kind!r} is not supported; "
                            "supported: linear, llama3 (or none)")  # fmt: skip

    def number(field: str) -> float:
        value = params.get(field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise HfFormatError(f"config.json: RoPE scaling of type {kind} needs a number "
                                f"{field!r}, got {value!r}")  # fmt: skip
        return value

    fields = dict(rope_scaling=kind, rope_scaling_factor=float(number("factor")))
    if kind == "llama3":
        fields.update(rope_low_freq_factor=float(number("low_freq_factor")),
                      rope_high_freq_factor=float(number("high_freq_factor")),
                      rope_original_max_len=int(number("original_max_position_embeddings")))  # fmt: skip
    return fields


def _ar_fields(c: dict, layout: str, mask_token_id: int | None) -> dict[str, Any]:
    """The Llama-style fields of a llama / qwen2 checkpoint, its biases, RoPE scaling and
    special ids (module docstring)."""
    _refuse(c, "use_sliding_window", (False, None), "attention over the whole sequence only")
    if layout == "llama":
        _refuse(c, "attention_bias", (False, None), "Llama checkpoints without biases only")
    stripped = {k: v for k, v in c.items() if k not in ("rope_scaling", "rope_parameters",
                                                         "use_sliding_window")}  # fmt: skip
    stripped.setdefault("tie_word_embeddings", False)
    fields = _llama_fields(stripped, defaults=False)
    fields["rope_theta"] = float((c.get("rope_parameters") or {}).get(
        "rope_theta", c.get("rope_theta", 10_000.0)))  # fmt: skip
    eos = c.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos
    if not isinstance(eos, int):
        raise HfFormatError("config.json: eos_token_id is missing; an AR checkpoint needs one")
    mask = mask_token_id if mask_token_id is not None else c.get("mask_token_id")
    if mask is None:
        raise HfFormatError(
            f"the {layout} checkpoint has no mask token: pass --mask-token-id ID (an id its "
            "tokenizer never produces, e.g. a reserved special token or an unused embedding row) "
            "or --add-mask-token (adds a row initialised to the mean embedding)"
        )
    pad = c.get("pad_token_id")
    bos = c.get("bos_token_id")
    fields.update(mask_token_id=mask, eos_token_id=eos, pad_token_id=eos if pad is None else pad,
                  bos_token_id=eos if bos is None else bos, eot_token_id=None,
                  qkv_bias=layout == "qwen2", shifted_logits=bool(c.get("shifted_logits")),
                  **_ar_rope_scaling(c))  # fmt: skip
    return fields


def _rope_theta_llama(c: dict) -> float:
    _refuse(c, "rope_scaling", None, "RoPE scaling is not implemented (iLLaDA raises on it too)")
    params = c.get("rope_parameters")
    if isinstance(params, dict):
        if params.get("rope_type", "default") != "default":
            raise HfFormatError(
                f"config.json: rope_parameters.rope_type={params.get('rope_type')!r} is not "
                "supported (RoPE scaling is not implemented); supported: 'default'"
            )
        if "rope_theta" in params:
            return float(params["rope_theta"])
    return float(_get(c, "rope_theta", (int, float), 10_000.0))


def _llama_fields(c: dict, defaults: bool = True) -> dict[str, Any]:
    """Llama-style fields; `defaults`: absent special ids take iLLaDA's (else left out)."""
    _refuse(c, "hidden_act", ("silu", "swish"), "the MLP is down(silu(gate x) * up x)")
    for field in ("attention_bias", "mlp_bias"):
        _refuse(c, field, (False, None), "the native model has no biases here")
    _refuse(c, "partial_rotary_factor", (1, 1.0, None), "RoPE rotates the full head dimension")
    for field in ("qk_norm", "use_qk_norm", "use_sliding_window"):
        _refuse(c, field, (False, None), "not part of the LLaDA / iLLaDA architecture")
    if "layer_norm_eps" in c and "rms_norm_eps" not in c:
        raise HfFormatError(
            "config.json: layer_norm_eps means plain LayerNorm (with bias and centring), which is "
            "not supported; the LLaDA / iLLaDA models use RMSNorm (rms_norm_eps)"
        )
    d_model, n_heads = _get(c, "hidden_size", int), _get(c, "num_attention_heads", int)
    vocab = _get(c, "vocab_size", int)
    return dict(
        d_model=d_model, n_heads=n_heads,
        head_dim=_get(c, "head_dim", int, None) or d_model // n_heads,
        n_kv_heads=_get(c, "num_key_value_heads", int, None) or n_heads,
        n_layers=_get(c, "num_hidden_layers", int), mlp_dim=_get(c, "intermediate_size", int),
        vocab_size=vocab, max_seq_len=_get(c, "max_position_embeddings", int, 4096),
        rope_theta=_rope_theta_llama(c),
        norm_eps=float(_get(c, "rms_norm_eps", (int, float), 1e-6)),
        tie_embeddings=bool(_get(c, "tie_word_embeddings", bool, True)),
        init_std=float(_get(c, "initializer_range", (int, float), 0.02)),
        **(_special_ids(c, {**ILLADA_SPECIAL_IDS}, vocab) if defaults else {}),
    )  # fmt: skip


def config_from_hf(config_json: dict, *, param_dtype: str = "float32", name: str | None = None,
                   mask_token_id: int | None = None) -> ModelConfig:  # fmt: skip
    """A `ModelConfig` from an HF `config.json` dict of any layout (see the module docstring
    for the fields read). `compute_dtype` follows `param_dtype`; `mask_token_id`: the mask id
    of an autoregressive (llama / qwen2) checkpoint. Raises `HfFormatError`."""
    layout = detect_layout(config_json)
    if layout == "llada":
        fields = _llada_fields(config_json)
    elif layout in AR_LAYOUTS:
        fields = _ar_fields(config_json, layout, mask_token_id)
    else:
        fields = _llama_fields(config_json)
    name = name or str(config_json.get("model_type") or layout)
    try:
        return ModelConfig(name=name, param_dtype=param_dtype, compute_dtype=param_dtype, **fields)
    except ConfigError as err:
        raise HfFormatError(
            f"config.json ({layout} layout) gives an invalid model: {err}. Special ids absent "
            "from config.json default to the released model's (mask/pad/bos/eos_token_id); set "
            "them in config.json for other vocabularies"
        ) from None


def config_to_hf(cfg: ModelConfig, layout: str) -> dict[str, Any]:
    """The HF `config.json` dict of `cfg` in `layout` (inverse of `config_from_hf`)."""
    check_layout(layout)
    if cfg.use_bias:
        raise HfFormatError("model.use_bias=True: the LLaDA / iLLaDA layouts have no biases")
    if cfg.qkv_bias != (layout == "qwen2"):
        raise HfFormatError(f"model.qkv_bias={cfg.qkv_bias}: only the qwen2 layout has (and "
                            "needs) q/k/v biases; choose --layout qwen2 or another")  # fmt: skip
    if cfg.shifted_logits and layout not in AR_LAYOUTS:
        raise HfFormatError("model.shifted_logits=True: only the llama and qwen2 layouts record "
                            "it (config.json's shifted_logits); choose one of them")  # fmt: skip
    if cfg.rope_scaling != "none" and layout not in AR_LAYOUTS:
        raise HfFormatError(f"model.rope_scaling={cfg.rope_scaling}: only the llama and qwen2 "
                            "layouts carry RoPE scaling")  # fmt: skip
    ids = dict(mask_token_id=cfg.mask_token_id, pad_token_id=cfg.pad_token_id,
               bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id)  # fmt: skip
    if cfg.eot_token_id is not None:
        ids["eot_token_id"] = cfg.eot_token_id
    if layout in AR_LAYOUTS:
        return _ar_config(cfg, layout, ids)
    if layout == "llada":
        if cfg.head_dim * cfg.n_heads != cfg.d_model:
            raise HfFormatError(
                f"layout llada needs head_dim * n_heads == d_model (LLaDA has no head_dim field), "
                f"got {cfg.head_dim} * {cfg.n_heads} != {cfg.d_model}; use --layout illada"
            )
        return dict(
            architectures=["LLaDAModelLM"], model_type="llada", d_model=cfg.d_model,
            n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, n_layers=cfg.n_layers,
            mlp_hidden_size=cfg.mlp_dim, mlp_ratio=4, vocab_size=cfg.vocab_size,
            embedding_size=cfg.vocab_size, max_sequence_length=cfg.max_seq_len,
            rope_theta=cfg.rope_theta, rms_norm_eps=cfg.norm_eps, weight_tying=cfg.tie_embeddings,
            init_std=cfg.init_std, block_type="llama", activation_type="silu",
            layer_norm_type="rms", layer_norm_with_affine=True, rope=True,
            rope_full_precision=True, alibi=False, include_bias=False, include_qkv_bias=False,
            bias_for_layer_norm=False, attention_layer_norm=False, input_emb_norm=False,
            scale_logits=False, block_group_size=1, attention_dropout=0.0,
            residual_dropout=0.0, embedding_dropout=0.0, use_cache=False,
            torch_dtype=cfg.param_dtype, **ids,
        )  # fmt: skip
    return dict(
        architectures=["ILLaDAForCausalLM"], model_type="illada", hidden_size=cfg.d_model,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        num_hidden_layers=cfg.n_layers, head_dim=cfg.head_dim, intermediate_size=cfg.mlp_dim,
        vocab_size=cfg.vocab_size, max_position_embeddings=cfg.max_seq_len,
        rope_theta=cfg.rope_theta, rope_scaling=None, rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings, hidden_act="silu", attention_bias=False,
        mlp_bias=False, attention_dropout=0.0, initializer_range=cfg.init_std, use_cache=False,
        torch_dtype=cfg.param_dtype, **ids,
    )  # fmt: skip


def _ar_config(cfg: ModelConfig, layout: str, ids: dict) -> dict[str, Any]:
    """config.json of a llama / qwen2 checkpoint (transformers loads it; `mask_token_id` is
    kept for the way back)."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling != "none":
        rope.update(rope_type=cfg.rope_scaling, factor=cfg.rope_scaling_factor)
    if cfg.rope_scaling == "llama3":
        rope.update(low_freq_factor=cfg.rope_low_freq_factor,
                    high_freq_factor=cfg.rope_high_freq_factor,
                    original_max_position_embeddings=cfg.rope_original_max_len)  # fmt: skip
    extra = dict(use_sliding_window=False) if layout == "qwen2" else dict(attention_bias=False)
    if cfg.shifted_logits:  # ours: transformers ignores it, `config_from_hf` reads it back
        extra["shifted_logits"] = True
    return dict(
        architectures=[_AR_ARCHITECTURES[layout]], model_type=layout, hidden_size=cfg.d_model,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        num_hidden_layers=cfg.n_layers, head_dim=cfg.head_dim, intermediate_size=cfg.mlp_dim,
        vocab_size=cfg.vocab_size, max_position_embeddings=cfg.max_seq_len,
        rope_theta=cfg.rope_theta, rope_parameters=rope, rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings, hidden_act="silu", mlp_bias=False,
        initializer_range=cfg.init_std, use_cache=True, torch_dtype=cfg.param_dtype,
        **extra, **ids,
    )  # fmt: skip
