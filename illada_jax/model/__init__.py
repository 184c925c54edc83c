"""The network only (no diffusion, no sharding decisions)."""

from illada_jax.model.transformer import Transformer, abstract_model, count_params

__all__ = ["Transformer", "abstract_model", "count_params"]
