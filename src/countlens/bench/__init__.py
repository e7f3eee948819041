"""Benchmark: answer parsing, scoring, slices, confidence intervals, resumable store."""
