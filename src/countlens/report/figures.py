"""`countlens.plot(result, dir)`: every stage result's figures, drawn here so the engine never imports
matplotlib. The package's face binds it as each result's `.plot(dir)` method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from countlens.bench.results import BenchSummary
from countlens.results import (AttentionResult, BenchResult, DataResult, DLAResult, LensResult, PairsResult,
                               PatchResult, ProbeResults, SteerResult)


def plot(result: Any, out_dir: str | Path = ".") -> Any:
    """Write the result's figures into out_dir; returns their paths (a dict for probes and bench)."""
    out_dir = Path(out_dir or ".")
    if isinstance(result, PatchResult):
        from countlens.report.patch_figures import patch_figures

        return patch_figures(result.table, result.summary, out_dir, cells=result.cells)
    if isinstance(result, SteerResult):
        from countlens.report.steer_figures import steer_figures

        return steer_figures(result.table, result.summary, result.transitions, out_dir)
    if isinstance(result, ProbeResults):
        from countlens.report.probe_figures import write_probe_figures

        return write_probe_figures(result, out_dir)
    if isinstance(result, BenchSummary):
        from countlens.report.bench_figures import draw

        return draw(result, out_dir)
    if isinstance(result, BenchResult):
        return {mode: plot(s, out_dir / mode) for mode, s in result.items()}
    if isinstance(result, DataResult):
        from countlens.report.data_figures import data_figures

        return data_figures(result.summary, out_dir)
    if isinstance(result, PairsResult):
        from countlens.report.data_figures import pairs_figures

        by = result.summary.get("by_n_low") or result.to_frame().n_low.value_counts().sort_index().to_dict()
        return pairs_figures(result.summary, by, out_dir)
    if isinstance(result, LensResult):
        from countlens.report.lens_figures import lens_figures

        return lens_figures(result.table, result.summary, out_dir)
    if isinstance(result, DLAResult):
        from countlens.report.dla_figures import dla_figures

        return dla_figures(result.table, result.summary, out_dir)
    if isinstance(result, AttentionResult):
        from countlens.report.attention_figures import attention_figures

        return attention_figures(result.table, result.summary, out_dir)
    raise TypeError(f"nothing to plot for a {type(result).__name__}")


PLOTTABLE = (PatchResult, SteerResult, ProbeResults, BenchSummary, BenchResult, DataResult, PairsResult, LensResult,
             DLAResult, AttentionResult)
