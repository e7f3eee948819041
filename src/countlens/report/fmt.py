"""How the report writes numbers: percentages and decimals without the sign of a rounded zero,
"n/a" for a missing value, and the names of the two kinds of interval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WILSON = "Wilson 95 % interval"
BOOT = "bootstrap 95 % CI"


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def num(x: Any, nd: int = 2) -> str:
    """0.1234 -> '0.12'; None / NaN -> 'n/a'; never '-0.00'."""
    if x is None or x != x:
        return "n/a"
    text = f"{float(x):.{nd}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def pct(x: Any, nd: int = 1) -> str:
    """0.9876 -> '98.8%'."""
    return "n/a" if x is None or x != x else num(100 * float(x), nd) + "%"
