"""illada-jax: masked-diffusion language models (LLaDA / iLLaDA) in JAX.

The public Python API (DESIGN §5): `load(path) -> Model` and `Model`; training is
`illada_jax.train.loop.train` (or `illada train`).
"""

from illada_jax.api import Model, load

__all__ = ["Model", "load"]
