"""A loss spike in a real run triggers the health policy (`train.health_policy`), end to end.

The tiny preset trains in-process on a small prepared dataset; the batch at data position
SPIKE - 1 (the one optimizer step SPIKE reads) is replaced by tokens that never occur in the
data, so that step's masked cross-entropy lands far above the rolling ceiling (mean +
`spike_sigma`·std of the last `spike_window` healthy steps), while every other step stays well
below it. The corruption is tied to the data position, as a real bad batch is: a rollback, which
skips the batches back to the restored step, does not meet it again.

- skip: the train step leaves parameters and optimiser state as they were (only the step counter
  moves), `LossHealth` records an `unhealthy_loss` event and keeps the spike out of its window;
  the run goes on to the end.
- rollback: the newest checkpoint before the spike is restored, the batches since then are
  skipped and the learning rate is halved; the run goes on to the end.
"""

from __future__ import annotations

import itertools
import json

import jax
import numpy as np
import pytest

from illada_jax.config import flags
from illada_jax.data.pipeline import batches as pipeline_lib

SPIKE = 24  # the optimizer step (1-based) whose batch is corrupted
STEPS = 28
WINDOW, SIGMA = 8, 6.0
CKPT_EVERY = 4  # rollback: checkpoints 20 and earlier exist when step 24 spikes

RUN = [
    f"set:train.steps={STEPS}",
    "set:optim.warmup_steps=1",
    "set:optim.schedule='constant'",
    "set:optim.final_learning_rate=0.0",
    "set:train.log_every=1",  # every step's metrics in metrics.jsonl
    "set:train.seq_len=32",
    "set:train.batch_size=4",
    "set:model.n_layers=2",
    "set:train.sample_length=0",
    "set:train.eval_every=0",
    f"set:train.spike_window={WINDOW}",
    f"set:train.spike_sigma={SIGMA}",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Four embedded-corpus documents (~14k tokens) prepared with the tiny preset's tokenizer,
    and token ids that occur nowhere in them (the model learns to give them little mass)."""
    from illada_jax.data.preparation.prepare import prepare_token_documents
    from illada_jax.data.sources.corpus import embedded_documents
    from illada_jax.data.tokenizers.tokenizer import Tokenizer

    tokenizer = Tokenizer.load("shipped:sp1k")
    texts = [doc.text for doc in itertools.islice(embedded_documents("train"), 4)]
    documents = tokenizer.encode_batch(texts)
    directory = tmp_path_factory.mktemp("data") / "prepared"
    prepare_token_documents(documents, directory, vocab_size=tokenizer.vocab_size,
                            special_ids=tokenizer.special_ids(),
                            identity=tokenizer.identity)  # fmt: skip
    present = set(itertools.chain.from_iterable(documents))
    first_plain = max(v for v in tokenizer.special_ids().values() if v is not None) + 1
    unseen = np.array([t for t in range(first_plain, tokenizer.vocab_size) if t not in present])
    assert len(unseen) > 50
    return directory, unseen


@pytest.fixture
def spiking_data(monkeypatch, dataset):
    """Every pipeline's batch at data position SPIKE - 1 holds only unseen tokens."""
    _, unseen = dataset
    original = pipeline_lib.Pipeline.iterator

    def iterator(self, start_step=0, state=None):
        for position, batch in enumerate(original(self, start_step, state), start_step):
            if position == SPIKE - 1:
                rng = np.random.default_rng(position)
                tokens = rng.choice(unseen, batch["tokens"].shape).astype(batch["tokens"].dtype)
                batch = {**batch, "tokens": tokens}
            yield batch

    monkeypatch.setattr(pipeline_lib.Pipeline, "iterator", iterator)


def _train(workdir, dataset, *extra):
    from illada_jax.train.loop import train

    experiment = flags.experiment_from_flags([*RUN, f"set:data.datasets=('{dataset[0]}',)", *extra])
    train(experiment, workdir, print_fn=lambda *a: None)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return experiment, records


def _checkpoints(experiment, workdir, *steps):
    """{step: (state, data position, meta)}, read with the runner's own checkpoint manager."""
    from illada_jax.ckpt.manager import RunCheckpoints
    from illada_jax.train.builder import build_run

    abstract_state = build_run(experiment).abstract_state
    checkpoints = RunCheckpoints(workdir, experiment.checkpoint)
    try:
        restored = {s: checkpoints.restore_latest(abstract_state, before=s + 1) for s in steps}
    finally:
        checkpoints.close()
    assert {s: r and r[0] for s, r in restored.items()} == {s: s for s in steps}
    return {s: r[1:] for s, r in restored.items()}


def _ceiling(window) -> float:
    values = np.asarray(window)
    return float(values.mean() + SIGMA * values.std())


def _split(records):
    events = [r for r in records if r.get("event") == "unhealthy_loss"]
    steps = [r for r in records if "masked_ce" in r]
    return events, steps


def test_skip_leaves_the_state_unchanged_and_the_run_goes_on(tmp_path, dataset, spiking_data):
    workdir = tmp_path / "run"
    experiment, records = _train(workdir, dataset, "set:train.health_policy='skip'",
                                 "set:checkpoint.every=1", f"set:checkpoint.keep={STEPS}")  # fmt: skip
    events, steps = _split(records)
    by_step = {r["step"]: r for r in steps}

    assert [e["step"] for e in events] == [SPIKE]  # the spike, and nothing else
    assert events[0]["policy"] == "skip" and "restored_step" not in events[0]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))  # on to the end, once each
    assert [r["applied"] for r in steps] == [0 if s == SPIKE else 1 for s in range(1, STEPS + 1)]

    saved = _checkpoints(experiment, workdir, SPIKE - 1, SPIKE, SPIKE + 1)
    state_before, data_before, meta_before = saved[SPIKE - 1]
    state_after, data_after, meta_after = saved[SPIKE]
    state_next = saved[SPIKE + 1][0]
    ceiling = _ceiling(meta_before["recent_losses"])
    assert len(meta_before["recent_losses"]) == WINDOW
    assert by_step[SPIKE]["masked_ce"] > ceiling  # a spike by the runner's own rule ...
    assert by_step[SPIKE + 1]["masked_ce"] < ceiling  # ... and the next batch is back below
    assert by_step[SPIKE + 1]["masked_ce"] < by_step[SPIKE]["masked_ce"] - 1.0
    # The spike never entered the window the ceiling is computed from.
    assert meta_after["recent_losses"] == meta_before["recent_losses"]

    # What skip does (train/step.py): the step counter and data position move on, parameters
    # and optimiser state stay bit for bit what they were after step SPIKE - 1.
    assert int(state_after["step"]) == int(state_before["step"]) + 1 == SPIKE
    assert data_after["next_data_step"] == data_before["next_data_step"] + 1 == SPIKE
    for name in ("params", "opt_state"):
        before, after = jax.tree.leaves(state_before[name]), jax.tree.leaves(state_after[name])
        assert len(before) == len(after) > 0
        assert all(np.array_equal(a, b) for a, b in zip(before, after)), name
    # ... while the healthy step after it does update them.
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(state_after["params"]), jax.tree.leaves(state_next["params"])
        )
    ]
    assert all(changed)


def test_rollback_restores_skips_the_batches_and_lowers_the_rate(tmp_path, dataset, spiking_data):
    workdir = tmp_path / "run"
    restored_step = (SPIKE - 1) // CKPT_EVERY * CKPT_EVERY  # the newest checkpoint before it
    experiment, records = _train(workdir, dataset, "set:train.health_policy='rollback'",
                                 f"set:checkpoint.every={CKPT_EVERY}")  # fmt: skip
    events, steps = _split(records)
    lr = experiment.optim.learning_rate

    assert len(events) == 1, events
    event = events[0]
    assert event["step"] == SPIKE and event["policy"] == "rollback"
    assert event["restored_step"] == restored_step
    assert event["skipped_batches"] == SPIKE - restored_step
    assert event["lr_scale"] == experiment.train.rollback_lr_factor == 0.5

    # Steps 1..SPIKE - 1 as first run (the rollback happens before step SPIKE is logged), then
    # again from the restored step on, at half the learning rate, to the end.
    first, again = steps[: SPIKE - 1], steps[SPIKE - 1 :]
    assert [r["step"] for r in first] == list(range(1, SPIKE))
    assert [r["step"] for r in again] == list(range(restored_step + 1, STEPS + 1))
    assert all(r["applied"] == 1 for r in steps)
    assert all(r["lr"] == pytest.approx(lr) for r in first[1:])  # step 1: warmup from 0
    assert all(r["lr"] == pytest.approx(lr * 0.5) for r in again)
    # The restored run reads new batches (and runs at another rate): other losses.
    assert again[0]["masked_ce"] != first[restored_step]["masked_ce"]
    assert all(r["masked_ce"] < _ceiling([s["masked_ce"] for s in first[-WINDOW:]]) for r in again)

    _, data, meta = _checkpoints(experiment, workdir, STEPS)[STEPS]
    assert data["next_data_step"] == STEPS + (SPIKE - restored_step)  # the skipped batches
    assert meta["lr_scale"] == 0.5
