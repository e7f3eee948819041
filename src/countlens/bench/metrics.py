"""Records -> the summary table: accuracy (lenient) beside strict, CIs, error kinds, slices,
confusion, tokens, score-mode calibration, and paired comparisons between models."""

from __future__ import annotations

from itertools import combinations

import numpy as np

from countlens.bench import stats
from countlens.bench.records import Record
from countlens.bench.results import (Comparison, Confusion, ModelMetrics, ScoreStats, SliceStat, Tokens)


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None else round(float(x), nd)


def _slice(recs: list[Record], seed: int) -> SliceStat:
    ok = np.array([r.correct for r in recs], dtype=float)
    lo, hi = stats.bootstrap_ci(ok, seed=seed)
    pc = [r.p_correct for r in recs if r.p_correct is not None]
    return SliceStat(n=len(recs), accuracy=_r(ok.mean()), accuracy_strict=_r(np.mean([r.correct_strict for r in recs])),
                     ci_low=_r(lo), ci_high=_r(hi), p_correct=_r(np.mean(pc)) if pc else None)


def _slices(recs: list[Record], attr: str, seed: int) -> dict[str, SliceStat]:
    groups: dict = {}
    for r in recs:
        v = getattr(r, attr)
        if v is not None:
            groups.setdefault(v, []).append(r)
    keys = sorted(groups, key=lambda v: (isinstance(v, str), v))
    return {str(k): _slice(groups[k], seed) for k in keys}


def _confusion(recs: list[Record]) -> Confusion:
    true = sorted({r.answer for r in recs})
    preds = sorted({r.pred for r in recs if r.pred is not None} | set(true))
    col = {p: j for j, p in enumerate(preds)}
    row = {t: i for i, t in enumerate(true)}
    m = [[0] * (len(preds) + 1) for _ in true]
    for r in recs:
        m[row[r.answer]][col[r.pred] if r.pred is not None else len(preds)] += 1
    return Confusion(true=true, pred=[*preds, "none"], matrix=m)


def model_metrics(model: str, mode: str, recs: list[Record], seed: int = stats.SEED) -> ModelMetrics:
    """One model's row of the table from its records (one per example)."""
    n = len(recs)
    correct = np.array([r.correct for r in recs], dtype=float)
    lo, hi = stats.bootstrap_ci(correct, seed=seed)
    kinds = [r.error_kind for r in recs]
    signed = [r.pred - r.answer for r in recs if r.pred is not None]
    score = None
    if mode == "score" and recs:
        conf = np.array([max(r.probs) for r in recs])
        exp = np.array([r.expected_count for r in recs])
        ans = np.array([r.answer for r in recs])
        score = ScoreStats(p_correct=_r(np.mean([r.p_correct for r in recs])), mean_expected_count=_r(exp.mean()),
                           mean_expected_error=_r((exp - ans).mean()),
                           ece=_r(stats.expected_calibration_error(conf, correct)), mean_confidence=_r(conf.mean()))
    return ModelMetrics(
        model=model, mode=mode, n=n, completed=sum(r.status == "ok" for r in recs),
        accuracy=_r(correct.mean()), accuracy_strict=_r(np.mean([r.correct_strict for r in recs])),
        ci_low=_r(lo), ci_high=_r(hi),
        parse_error_rate=_r(kinds.count("parse") / n), numerical_error_rate=_r(kinds.count("numerical") / n),
        api_error_rate=_r(kinds.count("api") / n), mean_signed_error=_r(np.mean(signed)) if signed else None,
        by_count=_slices(recs, "answer", seed), by_list_length=_slices(recs, "list_length", seed),
        by_category=_slices(recs, "category", seed), confusion=_confusion(recs),
        tokens=Tokens(input=sum(r.input_tokens for r in recs), output=sum(r.output_tokens for r in recs),
                      reasoning=sum(r.reasoning_tokens for r in recs), requests=n,
                      attempts=sum(r.attempts for r in recs)),
        score=score)


def comparisons(records: dict[str, list[Record]], seed: int = stats.SEED) -> list[Comparison]:
    """Every pair of models, paired on the example ids both have."""
    out = []
    for a, b in combinations(records, 2):
        ca = {r.example_id: r.correct for r in records[a]}
        cb = {r.example_id: r.correct for r in records[b]}
        shared = [i for i in ca if i in cb]
        p = stats.paired_compare(np.array([ca[i] for i in shared]), np.array([cb[i] for i in shared]), seed=seed)
        out.append(Comparison(model_a=a, model_b=b, n=p.n, accuracy_a=_r(p.accuracy_a), accuracy_b=_r(p.accuracy_b),
                              difference=_r(p.difference), ci_low=_r(p.ci_low), ci_high=_r(p.ci_high),
                              bootstrap_p=_r(p.bootstrap_p), mcnemar_b=p.mcnemar_b, mcnemar_c=p.mcnemar_c,
                              mcnemar_p=_r(p.mcnemar_p, 8)))
    return out
