"""The result object of every study stage, each with `.to_frame()` (and `.plot()` where there is
something to plot), and `load_stage`, which rebuilds one from the files a finished stage wrote
(so a resumed study's skipped stages have results too).

patch, probes and steer return their library results (PatchResult, ProbeResults, SteerResult);
data, pairs, bench and report get the small wrappers here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


def _bar_panels(panels: list[tuple[str, dict]], path: Path, title: str) -> Path:
    """One bar chart per (x label, {category: count}) panel, side by side."""
    from countlens.report._plt import plt, save

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


@dataclass
class DataResult:
    """The study's dataset: its summary (balance by count, length, category) and the JSONL file."""
    summary: dict
    file: Path

    def to_frame(self) -> pd.DataFrame:
        """One row per example: id, category, word_list, answer, list_length, prompt, ..."""
        from countlens.io import read_jsonl

        return pd.DataFrame([obj for _, obj in read_jsonl(self.file)])

    def plot(self, out_dir: str | Path = ".") -> list[Path]:
        """data_balance.png: rows by true count, by list length and by category."""
        s = self.summary
        panels = [("true count", s.get("by_count") or {}), ("list length", s.get("by_list_length") or {}),
                  ("category", s.get("by_category") or {})]
        return [_bar_panels(panels, Path(out_dir) / "data_balance.png",
                            f"{s.get('rows', '?')} examples: balance")]


@dataclass
class PairsResult:
    """The minimal pairs: the build summary and the pairs JSONL file."""
    summary: dict
    file: Path

    def to_frame(self) -> pd.DataFrame:
        """One row per pair: id, n_low, n_high, changed_index, low_word, high_word, token_span, n_tokens."""
        from countlens.io import read_jsonl

        rows = [{k: v for k, v in obj.items() if k not in ("low", "high")} for _, obj in read_jsonl(self.file)]
        return pd.DataFrame(rows)

    def plot(self, out_dir: str | Path = ".") -> list[Path]:
        """pairs_by_n.png: pairs by their low count N (the high prompt has N+1)."""
        by = self.summary.get("by_n_low") or self.to_frame().n_low.value_counts().sort_index().to_dict()
        return [_bar_panels([("low count N (pair N -> N+1)", by)], Path(out_dir) / "pairs_by_n.png",
                            f"{self.summary.get('pairs', sum(by.values()))} aligned pairs")]


class BenchResult(dict):
    """{mode: BenchSummary} for the modes that ran, with the frames of all of them together."""

    def to_frame(self) -> pd.DataFrame:
        """One row per mode x model (x template): accuracy with its Wilson interval, error rates."""
        frames = [s.to_frame().assign(mode=mode) for mode, s in self.items()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def plot(self, out_dir: str | Path = ".") -> dict[str, dict]:
        """Each mode's figures into OUT_DIR/<mode>/: {mode: {figure: file}}."""
        return {mode: s.plot(Path(out_dir) / mode) for mode, s in self.items()}


@dataclass
class ReportResult:
    """The written report; its frame is the headline numbers, read from the stages' summary files."""
    html: Path
    md: Path
    out: Path
    figures: int = 0
    files: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """One row per headline number: stage, quantity, layer, value, ci_low, ci_high, n."""
        from countlens.report.headline import headline

        return pd.DataFrame(headline(self.out))

    def readme_rows(self) -> list[tuple[str, str]]:
        """The README's results table for this study, as (stage, result) rows."""
        from countlens.report.headline import readme_rows

        return readme_rows(self.out)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def load_stage(out: str | Path, stage: str) -> Any:
    """The result object of a finished stage, rebuilt from DIR/<stage>/ (None when it has not run)."""
    out = Path(out)
    d = out / stage
    if stage == "data":
        f = d / "summary.json"
        return DataResult(_json(f), out / "data" / "examples.jsonl") if f.exists() else None
    if stage == "pairs":
        f = d / "pairs.jsonl"
        if not f.exists():
            return None
        summary = _json(d / "summary.json") if (d / "summary.json").exists() else {}
        return PairsResult(summary, f)
    if stage == "bench":
        from countlens.bench.results import BenchSummary

        modes = {m.name: BenchSummary.model_validate(_json(m / "summary.json"))
                 for m in sorted(d.glob("*")) if (m / "summary.json").exists()}
        return BenchResult(modes) if modes else None
    if stage == "patch":
        from countlens.interp.patching import PatchResult

        if not (d / "table.parquet").exists():
            return None
        summary = _json(d / "summary.json")
        summary.pop("options", None)
        return PatchResult(table=pd.read_parquet(d / "table.parquet"), summary=summary)
    if stage == "probes":
        from countlens.interp.probes import ProbeResults

        if not (d / "probes.parquet").exists():
            return None
        return ProbeResults(table=pd.read_parquet(d / "probes.parquet"),
                            predictions=pd.read_parquet(d / "predictions.parquet"),
                            summary=_json(d / "summary.json"), out=d)
    if stage == "steer":
        from countlens.interp.steering import SteerResult

        if not (d / "table.parquet").exists():
            return None
        return SteerResult(table=pd.read_parquet(d / "table.parquet"), summary=_json(d / "summary.json"),
                           transitions=_json(d / "transitions.json"))
    if stage == "report":
        return ReportResult(out / "report.html", out / "report.md", out) if (out / "report.html").exists() else None
    raise ValueError(f"unknown stage {stage!r}")
