"""Count directions saved for steering: class means, difference-of-means, probe and ridge weights.

Layout (written by `run_probes` under OUT/directions/, read back by `Directions.load`):

    directions/layout.json             this description, the files present and their shapes
    directions/<kind>-<position>.pt    torch.save of a dict of tensors (keys below) + "layers"
    directions/<kind>-<position>/*.npy the same arrays as .npy files (layers.json beside them)

<kind> is the site kind (resid, attn, mlp, head), <position> is `last` (labels: the final count)
or `items` (labels: the running count at each list word, pooled over word positions). Arrays,
all float32 in raw activation units (not standardised), axis 0 = layers in `layers` order
("emb", 0, 1, ...):

    classes          [K]           the count values (int64), same for every layer
    counts           [K]           examples per class (int64)
    means            [L, K, d]     class-mean activation; N -> M vector = means[l, M] - means[l, N]
    slope            [L, d]        difference-of-means direction: least-squares change per +1 count
                                   (the average of consecutive class-mean differences, weighted)
    probe_coef       [L, K, d]     multinomial logistic weights: logits = x @ coef[l].T + intercept[l]
    probe_intercept  [L, K]
    ridge_coef       [L, d]        ridge: count = x @ ridge_coef[l] + ridge_intercept[l]
    ridge_intercept  [L]

The probe and ridge arrays exist for position `last` only (the pooled `items` set is not fitted).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from countlens.errors import InputError
from countlens.io import atomic_path, write_json
from countlens.sites import parse_layer

ARRAYS = ("classes", "counts", "means", "slope", "probe_coef", "probe_intercept", "ridge_coef", "ridge_intercept")


@dataclass
class Directions:
    kind: str
    position: str
    layers: list[Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def layer_index(self, layer: Any) -> int:
        key = parse_layer(layer)
        if key not in self.layers:
            raise InputError(f"layer {layer} has no saved direction (layers: {self.layers})")
        return self.layers.index(key)

    def _k(self, count: int) -> int:
        classes = list(self.arrays["classes"])
        if count not in classes:
            raise InputError(f"count {count} has no class mean (classes: {classes})")
        return classes.index(count)

    def mean_diff(self, layer: Any, n_from: int, m_to: int) -> np.ndarray:
        """The vector that moves the class mean of count N to that of count M at `layer`."""
        means = self.arrays["means"][self.layer_index(layer)]
        return means[self._k(m_to)] - means[self._k(n_from)]

    def one_more(self, layer: Any, unit: bool = False) -> np.ndarray:
        """Difference-of-means direction per +1 count (unit length if `unit`)."""
        v = self.arrays["slope"][self.layer_index(layer)]
        return v / max(float(np.linalg.norm(v)), 1e-12) if unit else v

    def probe(self, layer: Any, count: int) -> np.ndarray:
        """Raw-unit logistic weight row of class `count` (position `last` only)."""
        if "probe_coef" not in self.arrays:
            raise InputError(f"no probe weights saved for position '{self.position}'")
        return self.arrays["probe_coef"][self.layer_index(layer), self._k(count)]

    def save(self, root: str | Path) -> list[str]:
        import torch

        root = Path(root)
        name = f"{self.kind}-{self.position}"
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for k, a in self.arrays.items():
            with atomic_path(folder / f"{k}.npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, a)
        write_json(folder / "layers.json", self.layers)
        with atomic_path(root / f"{name}.pt") as tmp:
            torch.save({**{k: torch.from_numpy(np.asarray(a)) for k, a in self.arrays.items()},
                        "layers": self.layers, "kind": self.kind, "position": self.position}, tmp)
        return [str(root / f"{name}.pt"), str(folder)]

    @classmethod
    def load(cls, root: str | Path, kind: str = "resid", position: str = "last") -> "Directions":
        """Read directions saved by `run_probes` (root = OUT/directions or OUT)."""
        root = Path(root)
        if (root / "directions").is_dir():
            root = root / "directions"
        folder = root / f"{kind}-{position}"
        if not folder.is_dir():
            raise InputError(f"no saved directions for {kind}-{position}", file=str(root))
        arrays = {k: np.load(folder / f"{k}.npy") for k in ARRAYS if (folder / f"{k}.npy").exists()}
        layers = json.loads((folder / "layers.json").read_text())
        return cls(kind=kind, position=position, layers=layers, arrays=arrays)


def write_layout(root: str | Path, saved: list[Directions]) -> None:
    entries = [{"file": f"{d.kind}-{d.position}.pt", "folder": f"{d.kind}-{d.position}", "kind": d.kind,
                "position": d.position, "layers": d.layers,
                "shapes": {k: list(np.shape(a)) for k, a in d.arrays.items()}} for d in saved]
    write_json(Path(root) / "layout.json", {"doc": __doc__, "directions": entries})
