"""Direct logit attribution figure: a layer x head heatmap of head attributions beside the MLPs' per layer.

Duck-typed: the attribution result's `table` / `summary` (countlens.interp.dla); the report imports
neither countlens.interp nor countlens.models.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from countlens.report._plt import plt, save
from countlens.sites import layer_key


def dla_heads_and_mlps(table: pd.DataFrame, summary: Mapping[str, Any], path: str | Path) -> Path:
    """Left: mean attribution of every head (layer x head, diverging around 0). Right: each MLP's
    mean attribution per layer with its bootstrap 95 % interval."""
    heads = table[table.kind == "head"]
    grid = heads.pivot_table(index="layer", columns="head", values="mean")
    grid = grid.reindex(index=sorted(grid.index, key=layer_key))
    mlp = table[table.kind == "mlp"].copy()
    mlp = mlp.iloc[np.argsort([layer_key(x) for x in mlp.layer])]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(4 + 0.45 * grid.shape[1] + 3.5, 1.8 + 0.4 * grid.shape[0]),
                                  gridspec_kw={"width_ratios": [max(2, grid.shape[1]), 4]})
    values = grid.to_numpy(dtype=float)
    lim = max(1e-6, float(np.nanmax(np.abs(values))) if values.size else 1.0)
    im = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_yticks(range(grid.shape[0]), grid.index)
    ax.set_xticks(range(grid.shape[1]), grid.columns)
    ax.set_xlabel("head")
    ax.set_ylabel("layer (block)")
    ax.set_title("heads: direct logit attribution")
    fig.colorbar(im, ax=ax, shrink=0.8, label="mean attribution (logits)")
    y = np.arange(len(mlp))
    err = np.vstack([mlp["mean"] - mlp["ci_low"], mlp["ci_high"] - mlp["mean"]])
    ax2.barh(y, mlp["mean"], xerr=err, color=np.where(mlp["mean"] >= 0, "tab:red", "tab:blue"), alpha=0.8,
             error_kw={"lw": 0.8})
    ax2.set_yticks(y, mlp.layer)
    ax2.invert_yaxis()
    ax2.axvline(0, color="black", lw=0.6)
    ax2.set_xlabel("mean attribution (logits), bootstrap 95 %")
    ax2.set_ylabel("layer (block)")
    ax2.set_title("MLPs")
    total = (summary.get("total") or {}).get("mean")
    head = "Direct logit attribution"
    if total is not None:
        head += f" (total {total:.3g}, n={summary.get('n_rows')})"
    fig.suptitle(f"{head}\nmetric: {summary.get('metric', '')}", fontsize=9, y=1.04)
    return save(fig, path)


def dla_figures(table: pd.DataFrame, summary: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """The attribution figure into out_dir/dla_heads_mlps.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [dla_heads_and_mlps(table, summary, out_dir / "dla_heads_mlps.png")]
