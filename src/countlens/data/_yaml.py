"""Read a YAML/JSON file keeping the line of every scalar, so errors can name it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from countlens.errors import InputError


class Located:
    """A parsed value plus the 1-based line it started on."""

    __slots__ = ("value", "line")

    def __init__(self, value: Any, line: int) -> None:
        self.value, self.line = value, line


def _convert(node: yaml.Node) -> Located:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for k, v in node.value:
            key = _convert(k).value
            out[key] = _convert(v)
        return Located(out, line)
    if isinstance(node, yaml.SequenceNode):
        return Located([_convert(v) for v in node.value], line)
    return Located(yaml.safe_load(yaml.serialize(node)), line)


def load_located(path: str | Path) -> Located:
    """Parse a YAML (or JSON) file into `Located` values; syntax errors name the line."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("file not found", file=path) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise InputError(f"cannot parse ({getattr(e, 'problem', e)})", file=path,
                         line=mark.line + 1 if mark else None) from None
    if node is None:
        raise InputError("file is empty", file=path)
    return _convert(node)


def plain(loc: Located) -> Any:
    """Strip line information."""
    v = loc.value
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v
