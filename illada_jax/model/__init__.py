"""The network only (no diffusion, no sharding decisions)."""

from illada_jax.model.presets import MODEL_PRESETS
from illada_jax.model.transformer import Transformer, abstract_model, count_params

__all__ = ["MODEL_PRESETS", "Transformer", "abstract_model", "count_params"]
