"""Patching figures: layer x position heatmap per site, per-layer curve with CI, head heatmap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from countlens.sites import layer_key
from countlens.report._plt import plt, save


def _layer_order(layers) -> list[str]:
    return sorted(set(layers), key=layer_key)


NAMED_ORDER = ["changed", "last_item", "answer"]
NAMED_LABELS = {"changed": "changed word", "last_item": "last list word", "answer": "answer position"}


def _show(text: str) -> str:
    shown = text.replace("\n", "\\n").replace("\t", "\\t").strip() or repr(text)
    return shown.replace("$", r"\$")  # no mathtext in tick labels


def position_labels(columns: list, example: dict, named: bool = False) -> tuple[list[str], set[int]]:
    """x tick labels of a position heatmap and the column indices of the changed word.

    Offsets from the end are labelled with the example prompt's token there ("apple -12");
    named positions with their name (and the example's token at it).
    """
    tokens = example.get("tokens") or []
    if named:
        labels = []
        for c in columns:
            off = (example.get("named") or {}).get(c)
            tok = f"\n{_show(tokens[off])}" if off is not None and tokens and -off <= len(tokens) else ""
            labels.append(NAMED_LABELS.get(c, str(c)) + tok)
        return labels, {i for i, c in enumerate(columns) if c == "changed"}
    lo, hi = (example.get("changed") or [None, None])[:2]
    labels, changed = [], set()
    for i, c in enumerate(columns):
        off = int(c)
        if tokens and -off <= len(tokens):
            labels.append(f"{_show(tokens[off])} {off}")
        else:
            labels.append(str(off))
        if lo is not None and lo <= off <= hi:
            changed.add(i)
    return labels, changed


def _mark_significant(ax, grid: pd.DataFrame, cells: pd.DataFrame | None, site: str, key: str) -> bool:
    """A dot on every cell whose effect survives the grid's correction (cells.parquet); True if drawn."""
    if cells is None or not len(cells):
        return False
    c = cells[(cells.site == site) & cells.significant]
    if key != "head":
        c = c[c["head"] < 0]
    keys = set(zip(c.layer.astype(str), c[key]))
    ys, xs = [], []
    for i, layer in enumerate(grid.index):
        for j, col in enumerate(grid.columns):
            if (str(layer), col) in keys:
                ys.append(i)
                xs.append(j)
    ax.scatter(xs, ys, s=6, color="black", marker="o", linewidths=0)
    return True


def patch_figures(table: pd.DataFrame, summary: dict, out_dir: str | Path,
                  cells: pd.DataFrame | None = None) -> list[Path]:
    """Per-layer curve, layer x position heatmaps per site and the head grid; with `cells` (per-cell
    statistics) a dot marks each cell that survives the multiple-comparison correction."""
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
    example = summary.get("example") or {}
    for site in [s for s in ("resid", "attn", "mlp") if s in set(t.site)]:
        ts = t[t.site == site]
        named = (ts.position_name != "").all() and ts.position_name.nunique() > 1 if "position_name" in ts else False
        key = "position_name" if named else "position"
        if ts[key].nunique() < 2:
            continue
        grid = ts.groupby(["layer", key]).value.mean().unstack(key)
        grid = grid.reindex(_layer_order(grid.index))
        if named:
            grid = grid[sorted(grid.columns, key=lambda c: NAMED_ORDER.index(c) if c in NAMED_ORDER else 99)]
        labels, changed = position_labels(list(grid.columns), example, named)
        width = 2.5 + (1.4 if named else 0.22) * grid.shape[1]
        fig, ax = plt.subplots(figsize=(min(16, width), 1.6 + 0.4 * grid.shape[0]))
        cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#d9d9d9")  # grey: not patched there (a layer subset)
        im = ax.imshow(np.ma.masked_invalid(grid.to_numpy(dtype=float)), aspect="auto", cmap=cmap, vmin=-1, vmax=1)
        ax.set_yticks(range(grid.shape[0]), grid.index)
        step = 1 if grid.shape[1] <= 80 else grid.shape[1] // 60 + 1
        ticks = list(range(0, grid.shape[1], step))
        ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=0 if named else 90,
                      fontsize=8 if named else 7)
        for tick, i in zip(ax.get_xticklabels(), ticks):
            if i in changed:
                tick.set_color("tab:red")
                tick.set_fontweight("bold")
        ax.set_xlabel("named position (each pair at its own token; grey: not patched)" if named else
                      f"position: token of pair {example.get('pair')}'s base prompt and its offset from the end "
                      "(-1 = the answer position; red = the changed word)" if example.get("tokens") else
                      "position (offset from the answer position; -1 = last)")
        ax.set_ylabel("layer")
        dots = _mark_significant(ax, grid, cells, site, key)
        ax.set_title(f"{site}: normalised effect by layer x position ({direction})"
                     + ("; dot: significant after BH correction" if dots else ""))
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
        answer = None if cells is None else cells[cells.position == -1]
        dots = _mark_significant(ax, grid, answer, "head", "head")
        ax.set_title(f"per-head patching at the last position ({direction})"
                     + ("; dot: significant" if dots else ""))
        fig.colorbar(im, ax=ax, shrink=0.8)
        paths.append(save(fig, out_dir / "patch_heads.png"))
    return paths
