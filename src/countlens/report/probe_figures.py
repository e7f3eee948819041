"""Probe figures: accuracy by layer with controls, running-count heatmap, confusion at the best layer.

Takes a `ProbeResults` (or its summary/table); computes nothing but layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from countlens.report._plt import plt, save


def _layer_labels(layers: list[Any]) -> list[str]:
    return [str(x) for x in layers]


def accuracy_by_layer(results: Any, path: str | Path) -> Path:
    """Probe accuracy (Wilson 95 % interval) per layer at the last position beside the control task band,
    shuffled labels, the majority class and the input-only bag of words; R^2 in a second panel."""
    s = results.summary
    rows = s["per_layer"]
    x = np.arange(len(rows))
    g = lambda k: np.array([np.nan if r.get(k) is None else r[k] for r in rows], dtype=float)  # noqa: E731
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    ax.plot(x, g("accuracy"), "o-", color="tab:blue", label="linear probe (count)")
    ax.fill_between(x, g("ci_low"), g("ci_high"), color="tab:blue", alpha=0.2, label="Wilson 95 % interval")
    w = results.per_layer(s["site"])
    if "control_accuracy" in w:
        ax.plot(x, w["control_accuracy"], "s--", color="tab:red", label="control task (Hewitt & Liang)")
        ax.fill_between(x, w["control_accuracy_lo"], w["control_accuracy_hi"], color="tab:red", alpha=0.15)
    if "shuffled_accuracy" in w:
        ax.plot(x, w["shuffled_accuracy"], ":", color="tab:gray", label="shuffled labels")
    if "dom_accuracy" in w:
        ax.plot(x, w["dom_accuracy"], "^-", color="tab:purple", alpha=0.6, ms=4, label="difference of means (1-D)")
    if s.get("majority"):
        ax.axhline(s["majority"]["accuracy"], color="black", lw=1, ls="--", label="majority class")
        if s["majority"].get("control_accuracy") is not None:
            ax.axhline(s["majority"]["control_accuracy"], color="tab:red", lw=0.8, ls=":",
                       label="majority class of the control task")
    if s.get("input_baseline"):
        ib = s["input_baseline"]
        ax.axhline(ib["accuracy"], color="tab:green", lw=1.2, label="input only (bag of words)")
        ax.axhspan(ib["ci_low"], ib["ci_high"], color="tab:green", alpha=0.1)
    labels = _layer_labels([r["layer"] for r in rows])
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("layer (output of block; emb = input of block 0)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"final count at the last position ({s['site']}, split {s['split']}, n={s['n_examples']})")
    ax.legend(fontsize=7, loc="best")
    ax2.plot(x, g("r2"), "o-", color="tab:orange", label="ridge R²")
    ax2.fill_between(x, g("r2_ci_low"), g("r2_ci_high"), color="tab:orange", alpha=0.2)
    if s.get("input_baseline") and s["input_baseline"].get("r2") is not None:
        ax2.axhline(s["input_baseline"]["r2"], color="tab:green", lw=1.2, label="input only (bag of words)")
    ax2.axhline(0, color="black", lw=0.8)
    ax2.set_xticks(x, labels)
    ax2.set_ylim(min(-0.1, np.nanmin(g("r2_ci_low")) if len(rows) else 0), 1.02)
    ax2.set_xlabel("layer")
    ax2.set_ylabel("held-out R² (count as a number)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def running_count_heatmap(results: Any, path: str | Path) -> Path | None:
    """Accuracy and R^2 of the running-count probe over layer x word position, with the
    final-count probe at the last token as an extra column (the aggregation question)."""
    s = results.summary
    rc = s.get("running_count")
    if not rc:
        return None
    last = {str(r["layer"]): r for r in s["per_layer"]}
    layers = _layer_labels(rc["layers"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(layers) + 2.4))
    for ax, metric, cmap, lo in ((axes[0], "accuracy", "viridis", 0.0), (axes[1], "r2", "magma", 0.0)):
        grid = np.array([[np.nan if v is None else v for v in row] for row in rc[metric]], dtype=float)
        col = np.array([[np.nan if last.get(lay, {}).get(metric) is None else last[lay][metric]] for lay in layers])
        full = np.concatenate([grid, np.full((len(layers), 1), np.nan), col], axis=1)
        im = ax.imshow(full, aspect="auto", origin="lower", cmap=cmap, vmin=lo, vmax=1)
        xt = [f"{i + 1}\n{n}" for i, n in zip(rc["items"], rc["n"])] + ["", "last\n(final)"]
        ax.set_xticks(range(len(xt)), xt, fontsize=7)
        ax.set_yticks(range(len(layers)), layers)
        if full.size <= 400:
            for (r, c), v in np.ndenumerate(full):
                if np.isfinite(v):
                    ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if v < 0.6 else "black")
        ax.set_xlabel("list word i (running count of words 1..i); second line: examples")
        ax.set_ylabel("layer")
        ax.set_title(f"running count: {'accuracy' if metric == 'accuracy' else 'ridge R²'}")
        fig.colorbar(im, ax=ax, fraction=0.04)
    maj = rc.get("majority") or []
    inp = rc.get("input_baseline") or []
    if maj and all(v is not None for v in maj):
        fig.text(0.01, 0.005, "majority by word: " + " ".join(f"{v:.2f}" for v in maj)
                 + ("   input-only by word: " + " ".join(f"{v:.2f}" for v in inp) if inp and all(
                     v is not None for v in inp) else ""), fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return save(fig, path)


def confusion_matrix(results: Any, path: str | Path, layer: Any | None = None) -> Path | None:
    """Confusion matrix (row-normalised, with counts) of the last-position probe at the best layer."""
    if results.predictions.empty or not results.summary.get("best_layer"):
        return None
    cm, classes, lay = results.confusion(layer)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.6, 4))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for (r, c), v in np.ndenumerate(cm):
        ax.text(c, r, str(v), ha="center", va="center", fontsize=8, color="white" if norm[r, c] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("probe prediction")
    ax.set_ylabel("true count")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"{results.summary['site']} layer {lay}: accuracy {acc:.3f}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return save(fig, path)


def write_probe_figures(results: Any, out: str | Path) -> dict[str, str]:
    """All probe figures into `out`; returns {name: path} of those written."""
    out = Path(out)
    figs = {}
    if results.summary.get("per_layer"):
        figs["accuracy_by_layer"] = accuracy_by_layer(results, out / "probe_accuracy_by_layer.png")
    for name, fn, fname in (("running_count", running_count_heatmap, "probe_running_count.png"),
                            ("confusion", confusion_matrix, "probe_confusion.png")):
        p = fn(results, out / fname)
        if p is not None:
            figs[name] = p
    return {k: str(v) for k, v in figs.items()}
