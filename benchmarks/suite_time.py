"""The test suite's time before and after a change, side by side on one machine.

Two source trees (for example a `git worktree` of the commit before a change, and this checkout)
run their own tests with one interpreter (its venv), `PYTHONPATH=<tree>/src` so that each imports
its own countlens, alternating which goes first. Tests added after the older tree do not exist
there, so the comparison that means "is the same work slower" sums pytest's per-test durations
(setup + call + teardown) over the test ids both trees have; the wall time of each whole suite is
reported too.

    python benchmarks/suite_time.py --before ../old --after . --runs 2 [--python .venv/bin/python]
    python benchmarks/suite_time.py --logs before.log after.log   # logs of `pytest --durations=0`
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

LINE = re.compile(r"\s*([\d.]+)s (setup|call|teardown)\s+(\S+)")


def durations(log: str) -> dict[str, float]:
    """test id -> seconds (setup + call + teardown) from pytest's `--durations=0 --durations-min=0`."""
    out: dict[str, float] = collections.defaultdict(float)
    for line in log.splitlines():
        if m := LINE.match(line):
            out[m.group(3)] += float(m.group(1))
    return dict(out)


def run_suite(tree: Path, python: str) -> tuple[float, int, dict[str, float]]:
    """(wall seconds, pytest's exit code, per-test durations) of one tree's suite."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    t = time.perf_counter()
    proc = subprocess.run([python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--durations=0",
                           "--durations-min=0"], cwd=tree, env=env, capture_output=True, text=True)
    return time.perf_counter() - t, proc.returncode, durations(proc.stdout)


def compare(before: dict[str, float], after: dict[str, float]) -> dict:
    common = sorted(set(before) & set(after))
    b, a = sum(before[k] for k in common), sum(after[k] for k in common)
    per_file: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for k in common:
        f = per_file[k.split("::")[0]]
        f[0] += before[k]
        f[1] += after[k]
    moved = sorted(per_file.items(), key=lambda kv: abs(kv[1][1] - kv[1][0]), reverse=True)[:8]
    return {"common_tests": len(common), "before_s": round(b, 1), "after_s": round(a, 1), "ratio": round(a / b, 3),
            "tests_before": len(before), "tests_after": len(after),
            "after_only_s": round(sum(v for k, v in after.items() if k not in before), 1),
            "files_that_moved_most": {f: [round(x, 1), round(y, 1)] for f, (x, y) in moved}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path)
    ap.add_argument("--after", type=Path, default=Path("."))
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--logs", nargs=2, type=Path, metavar=("BEFORE_LOG", "AFTER_LOG"))
    args = ap.parse_args()
    if args.logs:
        print(json.dumps(compare(*(durations(p.read_text()) for p in args.logs)), indent=1))
        return
    if args.before is None:
        ap.error("--before TREE (or --logs) is required")
    runs = []
    for r in range(args.runs):
        order = [("before", args.before), ("after", args.after)][:: 1 if r % 2 == 0 else -1]
        got = {}
        for name, tree in order:
            wall, rc, d = run_suite(tree.resolve(), args.python)
            print(f"run {r + 1} {name}: {wall:.0f} s, exit {rc}, {len(d)} tests", file=sys.stderr)
            got[name] = (wall, rc, d)
        runs.append({"wall_before_s": round(got["before"][0]), "wall_after_s": round(got["after"][0]),
                     "exit": [got["before"][1], got["after"][1]], **compare(got["before"][2], got["after"][2])})
    print(json.dumps({"runs": runs, "median_ratio": statistics.median(r["ratio"] for r in runs),
                      "median_wall_before_s": statistics.median(r["wall_before_s"] for r in runs),
                      "median_wall_after_s": statistics.median(r["wall_after_s"] for r in runs)}, indent=1))


if __name__ == "__main__":
    main()
