"""A synthetic token stream with learnable structure, for smoke runs before real data is wired.

Tokens follow a fixed random Markov chain: each of `n_states` token ids has `branching` possible
successors, so a model that sees the neighbours of a masked position can predict it well and the
training loss visibly falls from ln(vocab) towards the chain's entropy (ln(branching) per token
when only one neighbour is visible). Special ids (below `first_id`) never occur.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def markov_batches(
    seed: int,
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    *,
    first_id: int = 5,
    n_states: int = 64,
    branching: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields `{"tokens": int32 [batch_size, seq_len]}` forever, deterministically from `seed`."""
    n_states = min(n_states, vocab_size - first_id)
    if n_states < 1:
        raise ValueError(
            f"vocab_size={vocab_size} leaves no ids above the special ids (< {first_id})"
        )
    rng = np.random.default_rng(seed)
    successors = rng.integers(0, n_states, size=(n_states, branching))
    while True:
        state = rng.integers(0, n_states, size=batch_size)
        choices = rng.integers(0, branching, size=(batch_size, seq_len))
        tokens = np.empty((batch_size, seq_len), np.int32)
        for position in range(seq_len):
            tokens[:, position] = state + first_id
            state = successors[state, choices[:, position]]
        yield {"tokens": tokens}
