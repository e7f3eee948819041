"""The benchmark's figures: accuracy per model with CIs (the original study's comparison chart),
accuracy by true count, one confusion heatmap per model (per model x template with --template), and
accuracy per template (`templates.png`) when there are templates. Drawn from the summary only."""

from __future__ import annotations

import re
from pathlib import Path

from countlens.bench.results import BenchSummary
from countlens.io import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def draw(summary: BenchSummary, out: str | Path) -> dict[str, object]:
    """Write the figures into `out`; return their file names."""
    plt = _plt()
    out = Path(out)
    files: dict[str, object] = {}
    ms = summary.models
    if not ms:
        return files

    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(ms) + 2), 3.6))
    xs = range(len(ms))
    accs = [m.accuracy for m in ms]
    err = [[a - m.ci_low for a, m in zip(accs, ms)], [m.ci_high - a for a, m in zip(accs, ms)]]
    bars = ax.bar(xs, accs, yerr=err, capsize=4, color="tab:blue", alpha=0.85)
    for b, a in zip(bars, accs):
        ax.text(b.get_x() + b.get_width() / 2, min(a + 0.03, 1.0), f"{a:.1%}", ha="center", fontsize=8)
    ax.set_xticks(list(xs), [m.label for m in ms], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy (lenient parse)")
    ax.set_title(f"Counting accuracy, n = {ms[0].n} (bars: {summary.config.get('interval', 'bootstrap 95%')} "
                 f"interval)", fontsize=9)
    fig.tight_layout()
    _save(fig, out / "accuracy.png")
    plt.close(fig)
    files["accuracy"] = "accuracy.png"

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for m in ms:
        ks = sorted(m.by_count, key=int)
        ax.errorbar([int(k) for k in ks], [m.by_count[k].accuracy for k in ks],
                    yerr=[[m.by_count[k].accuracy - m.by_count[k].ci_low for k in ks],
                          [m.by_count[k].ci_high - m.by_count[k].accuracy for k in ks]],
                    marker="o", capsize=3, label=m.label)
    ax.set_xlabel("true count")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.05)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out / "accuracy_by_count.png")
    plt.close(fig)
    files["accuracy_by_count"] = "accuracy_by_count.png"

    confusion: dict[str, str] = {}
    for i, m in enumerate(ms):
        c = m.confusion
        fig, ax = plt.subplots(figsize=(0.45 * len(c.pred) + 2.5, 0.4 * len(c.true) + 2))
        ax.imshow(c.matrix, cmap="Blues", aspect="auto")
        for r, row in enumerate(c.matrix):
            for j, v in enumerate(row):
                if v:
                    ax.text(j, r, str(v), ha="center", va="center", fontsize=7,
                            color="white" if v > 0.6 * max(map(max, c.matrix)) else "black")
        ax.set_xticks(range(len(c.pred)), [str(p) for p in c.pred], fontsize=7)
        ax.set_yticks(range(len(c.true)), [str(t) for t in c.true], fontsize=7)
        ax.set_xlabel("predicted (none = parse or API error)")
        ax.set_ylabel("true count")
        ax.set_title(m.label, fontsize=9)
        fig.tight_layout()
        stem = slug(m.model if m.template is None else f"{m.model}_{m.template}")
        name = f"confusion_{stem}.png"
        if name in confusion.values():
            name = f"confusion_{i}_{stem}.png"
        _save(fig, out / name)
        plt.close(fig)
        confusion[m.label] = name
    files["confusion"] = confusion

    if summary.templates is not None:
        names = summary.templates.names
        fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(names) + 2.5), 3.6))
        width = 0.8 / max(1, len(summary.templates.models))
        for j, t in enumerate(summary.templates.models):
            rows = {r.template: r for r in t.templates}
            xs = [i + (j - (len(summary.templates.models) - 1) / 2) * width for i in range(len(names))]
            acc = [rows[k].accuracy for k in names]
            ax.errorbar(xs, acc, yerr=[[a - rows[k].ci_low for a, k in zip(acc, names)],
                                       [rows[k].ci_high - a for a, k in zip(acc, names)]],
                        fmt="o", capsize=4, label=t.model)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_ylim(-0.02, 1.05)
        ax.set_ylabel("accuracy")
        ax.set_title(f"Prompt sensitivity ({summary.templates.interval} intervals)", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        _save(fig, out / "templates.png")
        plt.close(fig)
        files["templates"] = "templates.png"
    return files
