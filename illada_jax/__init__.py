"""illada-jax: masked-diffusion language models (LLaDA / iLLaDA) in JAX.

The public Python API (docs/architecture.md#python-api): `experiment(*directives)` and
`run_training(experiment, workdir)` (as `illada train`), `read_metrics(workdir)`, `load(path) ->
Model` and `Model`; figures in `illada_jax.viz`. (`illada_jax.train` is the training package.)
"""

from illada_jax.api import Model, experiment, load, read_metrics, run_training

__all__ = ["Model", "experiment", "load", "read_metrics", "run_training"]
