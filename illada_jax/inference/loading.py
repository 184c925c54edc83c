"""`load(path) -> Model`: a native checkpoint (run directory or step) or an HF directory."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from illada_jax import storage
from illada_jax.ckpt import convert
from illada_jax.ckpt.manager import restore_checkpoint_params
from illada_jax.ckpt.rundir import LoadError
from illada_jax.data.tokenizers.tokenizer import Tokenizer
from illada_jax.inference.model import Model
from illada_jax.model.transformer import graphdef_and_specs


def load(path: storage.PathLike) -> Model:
    """A `Model` from a native checkpoint (a run directory (its latest checkpoint), its
    `checkpoints/` directory or one `checkpoints/<step>` directory) or an HF directory
    (`config.json` + safetensors in the LLaDA or iLLaDA layout, converted on the fly); local or on
    object storage (`gs://...`)."""
    path = storage.path(path)
    if not path.is_dir():
        raise LoadError(f"{path} does not exist; give a run directory or a checkpoint directory")
    storage.check_complete(path)
    if convert.is_hf_checkpoint(path):  # config.json + *.safetensors (LLaDA / iLLaDA layouts)
        cfg, params, tokenizer = convert.load_hf(path)
        graphdef = graphdef_and_specs(cfg)[0]
        return Model(cfg, graphdef, jax.tree.map(jnp.asarray, params), tokenizer)
    experiment, step, params = restore_checkpoint_params(path)
    cfg = experiment.model
    tokenizer, _ = Tokenizer.for_model(experiment.data.tokenizer, cfg)
    model = Model(cfg, graphdef_and_specs(cfg)[0], jax.tree.map(jnp.asarray, params), tokenizer,
                  step=step)  # fmt: skip
    model.experiment = experiment
    return model
