"""The small Python API for notebooks and scripts (docs/architecture.md#python-api).

    import illada_jax
    run = illada_jax.experiment("config:tiny", "set:train.steps=100")
    illada_jax.run_training(run, "runs/tiny")
    model = illada_jax.load("runs/tiny")            # a run directory or one checkpoint step
    model.generate_text("The sea", gen_length=64)
    model.log_likelihood("The capital of France is", " Paris", mc_num=64)

This module only gathers what the library offers (it sits on top of the import layers, with the
command line): `Model` and `load` come from `illada_jax.inference`, `read_metrics` from the run
directory module, training from `illada_jax.train.loop`.
"""

from __future__ import annotations

import pathlib

from illada_jax.ckpt.rundir import LoadError, read_metrics
from illada_jax.config import flags
from illada_jax.config.schema import Experiment
from illada_jax.inference import Model, load

__all__ = ["LoadError", "Model", "experiment", "load", "read_metrics", "run_training"]


def experiment(*directives: str) -> Experiment:
    """A validated `Experiment` from `--config` directives (applied in order), e.g.
    `experiment("config:tiny", "fiddler:antithetic_time", "set:train.steps=100")`."""
    return flags.experiment_from_flags(list(directives))


def run_training(experiment: Experiment, workdir: str | pathlib.Path, print_fn=print) -> list[dict]:
    """Train (or resume) an `Experiment` in `workdir`, as `illada train` does; returns the
    records logged by this call (also in `WORKDIR/metrics.jsonl`).

    Call it before anything else starts JAX to give each CPU core its own device (`illada
    train`'s default on a CPU host); on GPU / TPU runtimes the devices are used as they are.
    """
    from illada_jax.parallel.mesh import configure_cpu_devices
    from illada_jax.train import loop

    if not isinstance(experiment, Experiment):
        raise TypeError(
            f"run_training needs an Experiment, got {type(experiment).__name__}; build one with "
            'illada_jax.experiment("config:tiny", "set:train.steps=100", ...)'
        )
    configure_cpu_devices(experiment.mesh.cpu_devices)
    return loop.train(experiment, workdir, print_fn=print_fn)
