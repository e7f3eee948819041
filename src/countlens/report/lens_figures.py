"""Logit-lens figures: decodable (probe) vs read out (lens) per layer, lens accuracy by layer x position,
and the count directions' alignment with the digits' readout directions.

Duck-typed: a lens result's `table` / `summary` (countlens.interp.lens) and the probes' per-layer
numbers as plain rows or a frame; the report imports neither countlens.interp nor countlens.models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from countlens.report._plt import plt, save
from countlens.sites import layer_key

LAYER_LABEL = "layer (output of block; emb = input of block 0)"


def _rows(rows: Sequence[Mapping[str, Any]] | pd.DataFrame | None) -> pd.DataFrame:
    frame = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows or []))
    if len(frame):
        frame["layer"] = frame["layer"].astype(str)
    return frame


def _col(frame: pd.DataFrame, layers: list[str], column: str) -> np.ndarray:
    if column not in frame:
        return np.full(len(layers), np.nan)
    by = frame.set_index("layer")[column]
    return np.array([by.get(layer, np.nan) for layer in layers], dtype=float)


def decodable_vs_read_out(lens_summary: Mapping[str, Any], path: str | Path,
                          probe: Sequence[Mapping[str, Any]] | pd.DataFrame | None = None,
                          chance: float | None = None) -> Path:
    """Probe accuracy (decodable) and logit-lens accuracy (read out) per layer at the answer position.

    `probe`: rows with layer, accuracy and optionally ci_low, ci_high, control_accuracy (the probes
    summary's `per_layer`); `chance`: the chance line (default: the lens summary's majority-class rate).
    The model's own accuracy is the dotted line the lens reaches at the last layer."""
    lens = _rows(lens_summary["per_layer"])
    probe_f = _rows(probe)
    layers = sorted(set(lens.layer) | set(probe_f.layer if len(probe_f) else []), key=layer_key)
    x = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(layers) + 3), 3.8))
    if len(probe_f):
        ax.plot(x, _col(probe_f, layers, "accuracy"), "s-", color="tab:blue", label="linear probe (decodable)")
        ax.fill_between(x, _col(probe_f, layers, "ci_low"), _col(probe_f, layers, "ci_high"), color="tab:blue",
                        alpha=0.15)
        if "control_accuracy" in probe_f:
            ax.plot(x, _col(probe_f, layers, "control_accuracy"), "x--", color="tab:red",
                    label="probe on the control task")
    ax.plot(x, _col(lens, layers, "accuracy"), "o-", color="tab:orange", label="logit lens (read out)")
    ax.fill_between(x, _col(lens, layers, "ci_low"), _col(lens, layers, "ci_high"), color="tab:orange", alpha=0.2,
                    label="Wilson 95 % interval")
    own = lens_summary.get("own") or {}
    if own.get("accuracy") is not None:
        ax.axhline(own["accuracy"], color="tab:green", ls=":", lw=1.2, label="the model's own accuracy")
    line = chance if chance is not None else (lens_summary.get("chance") or {}).get("majority")
    if line is not None:
        ax.axhline(line, color="black", ls="--", lw=1, label="chance (majority count)")
    ax.set_xticks(x, layers)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(LAYER_LABEL)
    ax.set_ylabel("accuracy on the final count")
    ax.set_title(f"Decodable vs read out at the answer position (n={lens_summary.get('n_rows')})")
    ax.legend(fontsize=7, loc="best")
    return save(fig, path)


def _position_key(label: str) -> tuple[int, int]:
    return (1, 0) if label == "answer" else (0, int(str(label).split()[-1]))


def lens_heatmap(table: pd.DataFrame, path: str | Path, metric: str = "accuracy") -> Path:
    """Lens `metric` by layer (rows, emb on top) x position (list words 1..N, then the answer)."""
    t = table[table.metric == metric]
    grid = t.pivot_table(index="layer", columns="position", values="value")
    grid = grid.reindex(index=sorted(grid.index, key=layer_key), columns=sorted(grid.columns, key=_position_key))
    values = grid.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(2.5 + 0.7 * grid.shape[1], 1.4 + 0.45 * grid.shape[0]))
    bounded = metric in ("accuracy", "p_correct")
    im = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0 if bounded else None, vmax=1 if bounded else None)
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if (bounded and v < 0.5) else "black")
    ax.set_yticks(range(grid.shape[0]), grid.index)
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=45, ha="right")
    ax.set_xlabel("position (a list word's last token: truth = running count; answer: the final count)")
    ax.set_ylabel(LAYER_LABEL)
    ax.set_title(f"Logit lens on the count tokens: {metric} by layer x position")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return save(fig, path)


def alignment_by_layer(alignment_summary: Mapping[str, Any], path: str | Path) -> Path:
    """Cosine of the count directions with the digits' readout directions per layer (the lens
    summary's `alignment`), beside the |cosine| of unrelated directions in the model's width."""
    rows = _rows(alignment_summary["per_layer"])
    layers = sorted(rows.layer, key=layer_key)
    x = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(layers) + 3), 3.6))
    for column, label, style in (("one_more_vs_step", "one-more direction vs digit N+1 - digit N", "o-"),
                                 ("mean_diff_vs_step", "mean difference N->N+1 vs digit N+1 - digit N", "s-"),
                                 ("mean_diff_vs_target", "mean difference N->N+1 vs digit N+1", "^--")):
        ax.plot(x, _col(rows, layers, column), style, label=label)
    r = alignment_summary.get("random_abs_cosine")
    if r is not None:
        ax.axhspan(-r, r, color="gray", alpha=0.2, label="|cosine| of unrelated directions")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(x, layers)
    ax.set_ylim(-1.02, 1.02)
    ax.set_xlabel(LAYER_LABEL)
    ax.set_ylabel("cosine (mean over N)")
    ax.set_title("Count directions vs the digits' readout (W_U with the final norm's gain)")
    ax.legend(fontsize=7, loc="best")
    return save(fig, path)


def lens_figures(table: pd.DataFrame, summary: Mapping[str, Any], out_dir: str | Path,
                 probe: Sequence[Mapping[str, Any]] | pd.DataFrame | None = None) -> list[Path]:
    """Every lens figure into out_dir: lens_vs_probe.png, lens_heatmap.png, lens_alignment.png (with
    directions)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [decodable_vs_read_out(summary, out_dir / "lens_vs_probe.png", probe),
             lens_heatmap(table, out_dir / "lens_heatmap.png")]
    if summary.get("alignment"):
        paths.append(alignment_by_layer(summary["alignment"], out_dir / "lens_alignment.png"))
    return paths
