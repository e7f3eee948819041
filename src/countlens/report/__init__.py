"""Figures and the HTML report (no computation of results here)."""
