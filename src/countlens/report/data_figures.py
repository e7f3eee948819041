"""Figures of the data and pairs stages: how balanced the examples and the pairs are."""

from __future__ import annotations

from pathlib import Path

from countlens.report._plt import plt, save


def _bar_panels(panels: list[tuple[str, dict]], path: Path, title: str) -> Path:
    """One bar chart per (x label, {category: count}) panel, side by side."""
    panels = [(x, d) for x, d in panels if d]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), squeeze=False)
    for ax, (xlabel, d) in zip(axes[0], panels):
        keys = list(d)
        ax.bar(range(len(keys)), [d[k] for k in keys], color="tab:blue", alpha=0.85)
        ax.set_xticks(range(len(keys)), [str(k) for k in keys], rotation=45 if len(keys) > 8 else 0,
                      fontsize=8, ha="right" if len(keys) > 8 else "center")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("rows" if ax is axes[0][0] else "")
    fig.suptitle(title, fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save(fig, path)




def data_figures(summary: dict, out_dir: str | Path = ".") -> list[Path]:
    """data_balance.png: rows by true count, by list length and by category."""
    s = summary
    panels = [("true count", s.get("by_count") or {}), ("list length", s.get("by_list_length") or {}),
              ("category", s.get("by_category") or {})]
    return [_bar_panels(panels, Path(out_dir) / "data_balance.png", f"{s.get('rows', '?')} examples: balance")]


def pairs_figures(summary: dict, by_n_low: dict, out_dir: str | Path = ".") -> list[Path]:
    """pairs_by_n.png: pairs by their low count N (the high prompt has N+1)."""
    return [_bar_panels([("low count N (pair N -> N+1)", by_n_low)], Path(out_dir) / "pairs_by_n.png",
                        f"{summary.get('pairs', sum(by_n_low.values()))} aligned pairs")]
