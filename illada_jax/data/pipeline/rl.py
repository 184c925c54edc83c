"""Prompt batches for objective=grpo (docs/algorithms.md#reinforcement-learning-diffu-grpo).

Reads a prepared RL prompt dataset (`illada prepare --format rl`). Each rollout takes
`prompts_per_step` prompts, which the sampler completes `group_size` times each; the rollout of
data step s is number `s // inner_updates` (the μ inner updates train on one rollout's
completions). Prompts longer than `width` (= train.seq_len - grpo.gen_length) are left out and
counted (`dropped`).

The same determinism contract as `Pipeline`: the prompt of row r at rollout k is a pure function
of (seed, k, r) (grain's index shuffle, reshuffled per epoch), and process p owns prompts
[p·P/N, (p+1)·P/N) of every rollout (so rows [p·R/N, (p+1)·R/N) of the completions), so the
step is the whole data position.

Output per process, `P_p` prompts left-padded (as the sampler takes them) to `width`:
`prompt [P_p, width] int32` (padding: EOS, hidden by the mask), `prompt_mask [P_p, width] int32`
(1 = a real prompt token), `example [P_p] int32` (the index of the prompt's record in `examples`,
which the reward receives).
"""

from __future__ import annotations

import grain
import numpy as np

from illada_jax.data.pipeline.batches import StepIndexedPipeline
from illada_jax.data.pipeline.packing import DataError


class RlPipeline(StepIndexedPipeline):
    output_keys = ("prompt", "prompt_mask", "example")

    def __init__(self, dataset: str, width: int, prompts_per_step: int, seed: int, *,
                 inner_updates: int = 1, process_index: int = 0,
                 process_count: int = 1):  # fmt: skip
        from illada_jax.data.preparation.post_training import load_rl
        from illada_jax.data.preparation.prepare import PrepareError

        if prompts_per_step % process_count:
            raise DataError(f"{prompts_per_step} prompts per step (train.batch_size / "
                            f"grpo.group_size) do not divide over {process_count} processes; "
                            "make train.batch_size a multiple of group_size x processes")  # fmt: skip
        try:
            prompts, examples, self.manifest = load_rl(dataset)
        except PrepareError as error:
            raise DataError(str(error)) from None
        self.dataset, self.width = dataset, width
        fits = [index for index, prompt in enumerate(prompts) if len(prompt) <= width]
        self.dropped = len(prompts) - len(fits)
        if not fits:
            raise DataError(f"{dataset}: no prompt fits train.seq_len - grpo.gen_length = {width} "
                            f"tokens ({self.dropped} dropped); raise train.seq_len")  # fmt: skip
        self.prompts = [prompts[index] for index in fits]
        self.examples = [examples[index] for index in fits]
        self.pairs = self.prompts  # StepIndexedPipeline.epochs counts these
        self.order = grain.MapDataset.range(len(self.prompts)).shuffle(seed=seed)
        self.global_batch, self.inner_updates = prompts_per_step, inner_updates
        self.per_process_batch = prompts_per_step // process_count
        self.first_row = process_index * self.per_process_batch
        self.eos_id = int(self.manifest["tokenizer"]["special_ids"]["eos"])

    def check_compatible(self, model_cfg) -> None:
        """Refuse prompts tokenised for another vocabulary or with other special ids."""
        from illada_jax.data.preparation.post_training import check_tokenizer

        check_tokenizer(self.manifest, model_cfg, self.dataset, DataError)

    def epochs(self, step: int) -> list[float]:
        return [(step // self.inner_updates) * self.global_batch / len(self.prompts)]

    def process_batch(self, step: int) -> dict[str, np.ndarray]:
        rows = self.per_process_batch
        batch = {
            "prompt": np.full((rows, self.width), self.eos_id, np.int32),
            "prompt_mask": np.zeros((rows, self.width), np.int32),
            "example": np.zeros((rows,), np.int32),
        }
        first = (step // self.inner_updates) * self.global_batch + self.first_row
        for row in range(rows):
            index = self.order[first + row]
            prompt = self.prompts[index]
            batch["prompt"][row, self.width - len(prompt) :] = prompt
            batch["prompt_mask"][row, self.width - len(prompt) :] = 1
            batch["example"][row] = index
        return batch
