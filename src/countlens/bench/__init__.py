"""Benchmark: answer parsing, scoring, slices, confidence intervals, resumable store.

`run_bench(models, data, out, ...)` is the entry point (also `countlens bench`).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy, so `countlens.data.answers` stays importable without the runner's dependencies.
    if name == "run_bench":
        from countlens.bench.runner import run_bench

        return run_bench
    if name == "BenchSummary":
        from countlens.bench.results import BenchSummary

        return BenchSummary
    raise AttributeError(name)


__all__ = ["BenchSummary", "run_bench"]
