"""Rebuild the shipped task data from the embedded corpus (deterministic; no network).

    python -m illada_jax.eval.tasks.build            # rewrites the *.jsonl files next to this file

Items come from the held-out King James Bible chapters of the embedded corpus
(`illada_jax.data.sources.corpus.is_heldout`), so a model pre-trained on the default corpus is scored on
verses it never saw:

- `kjv_next_word.jsonl` (multiple choice): `context` is the start of a verse, `choices` four
  words (the verse's next word and three words drawn from other held-out verses), `label` the
  index of the true word.
- `kjv_verse_end.jsonl` (generation): `context` is a verse without its last three words,
  `answer` those words without the closing punctuation.

Every item also carries its `citation` (e.g. "Psalms 23:1").
"""

from __future__ import annotations

import json
import pathlib
import random
import string
from collections.abc import Iterator

from illada_jax.data.sources import corpus

N_ITEMS = 40
N_CHOICES = 4
SEED = 20261
_WORD_CHARS = set(string.ascii_letters)


def heldout_verses() -> Iterator[dict]:
    """The verses of the held-out KJV chapters, in Bible order: dicts with citation and text."""
    path = corpus._package_dir("bible") / "data" / "kjv.jsonl"
    with path.open(encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            if corpus.is_heldout(f"kjv/{verse['book']}/{verse['chapter']}"):
                yield {"citation": verse["citation"], "text": " ".join(verse["text"].split())}


def _plain_word(word: str) -> str | None:
    """The word without trailing punctuation if it is all letters (3 or more), else None."""
    core = word.rstrip(string.punctuation)
    return core if len(core) >= 3 and set(core) <= _WORD_CHARS else None


def next_word_items(verses: list[dict], rng: random.Random) -> list[dict]:
    """Multiple-choice items: which word continues this verse?"""
    pool = sorted({w for v in verses for w in map(_plain_word, v["text"].split()) if w})
    items = []
    for verse in rng.sample(verses, len(verses)):
        words = verse["text"].split()
        if len(words) < 8:
            continue
        cut = rng.randrange(max(3, len(words) // 3), len(words) - 1)
        gold = _plain_word(words[cut])
        if gold is None:
            continue
        distractors: list[str] = []
        while len(distractors) < N_CHOICES - 1:
            word = rng.choice(pool)
            if word.lower() != gold.lower() and word not in distractors:
                distractors.append(word)
        choices = [gold, *distractors]
        rng.shuffle(choices)
        items.append({"citation": verse["citation"], "context": " ".join(words[:cut]),
                      "choices": choices, "label": choices.index(gold)})  # fmt: skip
        if len(items) == N_ITEMS:
            break
    return sorted(items, key=lambda item: item["citation"])


def verse_end_items(verses: list[dict], rng: random.Random) -> list[dict]:
    """Generation items: complete the verse (its last three words, inner punctuation-free)."""
    items = []
    for verse in rng.sample(verses, len(verses)):
        words = verse["text"].split()
        tail = words[-3:]
        if len(words) < 8 or not all(_plain_word(w) == w for w in tail[:-1]):
            continue
        last = _plain_word(tail[-1])
        if last is None:
            continue
        items.append({"citation": verse["citation"], "context": " ".join(words[:-3]),
                      "answer": " ".join([*tail[:-1], last])})  # fmt: skip
        if len(items) == N_ITEMS:
            break
    return sorted(items, key=lambda item: item["citation"])


def _write(path: pathlib.Path, items: list[dict]) -> None:
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")


def main() -> None:
    verses = list(heldout_verses())
    here = pathlib.Path(__file__).parent
    _write(here / "kjv_next_word.jsonl", next_word_items(verses, random.Random(SEED)))
    _write(here / "kjv_verse_end.jsonl", verse_end_items(verses, random.Random(SEED + 1)))
    print(f"wrote {N_ITEMS} items each to {here}")


if __name__ == "__main__":
    main()
