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

from countlens.results import (BenchResult, DataResult, PairsResult, PatchResult, ProbeResults,  # noqa: F401
                               SteerResult)


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
        if not (d / "table.parquet").exists():
            return None
        summary = _json(d / "summary.json")
        summary.pop("options", None)
        cells = d / "cells.parquet"
        return PatchResult(table=pd.read_parquet(d / "table.parquet"), summary=summary,
                           cells=pd.read_parquet(cells) if cells.exists() else None)
    if stage == "probes":
        if not (d / "probes.parquet").exists():
            return None
        return ProbeResults(table=pd.read_parquet(d / "probes.parquet"),
                            predictions=pd.read_parquet(d / "predictions.parquet"),
                            summary=_json(d / "summary.json"), out=d)
    if stage == "steer":
        if not (d / "table.parquet").exists():
            return None
        return SteerResult(table=pd.read_parquet(d / "table.parquet"), summary=_json(d / "summary.json"),
                           transitions=_json(d / "transitions.json"))
    if stage == "analyses":
        from countlens.study.analyses import load_analyses

        return load_analyses(d)
    if stage == "report":
        return ReportResult(out / "report.html", out / "report.md", out) if (out / "report.html").exists() else None
    raise ValueError(f"unknown stage {stage!r}")
