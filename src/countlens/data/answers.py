"""Answer parsing as the original study: strict `(N)` and lenient (last `(N)`, else first number
on the first line). PARSER_VERSION is part of every stored record's key."""

from __future__ import annotations

import re

PARSER_VERSION = "1"
_PAREN = re.compile(r"\(\s*(-?\d+)\s*\)")
_NUMBER = re.compile(r"-?\d+")
STRICT = re.compile(r"\s*\(\s*(-?\d+)\s*\)\s*")   # the whole reply (fullmatch): `(N)`


def parse_strict(text: str) -> int | None:
    """The whole reply is `(N)` (spaces inside the parentheses and around it allowed)."""
    m = STRICT.fullmatch(text or "")
    return int(m.group(1)) if m else None


def parse_lenient(text: str) -> int | None:
    """The last `(N)` anywhere, else the first number on the first non-empty line."""
    text = text or ""
    found = _PAREN.findall(text)
    if found:
        return int(found[-1])
    first = next((line for line in text.splitlines() if line.strip()), "")
    m = _NUMBER.search(first)
    return int(m.group(0)) if m else None
