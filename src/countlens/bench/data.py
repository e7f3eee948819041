"""Benchmark input: our JSONL rows, the original study's file, or any JSONL with
`prompt`+`answer` or `input`+`target` (BIG-Bench style: targets like "8" are read as integers)."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, replace

from pydantic import ValidationError

from countlens.errors import InputError
from countlens.io import read_jsonl


@dataclass(frozen=True)
class BenchExample:
    id: str
    prompt: str
    answer: int
    category: str | None = None
    list_length: int | None = None
    line: int = 0
    word_list: tuple[str, ...] | None = None   # our rows: what a template renders (--template)

    @property
    def prompt_hash(self) -> str:
        return hashlib.sha256(self.prompt.encode()).hexdigest()[:16]


def _as_int(value: object, file: str, line: int, field: str) -> int:
    if isinstance(value, bool):
        raise InputError(f"must be a non-negative integer, got {value!r}", file=file, line=line, field=field)
    if isinstance(value, int):
        n = value
    elif isinstance(value, float) and value.is_integer():
        n = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        n = int(value)
    else:
        raise InputError(f"must be a non-negative integer or a string of digits, got {value!r}",
                         file=file, line=line, field=field)
    if n < 0:
        raise InputError(f"must be >= 0, got {n}", file=file, line=line, field=field)
    return n


def _ours(obj: dict, file: str, line: int) -> BenchExample:
    from countlens.data.schema import Example, _first_error

    try:
        ex = Example.model_validate(obj)
    except ValidationError as e:
        field, msg = _first_error(e)
        raise InputError(msg, file=file, line=line, field=field) from None
    return BenchExample(id=str(ex.id) if ex.id is not None else f"line-{line}", prompt=ex.prompt, answer=ex.answer,
                        category=ex.category, list_length=ex.list_length or len(ex.word_list), line=line,
                        word_list=tuple(ex.word_list))


def _external(obj: dict, file: str, line: int) -> BenchExample:
    if "prompt" in obj or "answer" in obj:
        pk, ak = "prompt", "answer"
    elif "input" in obj or "target" in obj:
        pk, ak = "input", "target"
    else:
        raise InputError("a row needs 'prompt' and 'answer' (or 'input' and 'target')", file=file, line=line)
    for key in (pk, ak):
        if key not in obj:
            raise InputError("missing", file=file, line=line, field=key)
    prompt = obj[pk]
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("must be a non-empty string", file=file, line=line, field=pk)
    category = obj.get("category")
    length = obj.get("list_length")
    return BenchExample(id=str(obj.get("id", f"line-{line}")), prompt=prompt, answer=_as_int(obj[ak], file, line, ak),
                        category=str(category) if category is not None else None,
                        list_length=_as_int(length, file, line, "list_length") if length is not None else None,
                        line=line)


def render(examples: list[BenchExample], template, file: str | None = None) -> list[BenchExample]:
    """Each example's prompt rebuilt with `template` from its category and word list (ids kept)."""
    from countlens.data.templates import load_template

    tpl = load_template(template)
    bad = next((ex for ex in examples if ex.category is None or ex.word_list is None), None)
    if bad is not None:
        raise InputError(f"--template needs rows with 'category' and 'word_list' to render (template "
                         f"'{tpl.name}')", file=file, line=bad.line, field="word_list")
    return [replace(ex, prompt=tpl.render(ex.category, list(ex.word_list))) for ex in examples]


def load_examples(path: str | os.PathLike, n: int | None = None) -> list[BenchExample]:
    """The first `n` rows in file order; the first bad row raises an InputError (file, line, field)."""
    file = str(path)
    if n is not None and n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    out: list[BenchExample] = []
    seen: dict[str, int] = {}
    for line, obj in read_jsonl(path, n):
        ex = _ours(obj, file, line) if "word_list" in obj and "category" in obj else _external(obj, file, line)
        if ex.id in seen:
            raise InputError(f"duplicate id '{ex.id}' (first on line {seen[ex.id]})", file=file, line=line,
                             field="id")
        seen[ex.id] = line
        out.append(ex)
    if not out:
        raise InputError("no rows", file=file)
    return out
