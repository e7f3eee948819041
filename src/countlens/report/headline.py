"""The headline numbers of a study, read from its stages' summary files (never typed in).

`headline(out)` is a tidy list (the report stage's `to_frame()`); `readme_rows(out)` the
README's results table, so `benchmarks/readme_numbers.py` can regenerate it from `make demo`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from countlens.report.findings import bench_summaries
from countlens.report.fmt import num as _f
from countlens.summaries import PatchSummary, ProbeSummary, SteerSummary

COMPLETE = 0.95   # the normalised effect at which the README calls the count "complete" at a layer


def _p(x: Any, nd: int = 1) -> str:
    """A proportion as a percentage number without the sign of a rounded zero: 0.9876 -> '98.8'."""
    return "n/a" if x is None or x != x else _f(100 * float(x), nd)


def _g(x: float) -> str:
    return f"{float(x):g}"


def headline(out: str | Path) -> list[dict]:
    """One dict per headline number: stage, quantity, layer, value, ci_low, ci_high, n, interval."""
    out = Path(out)
    rows: list[dict] = []

    def add(stage, quantity, value, lo=None, hi=None, n=None, layer=None, interval=None):
        rows.append({"stage": stage, "quantity": quantity, "layer": None if layer is None else str(layer),
                     "value": value, "ci_low": lo, "ci_high": hi, "n": n, "interval": interval})

    for mode, s in bench_summaries(out).items():
        for m in s.models:
            add("bench", f"accuracy ({mode})", m.accuracy, m.ci_low, m.ci_high, m.n, interval="wilson 95%")
            add("bench", f"parse error rate ({mode})", m.parse_error_rate, n=m.n)
    p = PatchSummary.read(out / "patch" / "summary.json")
    if p:
        for e in p.per_layer:
            add("patch", f"normalised effect (resid, answer position, {p.direction})", e.mean, e.ci_low, e.ci_high,
                e.n_pairs, e.layer, "bootstrap 95%")
    pr = ProbeSummary.read(out / "probes" / "summary.json")
    if pr:
        for e in pr.per_layer:
            add("probes", "accuracy (last position)", e.accuracy, e.ci_low, e.ci_high, pr.n_examples, e.layer,
                "wilson 95%")
            add("probes", "selectivity (last position)", e.selectivity, e.selectivity_ci_low, e.selectivity_ci_high,
                pr.n_examples, e.layer, "bootstrap 95%")
        for name, b in (("input-only bag of words", pr.input_baseline), ("majority class", pr.majority)):
            if b:
                add("probes", f"accuracy ({name})", b.accuracy, b.ci_low, b.ci_high, pr.n_examples,
                    interval="wilson 95%")
    st = SteerSummary.read(out / "steer" / "summary.json")
    if st:
        b = st.best
        if b:
            add("steer", "success N -> N+1 (mean-diff, best before the last block)", b.success_rate, b.ci_low,
                b.ci_high, b.n, b.layer, "wilson 95%")
            add("steer", "success N -> N+1 (random vector of equal norm)", b.control_success_rate, b.control_ci_low,
                b.control_ci_high, b.n, b.layer, "wilson 95%")
            add("steer", "moved the wrong way", b.wrong_way, n=b.n, layer=b.layer)
        lb = st.mean_diff.last_block if st.mean_diff else None
        if lb:
            add("steer", "success N -> N+1 (mean-diff, at the last block)", lb.success_rate, lb.ci_low, lb.ci_high,
                lb.n, lb.layer, "wilson 95%")
    return rows


def readme_rows(out: str | Path) -> list[tuple[str, str]]:
    """The README's results table of a study folder: (stage, result) rows, every number from a file."""
    out = Path(out)
    rows: list[tuple[str, str]] = []
    bench = {mode: s.models[0] for mode, s in bench_summaries(out).items() if s.models}
    if bench:
        n = next(iter(bench.values())).n
        ci = {k: f"{_p(m.accuracy)} % [{_p(m.ci_low)}, {_p(m.ci_high)}]" for k, m in bench.items()}
        if len(set(ci.values())) == 1 and len(ci) > 1:
            acc = f"{next(iter(ci.values()))} (Wilson 95 %) {' and '.join(ci)} mode alike"
        else:
            acc = ", ".join(f"{k} {v}" for k, v in ci.items()) + " (Wilson 95 %)"
        parse = sorted({_p(m.parse_error_rate, 0) for m in bench.values()})
        rows.append((f"benchmark ({n} examples)", f"{acc}; {' / '.join(parse)} % parse errors"))
    p = PatchSummary.read(out / "patch" / "summary.json")
    if p and p.per_layer:
        pl = p.per_layer
        curve = ", ".join(f"{'emb' if e.layer == 'emb' else ('block ' if i == 1 else '') + str(e.layer)} "
                          f"{_f(e.mean)}" for i, e in enumerate(pl))
        if p.informative_pairs == 0:
            text = (f"no pair's logit-difference gap exceeds {p.ld_gap_threshold}: the normalised effect is "
                    "undefined")
        else:
            done = next((e.layer for e in pl if (e.mean or 0) >= COMPLETE), None)
            text = f"normalised effect {curve}: " + (f"the count is complete at layer {done}" if done is not None
                                                     else f"no layer reaches {COMPLETE}")
        rows.append((f"patching ({p.kept_pairs} pairs, resid, answer position, {p.direction})", text))
    pr = ProbeSummary.read(out / "probes" / "summary.json")
    if pr and pr.per_layer:
        best = pr.best_layer
        curve = ", ".join(f"{e.layer} {_p(e.accuracy)} %" for e in pr.per_layer)
        folds = f"{pr.folds}-fold" if (pr.folds or 0) >= 2 else "held-out split"
        g = lambda obj, key: getattr(obj, key) if obj else None  # noqa: E731
        rows.append((f"probes (last position, {folds}, {pr.n_examples} examples)",
                     f"{curve} (best layer {g(best, 'layer')}: {_p(g(best, 'accuracy'))} % "
                     f"[{_p(g(best, 'ci_low'))}, {_p(g(best, 'ci_high'))}] Wilson 95 %, selectivity "
                     f"{_f(g(best, 'selectivity'))}); input-only bag of words {_p(g(pr.input_baseline, 'accuracy'))} "
                     f"%, majority {_p(g(pr.majority, 'accuracy'))} %"))
    st = SteerSummary.read(out / "steer" / "summary.json")
    b = st.best if st else None
    if b:
        keys = sorted(b.by_n, key=int)
        lb = st.mean_diff.last_block if st.mean_diff else None
        text = (f"best before the last block: layer {b.layer}, scale {_g(b.scale)}, "
                f"**{_p(b.success_rate)} % [{_p(b.ci_low)}, {_p(b.ci_high)}]** (Wilson 95 %, "
                f"{b.n} held-out examples; random vector of equal norm {_p(b.control_success_rate)} %, "
                f"{_p(b.wrong_way, 0)} % moved the wrong way)")
        if keys:
            text += (f"; by N = {keys[0]}..{keys[-1]}: "
                     + " / ".join(_p(b.by_n[k], 0) for k in keys) + " %")
        if lb:
            text += f"; at the last block {_p(lb.success_rate)} %"
        rows.append(("steering N -> N+1", text))
    return rows


def readme_table(out: str | Path) -> str:
    """`readme_rows` as a Markdown table."""
    lines = ["| stage | result |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in readme_rows(out)]
    return "\n".join(lines)
