"""Records -> the summary table: accuracy (lenient) beside strict, Wilson intervals, error kinds,
slices, confusion, tokens, score-mode calibration, paired comparisons between models, and the
prompt-sensitivity table (one model under several templates, paired on the same examples)."""

from __future__ import annotations

from itertools import combinations

import numpy as np

from countlens.bench import stats
from countlens.bench.records import Record
from countlens.bench.results import (Comparison, Confusion, ModelMetrics, PairedStats, ScoreStats, SliceStat,
                                     TemplatePair, TemplateRow, TemplatesSection, TemplateTable, Tokens)


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None else round(float(x), nd)


def _slice(recs: list[Record], seed: int) -> SliceStat:
    ok = np.array([r.correct for r in recs], dtype=float)
    lo, hi = stats.proportion_ci(ok)
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


def model_metrics(model: str, mode: str, recs: list[Record], seed: int = stats.SEED,
                  template: str | None = None) -> ModelMetrics:
    """One model's row of the table from its records (one per example)."""
    n = len(recs)
    correct = np.array([r.correct for r in recs], dtype=float)
    lo, hi = stats.proportion_ci(correct)
    kinds = [r.error_kind for r in recs]
    flags = {"accuracy": correct, "accuracy_strict": [r.correct_strict for r in recs],
             "completed": [r.status == "ok" for r in recs], "parse_error_rate": [k == "parse" for k in kinds],
             "numerical_error_rate": [k == "numerical" for k in kinds], "api_error_rate": [k == "api" for k in kinds]}
    intervals = {name: [_r(x) for x in stats.proportion_ci(v)] for name, v in flags.items()}
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
        model=model, mode=mode, n=n, template=template, completed=sum(r.status == "ok" for r in recs),
        accuracy=_r(correct.mean()), accuracy_strict=_r(np.mean([r.correct_strict for r in recs])),
        ci_low=_r(lo), ci_high=_r(hi),
        parse_error_rate=_r(kinds.count("parse") / n), numerical_error_rate=_r(kinds.count("numerical") / n),
        api_error_rate=_r(kinds.count("api") / n), mean_signed_error=_r(np.mean(signed)) if signed else None,
        by_count=_slices(recs, "answer", seed), by_list_length=_slices(recs, "list_length", seed),
        by_category=_slices(recs, "category", seed), confusion=_confusion(recs),
        tokens=Tokens(input=sum(r.input_tokens for r in recs), output=sum(r.output_tokens for r in recs),
                      reasoning=sum(r.reasoning_tokens for r in recs), requests=n,
                      attempts=sum(r.attempts for r in recs)),
        score=score, intervals=intervals)


def _paired(ra: list[Record], rb: list[Record], seed: int) -> PairedStats:
    """a against b on the example ids both have (in a's order)."""
    ca = {r.example_id: r.correct for r in ra}
    cb = {r.example_id: r.correct for r in rb}
    shared = [i for i in ca if i in cb]
    return stats.paired_compare(np.array([ca[i] for i in shared]), np.array([cb[i] for i in shared]), seed=seed)


def comparisons(records: dict[str, list[Record]], seed: int = stats.SEED,
                template: str | None = None) -> list[Comparison]:
    """Every pair of models, paired on the example ids both have."""
    out = []
    for a, b in combinations(records, 2):
        p = _paired(records[a], records[b], seed)
        out.append(Comparison(model_a=a, model_b=b, template=template, **p.rounded()))
    return out


def template_table(model: str, by_template: dict[str, list[Record]], seed: int = stats.SEED) -> TemplateTable:
    """One model under each template: accuracy with a Wilson interval per template, and every pair
    of templates compared on the same examples (McNemar exact, Holm over the pairs, paired bootstrap)."""
    rows = []
    for name, recs in by_template.items():
        ok = [r.correct for r in recs]
        lo, hi = stats.proportion_ci(ok)
        pc = [r.p_correct for r in recs if r.p_correct is not None]
        rows.append(TemplateRow(template=name, n=len(recs), accuracy=_r(np.mean(ok)) if recs else float("nan"),
                                ci_low=_r(lo), ci_high=_r(hi),
                                accuracy_strict=_r(np.mean([r.correct_strict for r in recs])) if recs else float("nan"),
                                parse_error_rate=_r(np.mean([r.error_kind == "parse" for r in recs]))
                                if recs else float("nan"),
                                p_correct=_r(np.mean(pc)) if pc else None))
    paired = [(a, b, _paired(by_template[a], by_template[b], seed)) for a, b in combinations(by_template, 2)]
    adjusted = stats.holm([p.mcnemar_p for _, _, p in paired])
    pairs = [TemplatePair(template_a=a, template_b=b, mcnemar_p_holm=_r(q, 8), **p.rounded())
             for (a, b, p), q in zip(paired, adjusted)]
    accs = [r.accuracy for r in rows if r.n]
    return TemplateTable(model=model, templates=rows, pairs=pairs, spread=_r(max(accs) - min(accs)) if accs else 0.0)


def templates_section(records: dict[str, dict[str, list[Record]]], seed: int = stats.SEED) -> TemplatesSection:
    """`records[model][template]` -> the summary's `templates` section."""
    names = list(dict.fromkeys(t for by in records.values() for t in by))
    return TemplatesSection(names=names, interval=stats.INTERVAL, difference_ci=stats.CI, test=f"McNemar, {stats.MCNEMAR}",
                            models=[template_table(m, by, seed) for m, by in records.items()])
