"""Names that resolve to folders: `organism` is the shipped model; anything else passes through."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def organism_path() -> Path:
    return Path(str(resources.files("countlens.models").joinpath("organism_weights")))


def resolve(name_or_path: str) -> str:
    """`organism` -> the shipped folder; `hf:NAME` -> NAME; other strings unchanged."""
    if name_or_path == "organism":
        return str(organism_path())
    if name_or_path.startswith("hf:"):
        return name_or_path[3:]
    return name_or_path
