"""Model presets (docs/models.md#shapes).

`small` and `100m` use the project's default tokenizer (8192 SentencePiece pieces: pad 0, unk 1,
bos 2, eos 3, mask 4 — the `ModelConfig` defaults), `tiny` its 1024-piece one (the same ids); the
published shapes carry the released models' vocabularies and special ids exactly as in
docs/models.md#shapes.
"""

from __future__ import annotations

from typing import Any

# docs/models.md#shapes: LLaDA's tokenizer (pad = eos; the end-of-turn id is <|eot_id|>).
LLADA_SPECIAL_IDS = dict(mask_token_id=126336, pad_token_id=126081, bos_token_id=126080,
                         eos_token_id=126081, eot_token_id=126348)  # fmt: skip
# docs/models.md#shapes: iLLaDA's tokenizer (mask `<[MASK]>` = 5; no end-of-turn id is known).
ILLADA_SPECIAL_IDS = dict(mask_token_id=5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                          eot_token_id=None)  # fmt: skip


def _shape(layers: int, d_model: int, heads: int, kv_heads: int, head_dim: int, mlp: int,
           vocab: int, max_len: int, tied: bool) -> dict[str, Any]:  # fmt: skip
    return dict(n_layers=layers, d_model=d_model, n_heads=heads, n_kv_heads=kv_heads,
                head_dim=head_dim, mlp_dim=mlp, vocab_size=vocab, max_seq_len=max_len,
                tie_embeddings=tied)  # fmt: skip


# Autoregressive models to adapt (docs/models.md#autoregressive-checkpoints), as `illada convert`
# reads them: Qwen2.5's tokenizer produces ids below 151665, so the first unused embedding row
# is the mask; Llama 3.1's mask is its first reserved special token.
QWEN2_5_SPECIAL_IDS = dict(mask_token_id=151665, pad_token_id=151643, bos_token_id=151643,
                           eos_token_id=151643, eot_token_id=None)  # fmt: skip
LLAMA3_SPECIAL_IDS = dict(mask_token_id=128002, pad_token_id=128001, bos_token_id=128000,
                          eos_token_id=128001, eot_token_id=None)  # fmt: skip

# Keyword arguments for `ModelConfig`, one dict per preset.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # 0.98M non-embedding + 0.13M tied embedding, with the shipped 1024-piece tokenizer
    # (`data.tokenizer="shipped:sp1k"`) and RoPE theta 10k (sharp local attention on short
    # windows): the CPU demo, which gets past the unigram plateau in minutes on 2 cores.
    "tiny": dict(
        name="tiny", **_shape(4, 128, 4, 2, 32, 512, 1024, 512, True), rope_theta=10_000.0
    ),
    # 24.6M parameters, plain multi-head attention.
    "small": dict(name="small", **_shape(6, 512, 8, 8, 64, 1536, 8192, 1024, True)),
    # 99.5M parameters, GQA with 3 query heads per kv head.
    "100m": dict(name="100m", **_shape(12, 768, 12, 4, 64, 2688, 8192, 2048, True)),
    # LLaDA-1B MDM (LLaDA, Table 5): 1.49B total / 0.97B non-embedding, untied.
    "llada_1b": dict(
        name="llada_1b",
        **_shape(22, 2048, 32, 4, 64, 5634, 126464, 4096, False),
        rope_theta=500_000.0,
        norm_eps=1e-5,
        **LLADA_SPECIAL_IDS,
    ),
    # LLaDA-8B: plain MHA, untied head, 8.02B total / 6.98B non-embedding.
    "llada_8b": dict(
        name="llada_8b",
        **_shape(32, 4096, 32, 32, 128, 12288, 126464, 4096, False),
        rope_theta=500_000.0,
        norm_eps=1e-5,
        **LLADA_SPECIAL_IDS,
    ),
    # iLLaDA-8B: GQA with 8 kv heads, tied embeddings, 7.62B total / 6.98B non-embedding.
    # rope_theta and norm_eps are unverified (docs/models.md#unverified-values): 500k and the HF
    # class default 1e-6.
    "illada_8b": dict(
        name="illada_8b",
        **_shape(32, 4096, 32, 8, 128, 14336, 155136, 8192, True),
        rope_theta=500_000.0,
        norm_eps=1e-6,
        **ILLADA_SPECIAL_IDS,
    ),
    # Qwen2.5-7B (autoregressive): GQA with 4 kv heads, q/k/v biases, untied head, 7.62B total.
    "qwen2_5_7b": dict(
        name="qwen2_5_7b",
        **_shape(28, 3584, 28, 4, 128, 18944, 152064, 131072, False),
        rope_theta=1_000_000.0,
        norm_eps=1e-6,
        qkv_bias=True,
        **QWEN2_5_SPECIAL_IDS,
    ),
    # Llama-3.1-8B (autoregressive): GQA with 8 kv heads, untied head, llama3 RoPE scaling.
    "llama3_8b": dict(
        name="llama3_8b",
        **_shape(32, 4096, 32, 8, 128, 14336, 128256, 131072, False),
        rope_theta=500_000.0,
        norm_eps=1e-5,
        rope_scaling="llama3",
        rope_scaling_factor=8.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_max_len=8192,
        **LLAMA3_SPECIAL_IDS,
    ),
}
