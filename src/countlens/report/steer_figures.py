"""Steering figures: dose-response per layer (scale vs mean answer, CI) and transition heatmaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from countlens.sites import layer_key
from countlens.report._plt import plt, save
from countlens.stats import bootstrap_ci


def steer_figures(table: pd.DataFrame, summary: dict, transitions: dict, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    kinds = [k for k in table.vector.unique() if k != "random"]
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(4.2 * (len(kinds) + 1), 3.4), sharey=True)
    axes = np.atleast_1d(axes)
    layers = sorted(table.layer.unique(), key=layer_key)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(layers)))
    for ax, kind in zip(axes, kinds + ["random"]):
        t = table[table.vector == kind]
        for layer, c in zip(layers, colors):
            tl = t[t.layer == layer]
            scales = sorted(tl.scale.unique())
            stats = [bootstrap_ci((tl[tl.scale == s].answer - tl[tl.scale == s].n).to_numpy(), 300) for s in scales]
            ax.plot(scales, [m for m, _, _ in stats], "o-", ms=3, color=c, label=f"layer {layer}")
            ax.fill_between(scales, [lo for _, lo, _ in stats], [hi for _, _, hi in stats], color=c, alpha=0.15)
        ax.axhline(1, color="gray", ls="--", lw=0.8)
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_title(f"{kind} (N -> N+1)")
        ax.set_xlabel("scale")
    axes[0].set_ylabel("mean (steered answer - true N)")
    axes[-1].legend(fontsize=7, loc="upper left")
    paths.append(save(fig, out_dir / "steer_dose_response.png"))
    for name, mat in transitions.items():
        m = np.array(mat)
        fig, ax = plt.subplots(figsize=(3.6, 3.2))
        ax.imshow(m, cmap="Blues")
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if m[i, j]:
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7)
        ax.set_xlabel("steered answer")
        ax.set_ylabel("true count N")
        best = summary.get(name.split("@")[-1], {}).get("best") or {}
        ax.set_title(f"{name} at layer {best.get('layer')} x{best.get('scale')}", fontsize=9)
        paths.append(save(fig, out_dir / f"steer_transitions_{name.replace('@', '_at_')}.png"))
    return paths
