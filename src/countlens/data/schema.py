"""The JSONL example row: a superset of the original study's fields, checked on read."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from countlens.errors import InputError
from countlens.io import read_jsonl

FIELD_ORDER = ("id", "prompt", "category", "word_list", "answer", "list_length",
               "expected_completion", "template", "match_positions")


class Example(BaseModel):
    """One counting prompt. `id`, `template` and `match_positions` are ours; the rest is the original's."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: str | None = None
    prompt: str
    category: str
    word_list: list[str]
    answer: int
    list_length: int | None = None
    expected_completion: str | None = None
    template: str | None = None
    match_positions: list[int] | None = None

    @field_validator("answer")
    @classmethod
    def _non_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be >= 0")
        return v

    def row(self) -> dict[str, Any]:
        d = self.model_dump(exclude_none=True)
        return {k: d[k] for k in FIELD_ORDER if k in d} | {k: v for k, v in d.items() if k not in FIELD_ORDER}


def _first_error(e: ValidationError) -> tuple[str, str]:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "?"
    msg = "missing" if err["type"] == "missing" else err["msg"].lower()
    return loc, msg


def read_examples(path: str | os.PathLike, n: int | None = None,
                  categories: set[str] | None = None) -> Iterator[tuple[int, Example]]:
    """Yield (line, Example); the first malformed row raises an InputError naming file, line and field."""
    for lineno, obj in read_jsonl(path, n):
        try:
            ex = Example.model_validate(obj)
        except ValidationError as e:
            fieldname, msg = _first_error(e)
            raise InputError(msg, file=str(path), line=lineno, field=fieldname) from None
        if categories is not None and ex.category not in categories:
            raise InputError(f"unknown category '{ex.category}' (lexicon has: {', '.join(sorted(categories))})",
                             file=str(path), line=lineno, field="category")
        if ex.id is None:
            ex.id = f"line-{lineno}"
        yield lineno, ex
