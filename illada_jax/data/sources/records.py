"""What every raw-input reader shares: the bad-record rules and the input-spec grammar.

Rules for bad records (each counted under its key in `stats`, and so in the manifest):
- `invalid_utf8_replaced`: bytes that are not UTF-8 are decoded with U+FFFD replacements and the
  document is kept;
- `empty_skipped`: a document that is empty or only whitespace is dropped (a token-id document:
  one without ids; whitespace that a seqio task's tokenizer turned into ids is kept);
- `bad_json_skipped`: a jsonl line that does not parse as a JSON object is dropped;
- `missing_field_skipped`: a record without a string in `field` is dropped.
"""

from __future__ import annotations

import collections

from illada_jax.errors import IlladaError

BOM = b"\xef\xbb\xbf"


class SourceError(IlladaError, ValueError):
    """An input cannot be read at all (missing file, unknown format, missing extra)."""


def decode(raw: bytes, stats: collections.Counter) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats["invalid_utf8_replaced"] += 1
        return raw.decode("utf-8", errors="replace")


def keep(text: str, stats: collections.Counter) -> bool:
    if text.strip():
        return True
    stats["empty_skipped"] += 1
    return False


def field_text(record, field: str, stats: collections.Counter) -> str | None:
    value = record.get(field) if isinstance(record, dict) else None
    if isinstance(value, bytes):
        value = decode(value, stats)
    if not isinstance(value, str):
        stats["missing_field_skipped"] += 1
        return None
    return value if keep(value, stats) else None


def spec_parts(spec: str) -> list[str]:
    """`spec` cut at every ':' that is neither inside [...] (TFDS split slices such as
    `train[:10%]`) nor the start of `://` (object-storage paths)."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(spec):
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(depth - 1, 0)
        elif char == ":" and depth == 0 and not spec.startswith("//", i + 1):
            parts.append(spec[start:i])
            start = i + 1
    parts.append(spec[start:])
    return parts


def common(values):
    """The one value all of `values` share, None for none, "mixed" when they differ."""
    values = list(values)
    if not values:
        return None
    return values[0] if all(v == values[0] for v in values[1:]) else "mixed"
