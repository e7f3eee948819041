"""Patching figures: layer x position heatmap per site, per-layer curve with CI, head heatmap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from countlens.report._plt import plt, save


def _layer_order(layers) -> list[str]:
    return sorted(set(layers), key=lambda s: -1 if s == "emb" else int(s))


def patch_figures(table: pd.DataFrame, summary: dict, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    direction = summary.get("direction", "denoise")
    t = table[(table.metric == "normalized") & (table.direction == direction)]
    # per-layer curve with CI (resid, last position)
    pl = summary.get("per_layer", [])
    if pl:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        x = np.arange(len(pl))
        ax.plot(x, [e["mean"] for e in pl], "o-", color="tab:blue", label=f"{direction}: normalised effect")
        ax.fill_between(x, [e["ci_low"] for e in pl], [e["ci_high"] for e in pl], alpha=0.25, color="tab:blue",
                        label="95% bootstrap CI")
        ax.axhline(0, color="gray", lw=0.8)
        ax.axhline(1, color="gray", lw=0.8, ls="--")
        ax.set_xticks(x, [str(e["layer"]) for e in pl])
        ax.set_xlabel("layer (output of block; emb = input of block 0)")
        ax.set_ylabel("normalised effect")
        ax.set_title(f"Residual stream patching at the last position (n={summary.get('kept_pairs')} pairs)")
        ax.legend(fontsize=8)
        paths.append(save(fig, out_dir / "patch_per_layer.png"))
    # layer x position heatmap per site
    for site in [s for s in ("resid", "attn", "mlp") if s in set(t.site)]:
        ts = t[t.site == site]
        if ts.position.nunique() < 2:
            continue
        grid = ts.groupby(["layer", "position"]).value.mean().unstack("position")
        grid = grid.reindex(_layer_order(grid.index))
        fig, ax = plt.subplots(figsize=(min(14, 2 + 0.18 * grid.shape[1]), 1 + 0.4 * grid.shape[0]))
        im = ax.imshow(grid.to_numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_yticks(range(grid.shape[0]), grid.index)
        step = max(1, grid.shape[1] // 20)
        ax.set_xticks(range(0, grid.shape[1], step), [str(c) for c in grid.columns[::step]])
        ax.set_xlabel("position (offset from the answer position; -1 = last)")
        ax.set_ylabel("layer")
        ax.set_title(f"{site}: normalised effect by layer x position ({direction})")
        fig.colorbar(im, ax=ax, shrink=0.8)
        paths.append(save(fig, out_dir / f"patch_heatmap_{site}.png"))
    # head heatmap at the last position
    th = t[(t.site == "head") & (t.position == -1)]
    if len(th):
        grid = th.groupby(["layer", "head"]).value.mean().unstack("head")
        grid = grid.reindex(_layer_order(grid.index))
        fig, ax = plt.subplots(figsize=(1.5 + 0.45 * grid.shape[1], 1 + 0.45 * grid.shape[0]))
        lim = max(0.05, float(np.nanmax(np.abs(grid.to_numpy()))))
        im = ax.imshow(grid.to_numpy(), aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_yticks(range(grid.shape[0]), grid.index)
        ax.set_xticks(range(grid.shape[1]), grid.columns)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"per-head patching at the last position ({direction})")
        fig.colorbar(im, ax=ax, shrink=0.8)
        paths.append(save(fig, out_dir / "patch_heads.png"))
    return paths
