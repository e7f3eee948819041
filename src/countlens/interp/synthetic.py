"""Synthetic activation stores with a planted linear count direction (tests and benchmarks).

Real examples (words, categories, counts) from the generator; activations are Gaussian noise
except at the planted layers, where `strength * count * u` is added along one random unit
direction u (the running count at word positions, the final count at `last`). A correct
probe pipeline must find exactly those layers, and the control task must stay near chance
because nothing about the words is in the features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from countlens.data.generate import generate_examples
from countlens.interp.store import ActStore, write_store


def synthetic_store(out: str | Path, n: int = 400, d: int = 32, n_layers: int = 4,
                    planted: dict[Any, float] | None = None, positions: tuple[str, ...] = ("last",),
                    seed: int = 0, kind: str = "resid", min_len: int = 5, max_len: int = 10) -> ActStore:
    """Write a complete store with layers emb, 0..n_layers-1 of site kind `kind`."""
    planted = {2: 1.0} if planted is None else planted
    rows = generate_examples(n, seed, min_len=min_len, max_len=max_len)
    rng = np.random.default_rng(seed)
    idx: dict[str, list] = {k: [] for k in ("row", "example", "position", "item", "token", "running_count",
                                             "final_count", "word", "is_match")}

    def add(e: int, position: str, item: int, running: int, final: int, word: str, match: bool) -> None:
        idx["row"].append(len(idx["row"]))
        for k, v in (("example", e), ("position", position), ("item", item), ("token", 0),
                     ("running_count", running), ("final_count", final), ("word", word), ("is_match", match)):
            idx[k].append(v)

    for e, r in enumerate(rows):
        match = [int(i in set(r["match_positions"])) for i in range(len(r["word_list"]))]
        if "last" in positions:
            add(e, "last", -1, r["answer"], r["answer"], "", False)
        if "items" in positions:
            for i, w in enumerate(r["word_list"]):
                add(e, "items", i, int(sum(match[:i + 1])), r["answer"], w, bool(match[i]))
        if "prefix" in positions:
            add(e, "prefix", -1, 0, r["answer"], "", False)
    index = pd.DataFrame(idx)
    examples = pd.DataFrame({
        "example": range(n), "id": [r["id"] for r in rows], "line": range(1, n + 1),
        "category": [r["category"] for r in rows], "words": [r["word_list"] for r in rows],
        "match": [[int(i in set(r["match_positions"])) for i in range(len(r["word_list"]))] for r in rows],
        "answer": [r["answer"] for r in rows], "list_length": [len(r["word_list"]) for r in rows],
        "n_tokens": [0] * n, "template": [r["template"] for r in rows]})
    y = index["running_count"].to_numpy().astype(np.float32)
    # the count is linear in the features only where planted (prefix rows carry running count 0)
    arrays = {}
    for layer in ["emb", *range(n_layers)]:
        x = rng.standard_normal((len(index), d)).astype(np.float32)
        if layer in planted:
            u = rng.standard_normal(d).astype(np.float32)
            x += planted[layer] * y[:, None] * (u / np.linalg.norm(u))[None, :]
        arrays[f"{kind}.{layer}"] = x
    return write_store(out, arrays, index, examples, {"model": "synthetic", "planted": {str(k): v for k, v in
                                                                                        planted.items()}})
