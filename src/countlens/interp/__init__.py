"""Interpretability: hook sites, patching, activation collection, probes, steering (no matplotlib)."""
