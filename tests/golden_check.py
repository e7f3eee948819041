"""Before/after study summaries: a finished study's summary files against the ones stored in tests/golden/.

The stored files were written by the code before the architecture change (issue 16) from the same
reduced configs the tests run (tests/test_study.py SMALL on the organism, the reduced SmolLM2 study).
Every key stored must still be there with the same value (numbers to float noise); new keys may be
added. Paths, timings and figure file names are not compared. Re-record on purpose only:
`python tests/golden_check.py RUN_DIR NAME` (and say in the commit which numbers changed and why).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"
SKIP_KEYS = {"seconds", "figures", "files"}
ATOL, RTOL = 2e-3, 1e-3


def summaries(run: Path) -> dict[str, dict]:
    """stage path ('bench/generate') -> its summary.json."""
    return {str(f.parent.relative_to(run)): json.loads(f.read_text()) for f in sorted(run.rglob("summary.json"))}


def differences(old, new, path: str = "") -> list[str]:
    """Where `new` lost a key of `old` or holds another value; empty when they agree."""
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
                out += differences(v, new[k], f"{path}.{k}")
        return out
    if isinstance(old, list):
        if not isinstance(new, list) or len(new) != len(old):
            return [f"{path}: list of {len(old)} became {new if not isinstance(new, list) else len(new)}"]
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{path}[{i}]")]
    if isinstance(old, bool) or old is None or isinstance(old, str):
        if isinstance(old, str) and "/" in old:
            return []  # a path
        return [] if old == new else [f"{path}: {old!r} -> {new!r}"]
    if isinstance(old, (int, float)):
        if not isinstance(new, (int, float)) or isinstance(new, bool):
            return [f"{path}: {old!r} -> {new!r}"]
        if math.isnan(old) and math.isnan(new):
            return []
        return [] if math.isclose(old, new, rel_tol=RTOL, abs_tol=ATOL) else [f"{path}: {old!r} -> {new!r}"]
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def check(run: Path, name: str) -> list[str]:
    stored = json.loads((GOLDEN / f"{name}.json").read_text())
    now = summaries(run)
    out = [f"{stage}: stage summary missing" for stage in stored if stage not in now]
    for stage, old in stored.items():
        if stage in now:
            out += [f"{stage}{d}" for d in differences(old, now[stage])]
    return out


def record(run: Path, name: str) -> None:
    GOLDEN.mkdir(exist_ok=True)
    (GOLDEN / f"{name}.json").write_text(json.dumps(summaries(run), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    record(Path(sys.argv[1]), sys.argv[2])
