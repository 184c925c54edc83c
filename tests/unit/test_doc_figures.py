"""Figures that README.md and docs/*.md both state agree.

A figure is a number with a unit (`368–422k tokens/s`, `2.4 MB`, `5.93 nats/token`, `3 s`, ...;
both ends of a range count). Two figures are taken to state the same quantity when they have
the same unit (and, for `k`/`M`, the same following unit word when both have one) and their
surroundings (the 100 characters before and 50 after, in one sentence) share at least
`SHARED_WORDS` content words. A figure disagrees when no such figure of the other document's
sentences states its number. Code blocks are skipped (commands, not claims).

The matching is a heuristic; the self-test below shows it catches a changed figure.
"""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED_WORDS = 4
UNITS = (r"(?:tokens/s(?:/chip)?|nats/token|MB|GB|GiB|KiB|TiB|ms|s|seconds|minutes?|min|hours?|%|×"
         r"|GFLOP/s|FLOP/s|bytes|steps|M|k)")  # fmt: skip
NUMBER = r"(\d+(?:,\d{3})*(?:\.\d+)?(?:e[+-]?\d+)?)"
FIGURE = re.compile(
    rf"(?<![\w.\-]){NUMBER}(?:\s?[–-]\s?{NUMBER})?\s?({UNITS})(?![\w/])(?:\s([\w/]+))?"
)
TAILS = {"tokens/s", "tokens", "parameters", "params", "FLOP/s", "documents", "shards"}
STOP = {"the", "a", "an", "of", "in", "on", "to", "and", "or", "with", "for", "by", "at", "is",
        "are", "was", "be", "as", "its", "it", "this", "that", "from", "per", "one", "two", "each",
        "than", "not", "no", "their", "more", "less", "about"}  # fmt: skip


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z][a-z_\-]{2,}", text.lower()) if w not in STOP}


def figures(text: str, name: str) -> list[dict]:
    """Every figure of a Markdown text, with its unit, number, surroundings and sentence."""
    text = re.sub(r"\s+", " ", re.sub(r"```.*?```", " ", text, flags=re.S))
    found = []
    for index, sentence in enumerate(re.split(r"(?<=[.;!?])\s+(?=[A-Z`(])", text)):
        for match in FIGURE.finditer(sentence):
            unit, after = match.group(3), match.group(4)
            tail = after if unit in ("k", "M") and after in TAILS else None
            context = _words(sentence[max(0, match.start() - 100) : match.start()])
            context |= _words(sentence[match.end() : match.end() + 50])
            for number in filter(None, match.group(1, 2)):
                found.append({"unit": unit, "tail": tail, "number": float(number.replace(",", "")),
                              "context": context, "where": (name, index), "sentence": sentence})  # fmt: skip
    return found


def _same_quantity(a: dict, b: dict) -> bool:
    return (a["unit"] == b["unit"] and (a["tail"] == b["tail"] or None in (a["tail"], b["tail"]))
            and len(a["context"] & b["context"]) >= SHARED_WORDS)  # fmt: skip


def disagreements(ours: list[dict], theirs: list[dict]) -> list[str]:
    problems = []
    for figure in ours:
        matched = [other for other in theirs if _same_quantity(figure, other)]
        if not matched:
            continue
        sentences = {other["where"] for other in matched}
        stated = {
            o["number"] for o in theirs if o["where"] in sentences and o["unit"] == figure["unit"]
        }
        if figure["number"] not in stated:
            problems.append(
                f"{figure['where'][0]} states {figure['number']:g} {figure['unit']} in "
                f"{figure['sentence'][:160]!r}, but {matched[0]['where'][0]} states "
                f"{sorted(stated)} in {matched[0]['sentence'][:160]!r}"
            )
    return problems


def test_readme_and_docs_state_the_same_figures():
    readme = figures((ROOT / "README.md").read_text(), "README.md")
    docs = [f for path in sorted((ROOT / "docs").glob("*.md"))
            for f in figures(path.read_text(), f"docs/{path.name}")]  # fmt: skip
    assert len(readme) > 50 and len(docs) > 10  # the extraction finds the figures
    problems = disagreements(readme, docs) + disagreements(docs, readme)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("changed, caught", [("218–222k", False), ("238–242k", True),
                                             ("218–232k", True)])  # fmt: skip
def test_a_changed_figure_is_caught(changed, caught):
    readme = figures("On Beam the embedded corpus prepared at 218–222k tokens/s with 2 workers "
                     "on the 2-core machine.", "README.md")  # fmt: skip
    docs = figures(f"On a 2-core machine Beam prepared the embedded corpus at {changed} tokens/s "
                   "with 2 workers.", "docs/data.md")  # fmt: skip
    assert bool(disagreements(readme, docs) + disagreements(docs, readme)) == caught
