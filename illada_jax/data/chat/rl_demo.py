"""The demo RL task (`illada prepare --format rl --input demo`, the `tiny_grpo` recipe): a
question of the demo dialogues (chatterbot-corpus, the SFT demo's data) with an instruction to
open the reply with a given letter, e.g. "My laptop will not boot. Start your reply with the
letter T."

The reward is verifiable: the record's `format_pattern` (`^\\W*T`) is what the built-in
`format_regex` reward checks. The letters are ones the demo's answers often open with, so the
small SFT model already opens with the asked letter sometimes (by chance, about one reply in
twelve: it does not read the instruction) and RL can teach it to follow the instruction: copy
the letter from the prompt.
"""

from __future__ import annotations

import random
import re

from illada_jax import storage

# Three letters the demo's answers often open with: a model that learns only to open with the
# most rewarded one scores about 1/3; above that it follows the instruction.
OPENING_LETTERS = ("A", "I", "T")


def opening_letter_task(n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` records `{"prompt", "answer": LETTER, "format_pattern"}`: a demo question (each user
    turn of the demo dialogues, reused in order when n exceeds them) and a letter of
    `OPENING_LETTERS` drawn at random; the same records for the same arguments."""
    from illada_jax.data.chat.sft import demo_conversations

    if n < 0:
        raise ValueError(f"opening_letter_task needs n >= 0 (got {n})")
    questions = sorted({
        message["content"].strip()
        for conversation in demo_conversations()
        for message in conversation["messages"]
        if message["role"] == "user" and 0 < len(message["content"].split()) <= 12
    })  # fmt: skip
    rng = random.Random(seed)
    rng.shuffle(questions)
    records = []
    for index in range(n):
        letter = rng.choice(OPENING_LETTERS)
        question = questions[index % len(questions)]
        question += "" if question[-1] in ".?!" else "."
        records.append({
            "prompt": f"{question} Start your reply with the letter {letter}.",
            "answer": letter,
            "format_pattern": rf"^\W*{re.escape(letter)}",
        })  # fmt: skip
    return records


def demo_rl_jsonl(directory: storage.PathLike | None = None) -> storage.Path:
    """Write 2000 `opening_letter_task` records as JSONL into `directory` (default: the cache)
    and return the file's path."""
    from illada_jax.data.chat.rl import write_jsonl

    path = storage.path(directory or storage.default_cache_dir()) / "rl_demo.jsonl"
    write_jsonl(opening_letter_task(2000, seed=0), path)
    return path
