"""What `countlens models` shows: every named model, installed or not, converted or not."""

from __future__ import annotations

from countlens.models import gguf
from countlens.models.registry import ADAPTED, NAMED, named_gguf, organism_path


def _size_mb(path) -> float:
    from pathlib import Path

    p = Path(path)
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 1e6, 1)


def list_models() -> list[dict]:
    """One row per named model: name, installed, path (the folder load() uses, None when absent),
    cached, size_mb, source; an installed GGUF model not yet converted has its future cache folder as path."""
    org = organism_path()
    rows = [{"name": "organism", "installed": True, "path": str(org), "cached": True, "size_mb": _size_mb(org),
             "source": "shipped with countlens: a 4-layer Llama trained here to count (a positive control)"}]
    for m in NAMED.values():
        f = named_gguf(m)
        folder = gguf.cache_dir_for(f) if f is not None else None
        cached = bool(folder and gguf.is_converted(folder))
        rows.append({"name": m.name, "installed": f is not None, "path": str(folder) if folder else None,
                     "cached": cached, "size_mb": _size_mb(folder if cached else f) if f is not None else None,
                     "source": m.source, "gguf": str(f) if f is not None else None,
                     "install": None if f is not None else m.install})
    for a in ADAPTED.values():
        from countlens.models.adapters import MERGED_MARKER, merged_dir

        f = named_gguf(NAMED[a.base])
        base_folder = gguf.cache_dir_for(f) if f is not None else None
        folder = merged_dir(base_folder, a.adapter_path, a.name) if base_folder is not None else None
        cached = bool(folder and (folder / MERGED_MARKER).exists())
        rows.append({"name": a.name, "installed": f is not None and a.adapter_path.exists(),
                     "path": str(folder) if folder else None, "cached": cached,
                     "size_mb": _size_mb(folder) if cached else _size_mb(a.adapter_path),
                     "source": a.source, "base": a.base, "adapter": str(a.adapter_path),
                     "install": None if f is not None else NAMED[a.base].install})
    return rows
