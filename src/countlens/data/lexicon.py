"""Lexicon: categories of words plus noise words, each word in exactly one place.

The original study's lexicon put `orange` in fruit and color and `fish`/`chicken` in
animal and food, which silently corrupted 91 of its 5,000 labels. We check at load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from countlens.data._yaml import Located, load_located
from countlens.errors import InputError

BUILTIN = {"clean-v1": "lexicon-clean-v1.yaml", "seed-v1": "lexicon-seed-v1.yaml"}
DEFAULT = "clean-v1"


@dataclass(frozen=True)
class Lexicon:
    name: str
    categories: dict[str, tuple[str, ...]]
    noise: tuple[str, ...]
    read_only: bool = False
    ambiguous: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def words(self) -> list[str]:
        """Every distinct word, in file order."""
        seen: dict[str, None] = {}
        for ws in self.categories.values():
            seen.update(dict.fromkeys(ws))
        seen.update(dict.fromkeys(self.noise))
        return list(seen)

    def places(self, word: str) -> tuple[str, ...]:
        """Categories a word belongs to ('noise' for noise words, () when unknown)."""
        out = tuple(c for c, ws in self.categories.items() if word in ws)
        return out + (("noise",) if word in self.noise else ())

    def count(self, category: str, words: list[str]) -> int:
        members = set(self.categories[category])
        return sum(w in members for w in words)

    def to_dict(self) -> dict:
        return {"categories": {c: list(ws) for c, ws in self.categories.items()},
                "noise": list(self.noise)}

    def require_clean(self) -> None:
        if self.ambiguous or self.read_only:
            words = ", ".join(sorted(self.ambiguous)) or "none"
            raise InputError(f"lexicon '{self.name}' is read-only (ambiguous words: {words}); "
                             "it can audit and import files but not generate data; use clean-v1 or your own")


def _words(loc: Located, file: str, fieldname: str) -> list[tuple[str, int]]:
    if not isinstance(loc.value, list) or not loc.value:
        raise InputError("must be a non-empty list of words", file=file, line=loc.line, field=fieldname)
    out = []
    for item in loc.value:
        w = item.value
        if not isinstance(w, str) or not w.strip() or w != w.strip():
            raise InputError(f"word {w!r} must be a non-empty string without surrounding spaces",
                             file=file, line=item.line, field=fieldname)
        out.append((w, item.line))
    return out


def parse_lexicon(loc: Located, file: str, default_name: str) -> Lexicon:
    """Validate a parsed lexicon file; any word in two places is an error unless read_only."""
    top = loc.value
    if not isinstance(top, dict):
        raise InputError("expected a mapping with 'categories' and 'noise'", file=file, line=loc.line)
    unknown = set(top) - {"name", "categories", "noise", "read_only"}
    if unknown:
        raise InputError(f"unknown key(s) {sorted(unknown)}", file=file, line=loc.line)
    if "categories" not in top or not isinstance(top["categories"].value, dict) or not top["categories"].value:
        raise InputError("missing or empty mapping", file=file, line=loc.line, field="categories")
    read_only = bool(top["read_only"].value) if "read_only" in top else False
    name = str(top["name"].value) if "name" in top else default_name
    places: dict[str, list[str]] = {}
    categories: dict[str, tuple[str, ...]] = {}
    for cat, wl in top["categories"].value.items():
        if not isinstance(cat, str) or not cat.strip():
            raise InputError(f"category name {cat!r} must be a string", file=file, line=wl.line, field="categories")
        words = []
        for w, line in _words(wl, file, f"categories.{cat}"):
            if w in words:
                raise InputError(f"word '{w}' is listed twice", file=file, line=line, field=f"categories.{cat}")
            if places.get(w) and not read_only:
                raise InputError(f"word '{w}' is already in '{places[w][0]}': a word may be in one category only",
                                 file=file, line=line, field=f"categories.{cat}")
            places.setdefault(w, []).append(cat)
            words.append(w)
        categories[cat] = tuple(words)
    noise = []
    if "noise" in top:
        for w, line in _words(top["noise"], file, "noise"):
            if w in noise:
                raise InputError(f"word '{w}' is listed twice", file=file, line=line, field="noise")
            if places.get(w) and not read_only:
                raise InputError(f"word '{w}' is in category '{places[w][0]}' and in noise",
                                 file=file, line=line, field="noise")
            places.setdefault(w, []).append("noise")
            noise.append(w)
    ambiguous = {w: tuple(p) for w, p in places.items() if len(p) > 1}
    return Lexicon(name=name, categories=categories, noise=tuple(noise), read_only=read_only, ambiguous=ambiguous)


def load_lexicon(name_or_path: str | Path | Lexicon | None = None) -> Lexicon:
    """A built-in lexicon by name (`clean-v1`, `seed-v1`) or a YAML/JSON file."""
    if isinstance(name_or_path, Lexicon):
        return name_or_path
    name_or_path = str(name_or_path or DEFAULT)
    if name_or_path in BUILTIN:
        ref = resources.files("countlens.data.resources").joinpath(BUILTIN[name_or_path])
        with resources.as_file(ref) as p:
            return parse_lexicon(load_located(p), BUILTIN[name_or_path], name_or_path)
    if not Path(name_or_path).exists():
        raise InputError(f"no built-in lexicon or file named '{name_or_path}' (built-ins: {', '.join(BUILTIN)})")
    return parse_lexicon(load_located(name_or_path), name_or_path, Path(name_or_path).stem)
