"""The demo preference pairs (`illada prepare --format pref --input demo`) for the `tiny_vrpo`
recipe: a preference a 0.6M-parameter model can learn on a laptop, and that its SFT start point
does not already hold.

Every (user, assistant) turn of the demo dialogues (chatterbot-corpus, the SFT demo's data)
gives one pair: both answers are the corpus answer followed by a closing; the chosen one ends
with a courteous closing, the rejected one with a rude one, drawn from the lists below by a
seeded generator. The rude closings are written in the King James / Shakespeare English the
quickstart model was pre-trained on, so the SFT model, which prefers the language it has seen,
ranks most pairs the wrong way round before preference training.
"""

from __future__ import annotations

import json
import random

from illada_jax import storage

COURTEOUS = ("Thank you for asking.", "I hope this helps you.", "Have a good day.",
             "Please ask me again.", "It is a pleasure to help.")  # fmt: skip
RUDE = ("Go away, thou fool.", "Thou art a fool.", "Depart from me.",
        "Speak no more to me.", "Get thee hence.")  # fmt: skip


def demo_preference_records(seed: int = 0) -> list[dict]:
    """`{"prompt", "chosen", "rejected"}` records, one per turn of the demo dialogues."""
    from illada_jax.data.chat.sft import demo_conversations

    rng = random.Random(seed)
    records = []
    for dialogue in demo_conversations():
        messages = dialogue["messages"]
        for user, assistant in zip(messages[::2], messages[1::2]):
            answer = assistant["content"].strip()
            records.append({
                "prompt": user["content"],
                "chosen": f"{answer} {rng.choice(COURTEOUS)}",
                "rejected": f"{answer} {rng.choice(RUDE)}",
            })  # fmt: skip
    return records


def demo_preference_jsonl(directory: storage.PathLike | None = None) -> storage.Path:
    """Write the demo records as JSONL (default: into the cache directory) and return the
    file, which a user can read to see what the demo prefers."""
    directory = storage.path(directory or storage.default_cache_dir())
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "pref_demo.jsonl"
    lines = "".join(json.dumps(record) + "\n" for record in demo_preference_records())
    storage.atomic_write(path, lines)
    return path
