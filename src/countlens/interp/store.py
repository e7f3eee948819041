"""The activation store on disk: float16 memory-mapped arrays plus Parquet tables (no torch here).

Layout of a store folder (`countlens acts --out DIR`):

    meta.json          what was collected: model, weights hash, data fingerprint, sites, positions,
                       n_rows, and `complete` (false while a collection is still running)
    progress.json      {"done_examples": k}: rows of the first k examples are written (resume point)
    examples.parquet   one row per example: example, id, line, category, words, match (0/1 per word),
                       answer, list_length, n_tokens, template
    index.parquet      one row per stored position: row, example, position ("last" | "items" |
                       "prefix"), item (word index for items, else -1), token (index in the unpadded
                       token sequence), running_count (matches among words 0..item; the final count
                       at last; 0 at prefix), final_count, word ("" unless items), is_match
    acts/<site>.f16    raw float16, C order, shape [n_rows, dim] for site names like "resid.emb",
                       "resid.0", "attn.3", "head.2" (heads flattened to n_heads * head_dim);
                       np.memmap(path, dtype=np.float16, mode="r", shape=(n_rows, dim))

Rows of one example are contiguous and examples are in file order, so a chunk of examples is
a contiguous block of every array: that is what makes chunked writing and resuming simple.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from countlens.errors import InputError
from countlens.sites import Site
from countlens.io import write_json, write_parquet

FORMAT = "countlens-acts/1"
POSITION_KINDS = ("last", "items", "prefix")
INDEX_COLUMNS = ("row", "example", "position", "item", "token", "running_count", "final_count", "word",
                 "is_match")


def site_file(root: Path, site: str) -> Path:
    return Path(root) / "acts" / f"{site}.f16"


@dataclass
class ActStore:
    """Read access to a store folder; arrays open lazily as read-only memory maps."""

    root: Path
    meta: dict
    index: pd.DataFrame
    examples: pd.DataFrame

    @classmethod
    def open(cls, root: str | Path, require_complete: bool = True) -> "ActStore":
        root = Path(root)
        meta_path = root / "meta.json"
        if not meta_path.exists():
            raise InputError("not an activation store (no meta.json); create one with `countlens acts`",
                             file=str(root))
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise InputError(f"unknown store format {meta.get('format')!r} (expected {FORMAT})", file=str(meta_path))
        if require_complete and not meta.get("complete"):
            raise InputError("the activation store is incomplete; rerun the same `countlens acts` command to "
                             "finish it", file=str(root))
        return cls(root=root, meta=meta, index=pd.read_parquet(root / "index.parquet"),
                   examples=pd.read_parquet(root / "examples.parquet"))

    @property
    def sites(self) -> list[str]:
        return [s["name"] for s in self.meta["sites"]]

    @property
    def positions(self) -> list[str]:
        return list(self.meta["positions"])

    @property
    def n_rows(self) -> int:
        return int(self.meta["n_rows"])

    def dim(self, site: str) -> int:
        for s in self.meta["sites"]:
            if s["name"] == site:
                return int(s["dim"])
        raise InputError(f"site '{site}' is not in this store (has: {', '.join(self.sites)})", file=str(self.root))

    def array(self, site: str) -> np.memmap:
        """The site's [n_rows, dim] float16 array, memory-mapped read-only."""
        return np.memmap(site_file(self.root, site), dtype=np.float16, mode="r", shape=(self.n_rows, self.dim(site)))

    def features(self, site: str, rows: np.ndarray) -> np.ndarray:
        """float32 copy of the given rows (sorted reads are fastest: rows come in store order)."""
        return np.asarray(self.array(site)[np.asarray(rows)], dtype=np.float32)

    def rows(self, position: str, item: int | None = None) -> pd.DataFrame:
        """Index rows of one position kind (and item), ordered by example."""
        sel = self.index["position"] == position
        if item is not None:
            sel &= self.index["item"] == item
        return self.index[sel].sort_values("row")


class StoreWriter:
    """Creates (or reopens, to resume) a store and writes blocks of rows into its arrays."""

    def __init__(self, root: str | Path, meta: dict, index: pd.DataFrame | None = None,
                 examples: pd.DataFrame | None = None) -> None:
        self.root = Path(root)
        self.meta = meta
        n_rows, dims = int(meta["n_rows"]), {s["name"]: int(s["dim"]) for s in meta["sites"]}
        (self.root / "acts").mkdir(parents=True, exist_ok=True)
        fresh = index is not None
        if fresh:
            write_parquet(self.root / "index.parquet", index)
            write_parquet(self.root / "examples.parquet", examples)
            self.set_progress(0)
            write_json(self.root / "meta.json", {**meta, "complete": False})
        self.arrays = {}
        done = 0 if fresh else self.progress()
        for name, dim in dims.items():
            path = site_file(self.root, name)
            nbytes = n_rows * dim * 2
            if fresh or not path.exists() or path.stat().st_size != nbytes:
                if done:
                    raise InputError(f"the store is damaged ({path.name} is missing or has the wrong size); "
                                     "remove it and collect again", file=str(self.root))
                with open(path, "wb") as f:  # sparse file of the final size
                    f.truncate(nbytes)
            self.arrays[name] = np.memmap(path, dtype=np.float16, mode="r+", shape=(n_rows, dim))

    def write(self, site: str, start: int, values: np.ndarray) -> None:
        self.arrays[site][start:start + len(values)] = values

    def flush(self) -> None:
        for a in self.arrays.values():
            a.flush()

    def set_progress(self, done_examples: int) -> None:
        write_json(self.root / "progress.json", {"done_examples": int(done_examples)})

    def progress(self) -> int:
        p = self.root / "progress.json"
        return int(json.loads(p.read_text())["done_examples"]) if p.exists() else 0

    def finish(self, **extra: Any) -> dict:
        self.flush()
        self.meta = {**self.meta, **extra, "complete": True}
        write_json(self.root / "meta.json", self.meta)
        return self.meta


def write_store(root: str | Path, arrays: dict[str, np.ndarray], index: pd.DataFrame, examples: pd.DataFrame,
                meta: dict | None = None) -> ActStore:
    """Write a complete store from in-memory arrays (synthetic activations, imports from other tools)."""
    n_rows = len(index)
    sites = []
    for name, a in arrays.items():
        if a.shape[0] != n_rows:
            raise InputError(f"array '{name}' has {a.shape[0]} rows, the index {n_rows}")
        kind, layer = Site.parse(name).kind, Site.parse(name).layer
        sites.append({"name": name, "kind": kind, "layer": layer, "dim": int(a.shape[1])})
    positions = [p for p in POSITION_KINDS if p in set(index["position"])]
    meta = {"format": FORMAT, "model": "external", "n_examples": int(len(examples)), "n_rows": n_rows,
            "sites": sites, "positions": positions, "dtype": "float16", **(meta or {})}
    w = StoreWriter(root, meta, index, examples)
    for name, a in arrays.items():
        w.write(name, 0, np.clip(a, -65504, 65504).astype(np.float16))
    w.set_progress(len(examples))
    w.finish()
    return ActStore.open(root)
