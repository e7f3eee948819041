"""Small file helpers: every result file is complete or absent (temp name, then rename)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from countlens.errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result file gets the umask's mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def dumps_row(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(", ", ": "))


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(dumps_row(row) + "\n")
            n += 1
    return n


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_jsonl(path: str | os.PathLike, n: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for the first `n` non-blank rows; bad JSON is an InputError."""
    path = str(path)
    if not os.path.exists(path):
        raise InputError("file not found", file=path)
    count = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if n is not None and count >= n:
                return
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"invalid JSON ({e.msg} at column {e.colno})", file=path, line=lineno) from None
            if not isinstance(obj, dict):
                raise InputError("expected a JSON object", file=path, line=lineno)
            count += 1
            yield lineno, obj


def short_warning(asked: int | None, got: int, what: str, source: Any) -> str | None:
    """The warning when --n asked for more than `source` holds (None when it holds enough)."""
    if asked is None or got >= asked:
        return None
    return f"warning: --n {asked} asked, but {source} holds only {got} {what}; running on {got}"


def write_parquet(path: str | Path, frame) -> None:
    """A DataFrame as Parquet, complete or absent."""
    with atomic_path(Path(path)) as tmp:
        frame.to_parquet(tmp, index=False)
