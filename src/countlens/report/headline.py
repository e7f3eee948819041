"""The headline numbers of a study, read from its stages' summary files (never typed in).

`headline(out)` is a tidy list (the report stage's `to_frame()`); `readme_rows(out)` the
README's results table, so `benchmarks/readme_numbers.py` can regenerate it from `make demo`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from countlens.report.fmt import load as _load
from countlens.report.fmt import num as _f

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

    for mode in ("generate", "score"):
        s = _load(out / "bench" / mode / "summary.json")
        for m in (s or {}).get("models", []):
            add("bench", f"accuracy ({mode})", m["accuracy"], m.get("ci_low"), m.get("ci_high"), m.get("n"),
                interval="wilson 95%")
            add("bench", f"parse error rate ({mode})", m.get("parse_error_rate"), n=m.get("n"))
    p = _load(out / "patch" / "summary.json")
    if p:
        for e in p.get("per_layer", []):
            add("patch", f"normalised effect (resid, answer position, {p.get('direction')})", e.get("mean"),
                e.get("ci_low"), e.get("ci_high"), e.get("n_pairs"), e["layer"], "bootstrap 95%")
    pr = _load(out / "probes" / "summary.json")
    if pr:
        for e in pr.get("per_layer", []):
            add("probes", "accuracy (last position)", e.get("accuracy"), e.get("ci_low"), e.get("ci_high"),
                pr.get("n_examples"), e["layer"], "wilson 95%")
            add("probes", "selectivity (last position)", e.get("selectivity"), e.get("selectivity_ci_low"),
                e.get("selectivity_ci_high"), pr.get("n_examples"), e["layer"], "bootstrap 95%")
        for name, key in (("input-only bag of words", "input_baseline"), ("majority class", "majority")):
            b = pr.get(key)
            if b:
                add("probes", f"accuracy ({name})", b.get("accuracy"), b.get("ci_low"), b.get("ci_high"),
                    pr.get("n_examples"), interval="wilson 95%")
    st = _load(out / "steer" / "summary.json")
    if st:
        b = st.get("best") or {}
        if b:
            add("steer", "success N -> N+1 (mean-diff, best before the last block)", b.get("success_rate"),
                b.get("ci_low"), b.get("ci_high"), b.get("n"), b.get("layer"), "wilson 95%")
            add("steer", "success N -> N+1 (random vector of equal norm)", b.get("control_success_rate"),
                b.get("control_ci_low"), b.get("control_ci_high"), b.get("n"), b.get("layer"), "wilson 95%")
            add("steer", "moved the wrong way", b.get("wrong_way"), n=b.get("n"), layer=b.get("layer"))
        lb = (st.get("mean-diff") or {}).get("last_block")
        if lb:
            add("steer", "success N -> N+1 (mean-diff, at the last block)", lb.get("success_rate"),
                lb.get("ci_low"), lb.get("ci_high"), lb.get("n"), lb.get("layer"), "wilson 95%")
    return rows


def readme_rows(out: str | Path) -> list[tuple[str, str]]:
    """The README's results table of a study folder: (stage, result) rows, every number from a file."""
    out = Path(out)
    rows: list[tuple[str, str]] = []
    bench = {mode: (_load(out / "bench" / mode / "summary.json") or {}).get("models", [None])[0]
             for mode in ("generate", "score")}
    bench = {k: v for k, v in bench.items() if v}
    if bench:
        n = next(iter(bench.values()))["n"]
        ci = {k: f"{_p(m['accuracy'])} % [{_p(m['ci_low'])}, {_p(m['ci_high'])}]" for k, m in bench.items()}
        if len(set(ci.values())) == 1 and len(ci) > 1:
            acc = f"{next(iter(ci.values()))} (Wilson 95 %) {' and '.join(ci)} mode alike"
        else:
            acc = ", ".join(f"{k} {v}" for k, v in ci.items()) + " (Wilson 95 %)"
        parse = sorted({_p(m.get("parse_error_rate"), 0) for m in bench.values()})
        rows.append((f"benchmark ({n} examples)", f"{acc}; {' / '.join(parse)} % parse errors"))
    p = _load(out / "patch" / "summary.json")
    if p and p.get("per_layer"):
        pl = p["per_layer"]
        curve = ", ".join(f"{'emb' if e['layer'] == 'emb' else ('block ' if i == 1 else '') + str(e['layer'])} "
                          f"{_f(e['mean'])}" for i, e in enumerate(pl))
        if p.get("informative_pairs") == 0:
            text = (f"no pair's logit-difference gap exceeds {p.get('ld_gap_threshold')}: the normalised effect is "
                    "undefined")
        else:
            done = next((e["layer"] for e in pl if (e.get("mean") or 0) >= COMPLETE), None)
            text = f"normalised effect {curve}: " + (f"the count is complete at layer {done}" if done is not None
                                                     else f"no layer reaches {COMPLETE}")
        rows.append((f"patching ({p['kept_pairs']} pairs, resid, answer position, {p.get('direction')})", text))
    pr = _load(out / "probes" / "summary.json")
    if pr and pr.get("per_layer"):
        best = pr.get("best_layer") or {}
        curve = ", ".join(f"{e['layer']} {_p(e['accuracy'])} %" for e in pr["per_layer"])
        ib, mj = pr.get("input_baseline") or {}, pr.get("majority") or {}
        folds = f"{pr['folds']}-fold" if (pr.get("folds") or 0) >= 2 else "held-out split"
        rows.append((f"probes (last position, {folds}, {pr.get('n_examples')} examples)",
                     f"{curve} (best layer {best.get('layer')}: {_p(best.get('accuracy'))} % "
                     f"[{_p(best.get('ci_low'))}, {_p(best.get('ci_high'))}] Wilson 95 %, selectivity "
                     f"{_f(best.get('selectivity'))}); input-only bag of words {_p(ib.get('accuracy'))} %, "
                     f"majority {_p(mj.get('accuracy'))} %"))
    st = _load(out / "steer" / "summary.json")
    b = (st or {}).get("best") or {}
    if b:
        by_n = b.get("by_n") or {}
        keys = sorted(by_n, key=int)
        lb = ((st.get("mean-diff") or {}).get("last_block") or {})
        text = (f"best before the last block: layer {b['layer']}, scale {_g(b['scale'])}, "
                f"**{_p(b['success_rate'])} % [{_p(b.get('ci_low'))}, {_p(b.get('ci_high'))}]** (Wilson 95 %, "
                f"{b.get('n')} held-out examples; random vector of equal norm {_p(b.get('control_success_rate'))} %, "
                f"{_p(b.get('wrong_way'), 0)} % moved the wrong way)")
        if keys:
            text += (f"; by N = {keys[0]}..{keys[-1]}: "
                     + " / ".join(_p(by_n[k], 0) for k in keys) + " %")
        if lb:
            text += f"; at the last block {_p(lb.get('success_rate'))} %"
        rows.append(("steering N -> N+1", text))
    return rows


def readme_table(out: str | Path) -> str:
    """`readme_rows` as a Markdown table."""
    lines = ["| stage | result |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in readme_rows(out)]
    return "\n".join(lines)
