"""The documented pod commands, read from the docs (never copied into the rehearsal).

docs/pods.md's "From zero to a running pod job" is a sequence of shell blocks, each preceded by
a marker line `<!-- rehearsal: PHASE -->`; the rehearsal runs them as written, in order, one
bash process per block, after the `export` lines of the blocks before it (the doc's shell
variables: `$BUCKET`, `$ZONE`, ...). Its one change is `with_override`: the toy-size fiddler
appended to every `illada train` command.

`commands(text)` splits shell text into commands as a reader would see them (continuation lines
joined, comments dropped, quotes resolved): the tests compare README's pod commands with these.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import shlex

REPO = pathlib.Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "pods.md"
SECTION = "## From zero to a running pod job"
MARK = re.compile(r"^<!-- rehearsal: ([\w-]+) -->$")
OVERRIDE = "--config=fiddler:rehearsal"  # illada_jax/config/experiments.py: `rehearsal`


@dataclasses.dataclass(frozen=True)
class Block:
    """One marked shell block of the guide."""

    phase: str
    text: str
    line: int  # where it starts in the file (1-based)


def section(path: pathlib.Path = GUIDE, title: str = SECTION) -> tuple[str, int]:
    """(the text of the section `title` up to the next `## ` heading, its first line number)."""
    text = path.read_text()
    if title not in text:
        raise ValueError(f"{path} has no section {title!r}")
    start = text.index(title)
    body = text[start:].split("\n## ", 1)[0]
    return body, text[:start].count("\n") + 1


def blocks(path: pathlib.Path = GUIDE) -> list[Block]:
    """The marked ```bash blocks of the guide's section, in order."""
    body, first = section(path)
    lines = body.splitlines()
    found, previous, index = [], "", 0
    while index < len(lines):
        line = lines[index]
        if line.strip() == "```bash":
            start = index
            index += 1
            text = []
            while lines[index].strip() != "```":
                text.append(lines[index])
                index += 1
            mark = MARK.match(previous.strip())
            if mark:
                found.append(Block(mark.group(1), "\n".join(text) + "\n", first + start))
        if line.strip():
            previous = line
        index += 1
    return found


def joined_lines(text: str) -> list[str]:
    """Shell lines with continuation lines joined."""
    return [line for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def commands(text: str) -> list[list[str]]:
    """The words of every command in shell text (continuations joined, comments dropped)."""
    out = []
    for line in joined_lines(text):
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


def with_override(text: str) -> str:
    """The block with OVERRIDE appended to each command line that runs `illada train` (before a
    trailing comment): the rehearsal's one change to what the guide says."""
    out = []
    for line in joined_lines(text):
        if "illada train" in line:
            code, hash_, comment = _split_comment(line)
            line = f"{code.rstrip()} {OVERRIDE}" + (f"  {hash_}{comment}" if hash_ else "")
        out.append(line)
    return "\n".join(out) + "\n"


def _split_comment(line: str) -> tuple[str, str, str]:
    """(code, "#", comment) of a shell line, the comment being a `#` outside quotes after a
    blank; ("line", "", "") without one."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index], "#", line[index + 1 :]
    return line, "", ""


def exports(text: str) -> list[str]:
    """The `export NAME=...` lines of a block."""
    return [line for line in joined_lines(text) if line.lstrip().startswith("export ")]
