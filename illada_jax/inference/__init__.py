"""Inference on a trained model: `load(path) -> Model` and `Model` (sampling, likelihoods)."""

from illada_jax.inference.loading import load
from illada_jax.inference.model import Model

__all__ = ["Model", "load"]
