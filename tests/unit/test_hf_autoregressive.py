"""Autoregressive checkpoints in (docs/models.md#autoregressive-checkpoints): tiny random Llama
and Qwen2 models built here with `transformers` (no download) convert to native models whose
logits under causal attention equal `transformers`' to 1e-4 (GQA, Qwen2's q/k/v biases, tied and
untied heads, Llama 3 RoPE scaling); native -> HF -> native is bit-exact and the HF copy loads in
`transformers` with the same logits; the mask token comes from the caller, an unused embedding
row or an added one; unsupported checkpoints fail with one line naming the fix."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the `hf` extra (CI installs it)
transformers = pytest.importorskip("transformers")

from illada_jax.ckpt.convert import default_layout, save_native  # noqa: E402
from illada_jax.ckpt.hf import HfFormatError, hf_to_native, native_to_hf  # noqa: E402
from illada_jax.cli import main  # noqa: E402
from illada_jax.model.masks import CAUSAL  # noqa: E402

VOCAB = 96
SHAPE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
             bos_token_id=1, eos_token_id=2)  # fmt: skip
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}  # fmt: skip

CASES = {
    "llama_untied_rope_llama3": ("llama", dict(tie_word_embeddings=False,
                                               rope_scaling=LLAMA3_ROPE)),  # fmt: skip
    "llama_tied_linear_rope": ("llama", dict(tie_word_embeddings=True,
                                             rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "qwen2_untied": ("qwen2", dict(tie_word_embeddings=False)),
    "qwen2_tied": ("qwen2", dict(tie_word_embeddings=True)),
}  # fmt: skip


def hf_model(kind: str, seed: int = 0, **overrides):
    """A random transformers Llama / Qwen2 of SHAPE (with `overrides`) in eval mode."""
    torch.manual_seed(seed)
    make = (transformers.LlamaConfig, transformers.LlamaForCausalLM) if kind == "llama" else (
        transformers.Qwen2Config, transformers.Qwen2ForCausalLM)  # fmt: skip
    model = make[1](make[0](**{**SHAPE, **overrides})).eval()
    with torch.no_grad():  # random biases and norm scales too (they start at 0 and 1)
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()


def native_logits(cfg, params, tokens: np.ndarray) -> np.ndarray:
    """The native model with `params` (a pure dict), causal attention: logits [B, L, V]."""
    import jax.numpy as jnp
    from flax import nnx

    from illada_jax.model import Transformer

    module = Transformer(cfg, rngs=nnx.Rngs(0))
    state = nnx.state(module, nnx.Param)
    state.replace_by_pure_dict(params)
    nnx.update(module, state)
    return np.asarray(module(jnp.asarray(tokens), pattern=CAUSAL))


TOKENS = np.random.default_rng(0).integers(3, VOCAB, (2, 40))  # past 16 / 2: scaling matters


@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_logits_equal_transformers_under_causal_attention(tmp_path, case):
    kind, overrides = CASES[case]
    model = hf_model(kind, **overrides)
    model.save_pretrained(tmp_path / "hf")
    cfg, params = hf_to_native(tmp_path / "hf", mask_token_id=VOCAB - 1)
    assert cfg.qkv_bias == (kind == "qwen2") and cfg.n_kv_heads == 2
    assert cfg.tie_embeddings == overrides["tie_word_embeddings"]
    assert cfg.mask_token_id == VOCAB - 1 and cfg.eos_token_id == 2 and cfg.pad_token_id == 2
    ref = hf_logits(model, TOKENS)
    got = native_logits(cfg, params, TOKENS)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4
    if "rope" in case:  # the scaling is really applied: without it the logits differ
        plain = dataclasses.replace(cfg, rope_scaling="none")
        assert np.abs(native_logits(plain, params, TOKENS) - ref).max() > 1e-3


@pytest.mark.parametrize("case", ["llama_untied_rope_llama3", "qwen2_tied"])
def test_native_hf_native_round_trip_is_bit_exact(tmp_path, case):
    kind, overrides = CASES[case]
    model = hf_model(kind, seed=1, **overrides)
    model.save_pretrained(tmp_path / "hf")
    cfg, params = hf_to_native(tmp_path / "hf", mask_token_id=VOCAB - 1)
    layout = default_layout(cfg)
    assert layout == kind
    if kind == "qwen2":  # an adapted model with the shifted head keeps it on the way back
        cfg = dataclasses.replace(cfg, shifted_logits=True)
    native_to_hf(cfg, params, tmp_path / "back", layout=layout)
    cfg2, params2 = hf_to_native(tmp_path / "back")  # the mask id is in its config.json now
    assert cfg2 == dataclasses.replace(cfg, name="back")
    flat = lambda tree, prefix="": {  # noqa: E731
        k2: v2 for k, v in tree.items()
        for k2, v2 in (flat(v, prefix + k + ".") if isinstance(v, dict) else {prefix + k: v}).items()
    }  # fmt: skip
    a, b = flat(params), flat(params2)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    # transformers reads the written checkpoint back, with the original's logits.
    again = getattr(transformers, f"{'Llama' if kind == 'llama' else 'Qwen2'}ForCausalLM")
    reloaded = again.from_pretrained(tmp_path / "back").eval()
    np.testing.assert_allclose(hf_logits(reloaded, TOKENS), hf_logits(model, TOKENS), atol=1e-5)


def test_mask_token_from_an_unused_row_or_an_added_one(tmp_path):
    from tokenizers import Tokenizer, models

    model = hf_model("qwen2", tie_word_embeddings=False)
    model.save_pretrained(tmp_path / "hf")
    # A tokenizer that produces ids 0..89 only: rows 90..95 are unused (Qwen2.5's padded vocab).
    Tokenizer(models.WordLevel({f"w{i}": i for i in range(90)}, unk_token="w0")).save(
        str(tmp_path / "hf" / "tokenizer.json"))  # fmt: skip
    cfg, _ = hf_to_native(tmp_path / "hf")
    assert cfg.mask_token_id == 90 and cfg.vocab_size == VOCAB
    cfg, params = hf_to_native(tmp_path / "hf", add_mask_token=True)
    assert cfg.mask_token_id == VOCAB and cfg.vocab_size == 128
    embed = params["embed"]
    np.testing.assert_allclose(embed[VOCAB:], np.repeat(embed[:VOCAB].mean(0, keepdims=True),
                                                        128 - VOCAB, 0), rtol=1e-6)  # fmt: skip
    ref = hf_logits(model, TOKENS)  # the original rows still give transformers' logits
    got = native_logits(cfg, params, TOKENS)[..., :VOCAB]
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4


def _hf_dir_with_tokenizer(path, text: str):
    """A Qwen2 checkpoint whose tokenizer.json (a byte-level BPE trained here on `text`, with
    <s> = 1 and </s> = 2) produces 300 ids: rows 300..319 of its 320-row embedding are unused."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    assert tok.get_vocab_size() == 300
    hf_model("qwen2", vocab_size=320, max_position_embeddings=128).save_pretrained(path)
    tok.save(str(path / "tokenizer.json"))


def test_an_hf_checkpoint_becomes_a_run_that_trains_as_ar_and_block_diffusion(tmp_path, capsys,
                                                                            monkeypatch):  # fmt: skip
    # The user's path, by the command line: convert (the mask: the first unused row), prepare
    # text with the converted tokenizer, train from the converted weights.
    from illada_jax.data.sources.corpus import embedded_documents

    monkeypatch.chdir(tmp_path)
    docs = [d.text for d in embedded_documents("heldout")][:40]
    _hf_dir_with_tokenizer(tmp_path / "Qwen2.5-7B", "\n".join(docs))
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    assert main(["convert", "--from", "hf", "--to", "native", "--src", "Qwen2.5-7B",
                 "--dst", "runs/qwen2_5_7b-native"]) == 0  # fmt: skip
    assert "qwen2 layout" in capsys.readouterr().out
    config = json.loads((tmp_path / "runs/qwen2_5_7b-native/config.json").read_text())
    assert config["model"]["mask_token_id"] == 300 and config["model"]["qkv_bias"]
    assert (
        main(
            [
                "prepare",
                "--format",
                "jsonl",
                "--input",
                "docs.jsonl",
                "--tokenizer",
                "runs/qwen2_5_7b-native/tokenizer/tokenizer.json",
                "--output",
                "data/qwen",
            ]
        )
        == 0
    )
    from illada_jax.inference import load
    from illada_jax.sampling.blockwise import Decoding

    for objective, extra in (
        ("ar", []),
        ("block_diffusion", ["--config=set:diffusion.block_size=16"]),
    ):
        workdir = f"runs/qwen-{objective}"
        assert main(["train", "--config=file:runs/qwen2_5_7b-native/config.json",
                     "--config=set:checkpoint.init_from=runs/qwen2_5_7b-native",
                     f"--config=set:diffusion.objective={objective}", *extra,
                     "--config=set:data.datasets=('data/qwen',)", "--config=set:train.steps=2",
                     "--config=set:train.seq_len=64", "--config=set:train.batch_size=2",
                     "--config=set:train.eval_every=0", "--config=set:train.sample_length=0",
                     f"--workdir={workdir}"]) == 0  # fmt: skip
        model = load(workdir)
        assert model.decoding.kind == objective and model.tokenizer.mask_id == 300
        assert isinstance(model.generate_text("the", gen_length=16), str)
    assert Decoding.of(load("runs/qwen-block_diffusion").experiment).block_size == 16


UNSUPPORTED = {
    "no_mask": ({}, {}, r"has no mask token: pass --mask-token-id ID .* or --add-mask-token"),
    "architecture": ({"model_type": "gpt_neox"}, {"mask_token_id": 5},
                     r"model_type 'gpt_neox' is not supported; supported: llada, illada .* llama, qwen2"),
    "sliding_window": ({"model_type": "qwen2", "use_sliding_window": True}, {"mask_token_id": 5},
                       r"use_sliding_window=True is not supported"),
    "rope_yarn": ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, {"mask_token_id": 5},
                  r"RoPE scaling of type 'yarn' is not supported; supported: linear, llama3"),
    "mask_is_eos": ({}, {"mask_token_id": 2}, r"mask_token_id=2 is invalid: must differ from"),
    "rope_llama3_incomplete": ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
                               {"mask_token_id": 5},
                               r"type llama3 needs a number 'low_freq_factor', got None"),
    "no_vocab_size": ({"vocab_size": None}, {"add_mask_token": True},
                      r"vocab_size=None must be an integer"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_unsupported_checkpoints_fail_with_one_line(tmp_path, case):
    config_changes, kwargs, message = UNSUPPORTED[case]
    hf_model("llama").save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config_changes}))
    with pytest.raises(HfFormatError, match=message) as err:
        hf_to_native(tmp_path / "hf", **kwargs)
    assert "\n" not in str(err.value)


def test_a_converted_native_checkpoint_saves(tmp_path):
    hf_model("qwen2").save_pretrained(tmp_path / "hf")
    cfg, params = hf_to_native(tmp_path / "hf", mask_token_id=VOCAB - 1)
    save_native(cfg, params, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "0").is_dir()
