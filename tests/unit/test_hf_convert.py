"""HF safetensors <-> native conversion (`illada_jax.ckpt.hf`,
docs/models.md#hf-checkpoint-layouts).

Tiny random checkpoints in both HF layouts are written here with the official tensor names and
PyTorch `[out, in]` Linear shapes (`safetensors.numpy.save_file`, single file and sharded with an
index). The converted model's fp32 logits must match an independent float64 NumPy forward pass
that works directly on the HF tensors (y = x @ W.T; RMSNorm; rotate-half RoPE; GQA where query
head h uses kv head h // (H / KV); SwiGLU with gate = ff_proj / gate_proj; tied or untied head)
to 1e-5 relative (max |diff| / max |ref|). Further: bit-exact round trips both ways, bf16,
tied-head handling, clear errors on malformed checkpoints, `save_native` + `illada_jax.load`,
and the `illada convert` functions.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import illada_jax
from illada_jax import cli, storage
from illada_jax.ckpt import convert, hf
from illada_jax.config.presets import MODEL_PRESETS
from illada_jax.config.schema import ModelConfig
from illada_jax.inference import Model
from illada_jax.model.transformer import graphdef_and_specs

D, H, KV, HD, F, V, L = 32, 4, 2, 8, 48, 64, 2
IDS = dict(mask_token_id=4, pad_token_id=0, bos_token_id=2, eos_token_id=3)
REL_TOL = 1e-5


# ---------------------------------------------------------------------------------------------
# Writing HF checkpoints (official names, [out, in] layouts)
# ---------------------------------------------------------------------------------------------


def llada_config(*, kv=KV, tied=False, **extra) -> dict:
    config = dict(
        model_type="llada", architectures=["LLaDAModelLM"], d_model=D, n_heads=H, n_kv_heads=kv,
        n_layers=L, mlp_hidden_size=F, mlp_ratio=4, vocab_size=V, embedding_size=V,
        max_sequence_length=64, rope_theta=10_000.0, rms_norm_eps=1e-5, weight_tying=tied,
        block_type="llama", activation_type="silu", layer_norm_type="rms", rope=True,
        alibi=False, include_bias=False, include_qkv_bias=False, flash_attention=False, **IDS,
    )  # fmt: skip
    return {**config, **extra}


def illada_config(*, kv=KV, tied=True, **extra) -> dict:
    config = dict(
        model_type="illada", architectures=["ILLaDAForCausalLM"], hidden_size=D,
        num_attention_heads=H, num_key_value_heads=kv, num_hidden_layers=L, head_dim=HD,
        intermediate_size=F, vocab_size=V, max_position_embeddings=64, rope_theta=500_000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=tied, hidden_act="silu", attention_bias=False,
        mlp_bias=False, rope_scaling=None, attention_dropout=0.1, **IDS,
    )  # fmt: skip
    return {**config, **extra}


def layer_names(layout: str, i: int) -> dict[str, str]:
    if layout == "llada":
        p = f"model.transformer.blocks.{i}."
        roles = ("attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj",
                 "up_proj", "ff_out")  # fmt: skip
    else:
        p = f"model.layers.{i}."
        roles = ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                 "self_attn.o_proj", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj",
                 "mlp.down_proj")  # fmt: skip
    keys = ("attn_norm", "q", "k", "v", "o", "mlp_norm", "gate", "up", "down")
    return {key: f"{p}{role}.weight" for key, role in zip(keys, roles)}


def global_names(layout: str) -> dict[str, str]:
    if layout == "llada":
        return dict(embed="model.transformer.wte.weight", norm="model.transformer.ln_f.weight",
                    head="model.transformer.ff_out.weight")  # fmt: skip
    return dict(embed="model.embed_tokens.weight", norm="model.norm.weight", head="lm_head.weight")


def random_tensors(layout: str, *, kv=KV, head="untied", seed=0) -> dict[str, np.ndarray]:
    """HF tensors with std 0.2 (O(1) attention scores) and norm scales 1 + 0.1 N(0, 1).

    head: "untied" (a separate head), "absent" (tied, not stored) or "equal" (tied, stored)."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (0.2 * rng.standard_normal(shape)).astype(np.float32)

    def scale():
        return (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)

    g = global_names(layout)
    tensors = {g["embed"]: w(V, D), g["norm"]: scale()}
    for i in range(L):
        n = layer_names(layout, i)
        tensors.update({
            n["attn_norm"]: scale(), n["q"]: w(H * HD, D), n["k"]: w(kv * HD, D),
            n["v"]: w(kv * HD, D), n["o"]: w(D, H * HD), n["mlp_norm"]: scale(),
            n["gate"]: w(F, D), n["up"]: w(F, D), n["down"]: w(D, F),
        })  # fmt: skip
    if head == "untied":
        tensors[g["head"]] = w(V, D)
    elif head == "equal":
        tensors[g["head"]] = tensors[g["embed"]].copy()
    if layout == "illada":
        tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(HD // 2, np.float32)
    return tensors


def write_hf(path: pathlib.Path, config: dict, tensors: dict, shards: int = 1) -> pathlib.Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    if shards == 1:
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
        return path
    names = list(tensors)
    weight_map = {}
    for k, group in enumerate(np.array_split(np.arange(len(names)), shards)):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        save_file({names[j]: tensors[names[j]] for j in group}, str(path / file))
        weight_map.update({names[j]: file for j in group})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return path


def read_all(path: pathlib.Path) -> dict[str, np.ndarray]:
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="numpy") as handle:
            for name in handle.keys():  # noqa: SIM118
                out[name] = handle.get_tensor(name)
    return out


# ---------------------------------------------------------------------------------------------
# Independent float64 reference on the HF tensors
# ---------------------------------------------------------------------------------------------


def _rms(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _rope(x, theta):
    """x: [length, heads, hd], rotate-half with cat(freqs, freqs)."""
    hd = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    angles = np.arange(x.shape[0], dtype=np.float64)[:, None] * inv_freq
    angles = np.concatenate([angles, angles], axis=-1)[:, None, :]
    rotated = np.concatenate([-x[..., hd // 2 :], x[..., : hd // 2]], axis=-1)
    return x * np.cos(angles) + rotated * np.sin(angles)


def reference_logits(tensors, layout, ids, *, kv, theta, eps, tied) -> np.ndarray:
    """ids: [batch, length] -> float64 logits [batch, length, V]."""
    t = {k: v.astype(np.float64) for k, v in tensors.items()}
    g = global_names(layout)
    head = t[g["embed"]] if tied else t[g["head"]]
    outs = []
    for row in ids:
        x = t[g["embed"]][row]
        length = len(row)
        for i in range(L):
            n = layer_names(layout, i)
            h = _rms(x, t[n["attn_norm"]], eps)
            q = _rope((h @ t[n["q"]].T).reshape(length, H, HD), theta)
            k = _rope((h @ t[n["k"]].T).reshape(length, kv, HD), theta)
            v = (h @ t[n["v"]].T).reshape(length, kv, HD)
            attn = np.empty((length, H, HD))
            for head_index in range(H):
                kv_index = head_index // (H // kv)  # HF repeat_kv order
                scores = q[:, head_index] @ k[:, kv_index].T / np.sqrt(HD)
                probs = np.exp(scores - scores.max(-1, keepdims=True))
                probs /= probs.sum(-1, keepdims=True)
                attn[:, head_index] = probs @ v[:, kv_index]
            x = x + attn.reshape(length, H * HD) @ t[n["o"]].T
            h = _rms(x, t[n["mlp_norm"]], eps)
            gate = h @ t[n["gate"]].T
            x = x + ((gate / (1 + np.exp(-gate))) * (h @ t[n["up"]].T)) @ t[n["down"]].T
        outs.append(_rms(x, t[g["norm"]], eps) @ head.T)
    return np.stack(outs)


def model_logits(cfg: ModelConfig, params: dict, ids) -> np.ndarray:
    graphdef = graphdef_and_specs(cfg)[0]
    return Model(cfg, graphdef, jax.tree.map(jnp.asarray, params)).logits(ids)


def rel_err(got, ref) -> float:
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


IDS_BATCH = np.random.default_rng(7).integers(0, V, size=(2, 10))

# (layout, kv heads, head, shards)
CASES = {
    "llada_single_untied_mha": ("llada", H, "untied", 1),
    "llada_sharded_untied_gqa": ("llada", KV, "untied", 3),
    "illada_sharded_head_absent": ("illada", KV, "absent", 2),
    "illada_single_head_equal_mqa": ("illada", 1, "equal", 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_float64_reference(tmp_path, case):
    layout, kv, head, shards = CASES[case]
    tied = head != "untied"
    config = (llada_config if layout == "llada" else illada_config)(kv=kv, tied=tied)
    tensors = random_tensors(layout, kv=kv, head=head)
    src = write_hf(tmp_path / "hf", config, tensors, shards)
    cfg, params, tokenizer = convert.load_hf(src)
    assert tokenizer is None
    assert (cfg.n_kv_heads, cfg.tie_embeddings, cfg.param_dtype) == (kv, tied, "float32")
    assert ("lm_head" in params) == (not tied)
    ref = reference_logits(tensors, layout, IDS_BATCH, kv=kv, theta=config["rope_theta"],
                           eps=cfg.norm_eps, tied=tied)  # fmt: skip
    assert rel_err(model_logits(cfg, params, IDS_BATCH), ref) < REL_TOL


def test_released_configs_map_to_presets():
    llada = llada_config()
    llada.update(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288,
                 vocab_size=126464, embedding_size=126464, max_sequence_length=4096,
                 rope_theta=500000.0, mask_token_id=126336, eos_token_id=126081,
                 pad_token_id=126081, bos_token_id=None)  # fmt: skip
    illada = {k: v for k, v in illada_config().items() if not k.endswith("token_id")}
    illada.update(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                  num_hidden_layers=32, head_dim=128, intermediate_size=14336,
                  vocab_size=155136, max_position_embeddings=8192)  # fmt: skip
    for config, preset in ((llada, "llada_8b"), (illada, "illada_8b")):
        cfg = hf.config_from_hf(config)
        for field, value in MODEL_PRESETS[preset].items():
            if field != "name":
                assert getattr(cfg, field) == value, (preset, field)


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout,tied,dtype", [("llada", False, np.float32),
                                               ("illada", True, ml_dtypes.bfloat16),
                                               ("illada", False, np.float32)])  # fmt: skip
def test_native_hf_native_bit_exact(tmp_path, layout, tied, dtype):
    cfg = ModelConfig(name="t", vocab_size=V, d_model=D, n_layers=L, n_heads=H, n_kv_heads=KV,
                      head_dim=HD, mlp_dim=F, max_seq_len=64, tie_embeddings=tied,
                      param_dtype="bfloat16" if dtype is ml_dtypes.bfloat16 else "float32",
                      eot_token_id=None, **IDS)  # fmt: skip
    abstract = graphdef_and_specs(cfg)[2]
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(dtype), abstract)
    out = hf.native_to_hf(cfg, params, tmp_path / "hf", layout=layout, shard_bytes=20_000)
    assert (out / "model.safetensors.index.json").is_file()
    cfg2, params2 = hf.hf_to_native(out)
    assert jax.tree.structure(params2) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8))
    assert cfg2 == ModelConfig(**{**cfg.__dict__, "name": "hf", "compute_dtype": cfg.param_dtype})


@pytest.mark.parametrize("layout,head", [("llada", "untied"), ("illada", "absent")])
def test_hf_native_hf_tensors_identical(tmp_path, layout, head):
    config = (llada_config if layout == "llada" else illada_config)(tied=head != "untied")
    tensors = random_tensors(layout, head=head)
    tensors.pop("model.layers.0.self_attn.rotary_emb.inv_freq", None)
    src = write_hf(tmp_path / "src", config, tensors, shards=2)
    cfg, params = hf.hf_to_native(src)
    dst = hf.native_to_hf(cfg, params, tmp_path / "dst", layout=layout)
    assert (dst / "model.safetensors").is_file()  # small: one shard, no index
    back = read_all(dst)
    assert sorted(back) == sorted(tensors)
    for name, value in tensors.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name], value), name
    assert hf.config_from_hf(json.loads((dst / "config.json").read_text()), name="x") == (
        hf.config_from_hf(config, name="x")
    )


def test_bf16_checkpoint_keeps_dtype_or_upcasts(tmp_path):
    tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in random_tensors("llada").items()}
    src = write_hf(tmp_path / "hf", llada_config(), tensors)
    cfg, params = hf.hf_to_native(src)
    assert (cfg.param_dtype, cfg.compute_dtype) == ("bfloat16", "bfloat16")
    assert params["embed"].dtype == ml_dtypes.bfloat16
    assert np.array_equal(params["embed"], tensors["model.transformer.wte.weight"])
    q0 = tensors["model.transformer.blocks.1.q_proj.weight"]
    assert np.array_equal(params["blocks"]["attn"]["q_proj"][1], q0.T.reshape(D, H, HD))
    cfg32, params32 = hf.hf_to_native(src, param_dtype="float32")
    assert cfg32.param_dtype == "float32" and params32["embed"].dtype == np.float32
    assert np.array_equal(params32["embed"], params["embed"].astype(np.float32))
    # The converter's plain-read path gives the same words as safetensors' own reader.
    with safe_open(str(src / "model.safetensors"), framework="numpy") as handle:
        official = handle.get_tensor("model.transformer.wte.weight")
    assert official.dtype == ml_dtypes.bfloat16 and np.array_equal(official, params["embed"])


# ---------------------------------------------------------------------------------------------
# Tied heads and malformed checkpoints
# ---------------------------------------------------------------------------------------------


def test_tied_head_that_differs_is_refused(tmp_path):
    tensors = random_tensors("illada", head="equal")
    tensors["lm_head.weight"][0, 0] += 1.0
    src = write_hf(tmp_path / "hf", illada_config(), tensors)
    with pytest.raises(hf.HfFormatError, match=r"lm_head.weight differs .*untied head in a tied"):
        hf.hf_to_native(src)


def _drop(name):
    return lambda t: t.pop(name)


def _reshape(name, shape):
    return lambda t: t.__setitem__(name, np.zeros(shape, np.float32))


BAD_TENSORS = {
    "missing": ("llada", _drop("model.transformer.blocks.1.up_proj.weight"),
                r"missing tensor.*blocks.1.up_proj.weight"),
    "missing_untied_head": ("llada", _drop("model.transformer.ff_out.weight"),
                            r"missing tensor.*ff_out.weight.*unties the head"),
    "wrong_shape": ("illada", _reshape("model.layers.0.self_attn.k_proj.weight", (32, 32)),
                    r"k_proj.weight: expected shape \[16, 32\].*got \[32, 32\]"),
    "bias": ("illada", _reshape("model.layers.1.self_attn.q_proj.bias", (32,)),
             r"unexpected tensor.*biases are not supported.*q_proj.bias"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_TENSORS))
def test_malformed_tensors_name_the_problem(tmp_path, case):
    layout, mutate, pattern = BAD_TENSORS[case]
    tensors = random_tensors(layout, head="untied" if layout == "llada" else "absent")
    mutate(tensors)
    config = llada_config() if layout == "llada" else illada_config()
    with pytest.raises(hf.HfFormatError, match=pattern):
        hf.hf_to_native(write_hf(tmp_path / "hf", config, tensors))


BAD_CONFIGS = {
    "illada_attention_bias": (illada_config(attention_bias=True), r"attention_bias=True.*biases"),
    "illada_mlp_bias": (illada_config(mlp_bias=True), r"mlp_bias=True"),
    "illada_gelu": (illada_config(hidden_act="gelu"), r"hidden_act='gelu'.*silu"),
    "illada_rope_scaling": (illada_config(rope_scaling={"rope_type": "linear", "factor": 2.0}),
                            r"rope_scaling=.*not supported"),
    "illada_layernorm": ({k: v for k, v in illada_config(layer_norm_eps=1e-5).items()
                          if k != "rms_norm_eps"}, r"layer_norm_eps means plain LayerNorm"),
    "llada_include_bias": (llada_config(include_bias=True), r"include_bias=True"),
    "llada_swiglu": (llada_config(activation_type="swiglu"), r"activation_type='swiglu'"),
    "llada_layernorm": (llada_config(layer_norm_type="default"), r"layer_norm_type='default'"),
    "llada_missing_field": ({k: v for k, v in llada_config().items() if k != "n_layers"},
                            r"required field 'n_layers' is missing"),
    "mask_is_pad": (llada_config(mask_token_id=0), r"mask_token_id=0.*pad_token_id"),
    "unknown_family": ({"model_type": "gpt2", "n_embd": 32}, r"neither a LLaDA config"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_unsupported_configs_are_refused(case):
    config, pattern = BAD_CONFIGS[case]
    with pytest.raises(hf.HfFormatError, match=pattern):
        hf.config_from_hf(config)


def test_unknown_harmless_fields_are_ignored():
    cfg = hf.config_from_hf(illada_config(transformers_version="4.57.1", use_cache=True, foo=1))
    assert (cfg.d_model, cfg.n_kv_heads, cfg.head_dim, cfg.rope_theta) == (D, KV, HD, 500_000.0)


# ---------------------------------------------------------------------------------------------
# Native checkpoints, tokenizer, command line
# ---------------------------------------------------------------------------------------------


def _write_tokenizer(path: pathlib.Path) -> int:
    """A byte-level BPE tokenizer.json with pad/unk/bos/eos/mask at ids 0..4; returns its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=270, special_tokens=["<pad>", "<unk>", "<s>", "</s>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(["the theme of the thesis " * 20], trainer=trainer)
    tok.save(str(path / "tokenizer.json"))
    return tok.get_vocab_size()


def test_save_native_then_api_load(tmp_path):
    vocab = 320
    config = illada_config(tied=True, vocab_size=vocab)
    tensors = random_tensors("illada", head="absent")
    tensors["model.embed_tokens.weight"] = np.random.default_rng(3).standard_normal(
        (vocab, D)).astype(np.float32)  # fmt: skip
    src = write_hf(tmp_path / "hf", config, tensors)
    assert _write_tokenizer(src) <= vocab
    cfg, params, tokenizer = convert.load_hf(src)
    assert tokenizer is not None and tokenizer.mask_id == 4
    dst = convert.save_native(cfg, params, tmp_path / "native", tokenizer_dir=src)
    model = illada_jax.load(dst)
    assert model.config == cfg
    assert model.tokenizer is not None and (dst / "tokenizer" / "tokenizer.json").is_file()
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(model.params)):
        assert np.array_equal(a, np.asarray(b))
    ids = IDS_BATCH
    assert np.array_equal(model.logits(ids), model_logits(cfg, params, ids))
    with pytest.raises(hf.HfFormatError, match="already holds checkpoints"):
        convert.save_native(cfg, params, dst)


def _convert(**kwargs) -> int:
    argv = ["convert"]
    for key, value in kwargs.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return cli.main(argv)


def test_cli_round_trip(tmp_path, capsys):
    tensors = random_tensors("llada", head="untied")
    src = write_hf(tmp_path / "hf", llada_config(), tensors, shards=2)
    assert _convert(**{"from": "hf", "to": "native", "src": src, "dst": tmp_path / "nat"}) == 0
    assert (tmp_path / "nat" / "checkpoints" / "0" / "state").is_dir()
    args = {"from": "native", "to": "hf", "src": tmp_path / "nat", "dst": tmp_path / "back",
            "layout": "llada", "shard_size": "20KB"}  # fmt: skip
    assert _convert(**args) == 0
    assert (tmp_path / "back" / "model.safetensors.index.json").is_file()
    back = read_all(tmp_path / "back")
    assert sorted(back) == sorted(tensors)
    assert all(np.array_equal(back[name], value) for name, value in tensors.items())
    capsys.readouterr()
    assert _convert(**args) == 2  # a user error: one line, exit code 2
    assert "not empty" in capsys.readouterr().err
    assert _convert(**{"from": "hf", "to": "native", "src": tmp_path, "dst": tmp_path / "new"}) == 2
    assert "no config.json" in capsys.readouterr().err


def test_cli_convert_is_all_or_nothing(tmp_path, capsys, monkeypatch):
    """A convert that dies midway leaves no --dst (nothing half-written loads); the next run
    deletes what the dead one left and writes the whole checkpoint, with the tokenizer path
    pointing at --dst, not at the staging directory."""
    vocab = 320
    tensors = random_tensors("illada", head="absent")
    tensors["model.embed_tokens.weight"] = np.random.default_rng(3).standard_normal(
        (vocab, D)).astype(np.float32)  # fmt: skip
    src = write_hf(tmp_path / "hf", illada_config(tied=True, vocab_size=vocab), tensors)
    _write_tokenizer(src)
    dst = tmp_path / "nat"
    real_save = convert.save_native

    def dies_after_the_params(cfg, params, staging, **kwargs):
        real_save(cfg, params, staging, **kwargs)  # everything written ...
        raise OSError(28, "No space left on device", str(staging / "more"))  # ... then a failure

    monkeypatch.setattr(convert, "save_native", dies_after_the_params)
    args = {"from": "hf", "to": "native", "src": src, "dst": dst}
    assert _convert(**args) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert not dst.exists() and list(tmp_path.iterdir()) == [tmp_path / "hf"]
    # kill -9 leaves the staging directory itself: the next run starts over without it.
    (tmp_path / ".nat.partial" / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(convert, "save_native", real_save)
    assert _convert(**args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "nat"]
    model = illada_jax.load(dst)
    assert model.tokenizer is not None
    assert model.experiment.data.tokenizer == str(dst / "tokenizer")
    _, expected, _ = convert.load_hf(src)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(model.params)):
        assert np.array_equal(a, np.asarray(b))


def test_an_interrupted_remote_style_write_is_refused(tmp_path):
    """A directory holding the incomplete-write marker (object storage cannot rename
    directories, so writes there are marked until they finish) does not load."""
    src = write_hf(tmp_path / "hf", llada_config(), random_tensors("llada", head="untied"))
    (src / storage.INCOMPLETE_MARKER).write_text("being written")
    with pytest.raises(storage.StorageError, match="was being written"):
        illada_jax.load(src)


def test_api_load_reads_an_hf_directory(tmp_path):
    """`illada_jax.load(HF_DIR)` converts on the fly and gives the reference logits."""
    config = illada_config(kv=KV, tied=True)
    tensors = random_tensors("illada", kv=KV, head="absent")
    src = write_hf(tmp_path / "hf", config, tensors, 2)
    model = illada_jax.load(src)
    assert model.config.n_kv_heads == KV and model.config.tie_embeddings
    ref = reference_logits(tensors, "illada", IDS_BATCH, kv=KV, theta=config["rope_theta"],
                           eps=model.config.norm_eps, tied=True)  # fmt: skip
    assert rel_err(model.logits(IDS_BATCH), ref) < REL_TOL
