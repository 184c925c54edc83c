"""Text samples during training: the run shows what the model says, not only its loss.

At every eval step the runner calls `TrainingSamples.write(step, params)`: fixed-canvas
generation (one token per step, docs/algorithms.md#sampling) after each of `train.sample_prompts`,
in blocks of `train.sample_block_length` (default: one block, pure diffusion), greedy or at
`train.sample_temperature` with seed 0 (the same samples for the same parameters), written to
`WORKDIR/samples/step_<step>.txt`; the last ones are printed when training ends. Prompts are
plain text for pre-training and one user turn in the chat template for SFT. A block-diffusion or
autoregressive run samples as it generates (`sampling/blockwise.py`): block by block or token by
token, up to `train.sample_length` tokens.

Single-process runs only: under `jax.distributed` the prompt would have to be a global array on
every process; multi-process runs skip samples and say so once.
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax
import numpy as np

from illada_jax import storage
from illada_jax.ckpt import rundir
from illada_jax.config.schema import Experiment
from illada_jax.sampling.blockwise import Decoding, generate_ar, generate_blocks
from illada_jax.sampling.generate import (
    SamplingOptions,
    SpecialIds,
    first_stop,
    generate,
    left_pad,
)


class TrainingSamples:
    def __init__(self, experiment: Experiment, graphdef, out_dir, tokenizer, mesh=None):
        tcfg = experiment.train
        self.mesh = mesh  # the mesh the parameters live on: the sampler compiles under it
        self.enabled = bool(tcfg.sample_length and tcfg.sample_prompts and tokenizer)
        self.skipped_reason = None
        if self.enabled and jax.process_count() > 1:
            self.enabled = False
            self.skipped_reason = "samples are skipped in multi-process runs"
        self.graphdef = graphdef
        self.dir = storage.path(out_dir) / rundir.SAMPLES
        self.tokenizer = tokenizer
        self.prompts = list(tcfg.sample_prompts)
        self.ids = SpecialIds.from_config(experiment.model)
        length = tcfg.sample_length
        self.options = SamplingOptions(gen_length=length, steps=length,
                                       block_length=tcfg.sample_block_length or length,
                                       temperature=tcfg.sample_temperature)  # fmt: skip
        self.decoding = Decoding.of(experiment)
        self.max_seq_len = experiment.model.max_seq_len
        self.last: list[tuple[str, str]] = []
        self.step: int | None = None  # the step of `last`
        if not self.enabled:
            return
        if experiment.diffusion.objective.startswith("sft"):
            from illada_jax.data.chat.sft import ChatFormatter

            formatter = ChatFormatter(tokenizer)
            rows = [formatter.prompt([{"role": "user", "content": p}]) for p in self.prompts]
        else:
            rows = [tokenizer.encode(p) for p in self.prompts]
        width = max(len(r) for r in rows)
        self.prompt_ids, self.prompt_mask = left_pad(rows, experiment.model.pad_token_id, width)

    def _decode(self, generated: np.ndarray) -> str:
        stops = [t for t in (self.ids.eos, self.ids.eot) if t is not None]
        return self.tokenizer.decode(generated[: first_stop(generated, stops)].tolist(),
                                     skip_special=True)  # fmt: skip

    def _generate(self, params) -> np.ndarray:
        """The canvas [B, P + generated] after the prompts, with the run's decoding."""
        kind, size = self.decoding.kind, self.decoding.block_size
        if kind == "diffusion":
            return generate(self.graphdef, params, self.ids, self.prompt_ids, self.options,
                            prompt_mask=self.prompt_mask, mesh=self.mesh)  # fmt: skip
        common = dict(max_seq_len=self.max_seq_len, prompt_mask=self.prompt_mask)
        if kind == "block_diffusion":
            sample = generate_blocks
            opts = dataclasses.replace(self.options, steps=size)
            common["block_size"] = size
        else:
            sample = generate_ar
            opts = dataclasses.replace(self.options, block_length=self.options.gen_length)
        mesh = contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)
        with mesh:  # traced under the parameters' mesh, as the train step is
            return sample(self.graphdef, params, self.ids, self.prompt_ids, opts, **common).ids

    def write(self, step: int, params) -> list[tuple[str, str]]:
        """Generate after every prompt with `params`; write and return (prompt, text) pairs."""
        if not self.enabled:
            return []
        canvas = self._generate(params)
        width = self.prompt_ids.shape[1]
        self.last = [(p, self._decode(row[width:])) for p, row in zip(self.prompts, canvas)]
        self.step = step
        self.dir.mkdir(parents=True, exist_ok=True)
        text = "".join(f"### {p}\n{p}{t}\n\n" for p, t in self.last)
        storage.atomic_write(self.dir / f"step_{step:08d}.txt", text.encode("utf-8"))
        return self.last
