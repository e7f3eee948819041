"""Before/after study summaries: a finished study's summary files against the ones stored in tests/golden/.

The stored files were written by the code before the architecture change (issue 16) from the same
reduced configs the tests run (tests/test_study.py SMALL on the organism, the reduced SmolLM2 study).
Every key stored must still be there with the same value (numbers to float noise); new keys may be
added. Paths, timings and figure file names are not compared.

A probe's accuracy counts argmax decisions, and float noise in the libraries under it (the BLAS
of a numpy/scipy/scikit-learn release; measured: 1.8.0 vs 1.9.x vs the install the files were
stored with) moves the one or two held-out examples on a decision boundary to another class. So
the probes' accuracies and their intervals may differ by up to FLIPS examples of the cell they were
computed on, and selectivity (accuracy minus control accuracy) by twice that; every other number
(R^2, patching, steering, bench) keeps the float tolerance. A refactor that breaks a probe moves far
more than two examples. Re-record on purpose only:
`python tests/golden_check.py RUN_DIR NAME` (and say in the commit which numbers changed and why).
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"
SKIP_KEYS = {"seconds", "figures", "files"}
ATOL, RTOL = 2e-3, 1e-3
FLIPS = 2  # held-out examples whose predicted class may flip (see the module docstring)
DECISIONS = {"accuracy": 1, "control_accuracy": 1, "shuffled_accuracy": 1, "dom_accuracy": 1, "ci_low": 1,
             "ci_high": 1, "selectivity": 2, "selectivity_ci_low": 2, "selectivity_ci_high": 2}  # x FLIPS


def summaries(run: Path) -> dict[str, dict]:
    """stage path ('bench/generate') -> its summary.json."""
    return {str(f.parent.relative_to(run)): json.loads(f.read_text()) for f in sorted(run.rglob("summary.json"))}


def probe_atol(summary: dict) -> Callable[[str], float]:
    """The absolute tolerance of each number in a probes summary: FLIPS examples of its cell for a
    decision metric (a running-count cell holds the examples with that many list words), ATOL else."""
    n_item = summary.get("running_count", {}).get("n", [])

    def atol(path: str) -> float:
        m = re.search(r"\.(\w+)((?:\[\d+\])*)$", path)
        if not m or m.group(1) not in DECISIONS:
            return ATOL
        index = [int(i) for i in re.findall(r"\d+", m.group(2))]
        n = n_item[index[1]] if path.startswith(".running_count.") and len(index) == 2 else summary["n_examples"]
        return max(ATOL, DECISIONS[m.group(1)] * FLIPS / n + 1e-4)  # + the 4-decimal rounding

    return atol


def differences(old, new, path: str = "", atol: Callable[[str], float] | None = None) -> list[str]:
    """Where `new` lost a key of `old` or holds another value; empty when they agree. `atol(path)`
    gives a number's absolute tolerance (ATOL when None)."""
    if isinstance(old, dict):
        if not isinstance(new, dict):
            return [f"{path}: was an object, now {type(new).__name__}"]
        out = []
        for k, v in old.items():
            if k in SKIP_KEYS:
                continue
            if k not in new:
                out.append(f"{path}.{k}: missing")
            else:
                out += differences(v, new[k], f"{path}.{k}", atol)
        return out
    if isinstance(old, list):
        if not isinstance(new, list) or len(new) != len(old):
            return [f"{path}: list of {len(old)} became {new if not isinstance(new, list) else len(new)}"]
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{path}[{i}]", atol)]
    if isinstance(old, bool) or old is None or isinstance(old, str):
        if isinstance(old, str) and "/" in old:
            return []  # a path
        return [] if old == new else [f"{path}: {old!r} -> {new!r}"]
    if isinstance(old, (int, float)):
        if not isinstance(new, (int, float)) or isinstance(new, bool):
            return [f"{path}: {old!r} -> {new!r}"]
        if math.isnan(old) and math.isnan(new):
            return []
        tol = ATOL if atol is None else atol(path)
        return [] if math.isclose(old, new, rel_tol=RTOL, abs_tol=tol) else [f"{path}: {old!r} -> {new!r}"]
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def check(run: Path, name: str) -> list[str]:
    stored = json.loads((GOLDEN / f"{name}.json").read_text())
    now = summaries(run)
    out = [f"{stage}: stage summary missing" for stage in stored if stage not in now]
    for stage, old in stored.items():
        if stage in now:
            atol = probe_atol(old) if stage == "probes" else None
            out += [f"{stage}{d}" for d in differences(old, now[stage], atol=atol)]
    return out


def record(run: Path, name: str) -> None:
    GOLDEN.mkdir(exist_ok=True)
    (GOLDEN / f"{name}.json").write_text(json.dumps(summaries(run), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    record(Path(sys.argv[1]), sys.argv[2])
