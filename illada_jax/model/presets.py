"""Model presets (SPEC §2.1). `tiny`, `small` and `100m` use the project's default tokenizer
(8192 SentencePiece pieces: pad 0, unk 1, bos 2, eos 3, mask 4); the published shapes use the
released models' vocabularies and special ids, exactly as in SPEC §2.1."""

from __future__ import annotations

from typing import Any

# Keyword arguments for `ModelConfig`, one dict per preset.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # ~3.1M non-embedding + 2.1M tied embedding: trains on a 2-core CPU in minutes.
    "tiny": dict(
        name="tiny",
        vocab_size=8192,
        d_model=256,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        head_dim=64,
        mlp_dim=768,
        max_seq_len=512,
        tie_embeddings=True,
    ),
    # ~24.6M parameters.
    "small": dict(
        name="small",
        vocab_size=8192,
        d_model=512,
        n_layers=6,
        n_heads=8,
        n_kv_heads=8,
        head_dim=64,
        mlp_dim=1536,
        max_seq_len=1024,
        tie_embeddings=True,
    ),
    # ~100M parameters, GQA (3 query heads per kv head).
    "100m": dict(
        name="100m",
        vocab_size=32768,
        d_model=768,
        n_layers=12,
        n_heads=12,
        n_kv_heads=4,
        head_dim=64,
        mlp_dim=2048,
        max_seq_len=2048,
        tie_embeddings=True,
    ),
    # LLaDA-1B MDM (P-LLaDA Tab. 5): 1.49B total / 0.97B non-embedding.
    "llada_1b": dict(
        name="llada_1b",
        vocab_size=126464,
        d_model=2048,
        n_layers=22,
        n_heads=32,
        n_kv_heads=4,
        head_dim=64,
        mlp_dim=5634,
        max_seq_len=4096,
        tie_embeddings=False,
        rope_theta=500_000.0,
        norm_eps=1e-5,
        mask_token_id=126336,
        pad_token_id=126081,
        bos_token_id=126080,
        eos_token_id=126081,
        eot_token_id=126348,
    ),
    # LLaDA-8B: plain MHA, untied head, 8.02B total / 6.98B non-embedding.
    "llada_8b": dict(
        name="llada_8b",
        vocab_size=126464,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=32,
        head_dim=128,
        mlp_dim=12288,
        max_seq_len=4096,
        tie_embeddings=False,
        rope_theta=500_000.0,
        norm_eps=1e-5,
        mask_token_id=126336,
        pad_token_id=126081,
        bos_token_id=126080,
        eos_token_id=126081,
        eot_token_id=126348,
    ),
    # iLLaDA-8B: GQA with 8 kv heads, tied embeddings, 7.62B total / 6.98B non-embedding.
    # rope_theta and norm_eps are unverified in SPEC §11 (500k and the class default 1e-6).
    "illada_8b": dict(
        name="illada_8b",
        vocab_size=155136,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        head_dim=128,
        mlp_dim=14336,
        max_seq_len=8192,
        tie_embeddings=True,
        rope_theta=500_000.0,
        norm_eps=1e-6,
        mask_token_id=5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        eot_token_id=None,
    ),
}
