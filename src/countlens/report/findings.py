"""The findings card that opens the report: each question a counting study asks, answered with its
number, its interval and a link to the section that shows it. Read from the stages' summary files
only; a stage that has not run says so instead of a number."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from countlens.bench.results import BenchSummary
from countlens.report.analyses_sections import analyses_dir
from countlens.report.fmt import num, pct
from countlens.summaries import (AttentionSummary, DataSummary, DLASummary, LensSummary, PatchSummary, ProbeSummary,
                                 SteerSummary, read)


DECODABLE = 0.9   # "decodable" from the first layer whose probe accuracy is within 90 % of the best layer's
CAUSAL = 0.5      # "causal" from the first layer whose normalised patching effect reaches one half


def chance_levels(out: Path) -> dict:
    """Uniform chance over the answers 0..K and the majority-class rate of the data."""
    data = DataSummary.read(out / "data" / "summary.json")
    by = {int(k): v for k, v in data.by_count.items()} if data else {}
    if not by:
        return {}
    return {"uniform": 1 / (max(by) + 1), "majority": max(by.values()) / sum(by.values()), "k": max(by)}


def bench_summaries(out: Path) -> dict[str, BenchSummary]:
    """{mode: summary} for the benchmark modes that ran, generate first."""
    got = {mode: out / "bench" / mode / "summary.json" for mode in ("generate", "score")}
    return {mode: read(BenchSummary, p) for mode, p in got.items() if p.is_file()}


def counts_above_chance(out: Path) -> bool | None:
    """True when every benchmark mode's accuracy interval lies above both chance levels."""
    ch = chance_levels(out)
    lows = [m.ci_low for s in bench_summaries(out).values() for m in s.models]
    if not lows or not ch or any(x is None or x != x for x in lows):
        return None
    return min(lows) > max(ch["uniform"], ch["majority"])


def ci(value: Any, lo: Any, hi: Any, f=pct) -> str:
    """'12.3% [10.0%, 14.1%]': a value and its interval."""
    return f"{f(value)} [{f(lo)}, {f(hi)}]"


def _counts(out: Path) -> tuple[str, str]:
    bench = bench_summaries(out)
    models = next((s.models for s in bench.values() if s.models), None)
    if not models:
        return "not measured (the benchmark has not run)", "bench"
    m = models[0]
    ch = chance_levels(out)
    above = counts_above_chance(out)
    verdict = "yes, above chance" if above else "NO, not above chance" if above is False else "see the benchmark"
    return (f"{verdict}: {ci(m.accuracy, m.ci_low, m.ci_high)} on {m.n} examples (chance: uniform "
            f"{pct(ch.get('uniform'))}, majority {pct(ch.get('majority'))})"), "bench"


def _decodable(out: Path) -> tuple[str, str]:
    s = ProbeSummary.read(out / "probes" / "summary.json")
    pl = s.per_layer if s else []
    if not pl:
        return "not measured (the probes have not run)", "probes"
    best = max(e.accuracy or 0 for e in pl)
    first = next(e for e in pl if (e.accuracy or 0) >= DECODABLE * best)
    weak = (first.accuracy or 0) - (first.control_accuracy or 0) < 0.1
    return (f"from layer {first.layer} at the answer position: probe accuracy "
            f"{ci(first.accuracy, first.ci_low, first.ci_high)} (best {pct(best)}; control task "
            f"{pct(first.control_accuracy)}"
            + ("; barely above the control, so only weakly decodable)" if weak else ")")), "probes"


def _causal(out: Path) -> tuple[str, str]:
    s = PatchSummary.read(out / "patch" / "summary.json")
    pl = s.per_layer if s else []
    if not pl:
        return "not measured (patching has not run)", "patch"
    if s.informative_pairs == 0:
        return "undefined: the model's output does not tell a pair's two counts apart", "patch"
    first = next((e for e in pl if (e.mean or 0) >= CAUSAL), None)
    if first is None:
        return (f"no layer reaches a normalised effect of {CAUSAL} at the answer position (largest "
                f"{num(max(e.mean or 0 for e in pl))})"), "patch"
    return (f"from layer {first.layer} at the answer position: patching the residual stream there moves "
            f"{ci(first.mean, first.ci_low, first.ci_high, num)} of the way to the other count"), "patch"


def _read_out(out: Path) -> tuple[str, str]:
    s = LensSummary.read(analyses_dir(out) / "lens" / "summary.json")
    if not s:
        return "not measured (the logit lens has not run)", "lens"
    first, own = s.first_layer_90, s.own
    level = max(s.chance.uniform or 0, s.chance.majority or 0)
    if own.ci_low is not None and own.ci_low <= level:
        return (f"nothing to read out: the model's own accuracy over the count tokens, "
                f"{ci(own.accuracy, own.ci_low, own.ci_high)}, is at chance ({pct(level)})"), "lens"
    row = next((e for e in s.per_layer if str(e.layer) == str(first)), None)
    return (f"from layer {first}: the logit lens reaches {ci(row.accuracy, row.ci_low, row.ci_high)}, 90 % of "
            f"the model's own {pct(own.accuracy)}" if row is not None else
            "the logit lens never reaches 90 % of the model's own accuracy"), "lens"


def _components(out: Path) -> tuple[str, str]:
    parts = []
    dla = DLASummary.read(analyses_dir(out) / "dla" / "summary.json")
    if dla and dla.top_heads and dla.top_mlps:
        h, m = dla.top_heads[0], dla.top_mlps[0]
        parts.append(f"DLA: head {h.component.removeprefix('head.')} {ci(h.mean, h.ci_low, h.ci_high, num)}, "
                     f"{m.component} {ci(m.mean, m.ci_low, m.ci_high, num)} logits")
    att = AttentionSummary.read(analyses_dir(out) / "attention" / "summary.json")
    if att and att.top_heads:
        h = att.top_heads[0]
        parts.append(f"attention to matching items: head {h.layer}.{h.head} "
                     f"{ci(h.diff, h.ci_low, h.ci_high, lambda x: num(x, 3))} more per matching word")
    patch = PatchSummary.read(out / "patch" / "summary.json")
    heads = patch.cells.top_at_answer.get("head", []) if patch and patch.cells else []
    if heads:
        h = heads[0]
        parts.append(f"head patching: head {h.layer}.{h.head} {ci(h.mean, h.ci_low, h.ci_high, num)} "
                     "logit difference")
    return ("; ".join(parts) if parts else "not measured (DLA, attention and head patching have not run)"), "dla"


def _mechanism(out: Path) -> tuple[str, str]:
    try:
        from countlens.report.mechanism import decide, evidence_from
    except ImportError:  # pragma: no cover
        return "not decided", "mechanism"
    v = decide(evidence_from(out))
    return f"{v.hypothesis} ({v.strength}): {v.summary}", "mechanism"


def _steer(out: Path) -> tuple[str, str]:
    s = SteerSummary.read(out / "steer" / "summary.json")
    b = s.mean_diff.best if s and s.mean_diff else None
    if not b:
        return "not measured (steering has not run)", "steer"
    ok = b.ci_low is not None and b.control_success_rate is not None and b.ci_low > b.control_success_rate
    return (f"{'yes' if ok else 'no better than a random vector'}: N -> N+1 in "
            f"{ci(b.success_rate, b.ci_low, b.ci_high)} of held-out examples at layer {b.layer} (scale "
            f"{num(b.scale, 1)}), random vector of the same norm {pct(b.control_success_rate)}"), "steer"


QUESTIONS = (("Does the model count?", _counts),
             ("Where does the count become decodable?", _decodable),
             ("Where does it become causal?", _causal),
             ("Where is it read out?", _read_out),
             ("Which components carry it?", _components),
             ("Running counter or parallel aggregation?", _mechanism),
             ("Can it be steered?", _steer))


def findings(out: str | Path) -> list[dict[str, Any]]:
    """[{question, answer, section}] in the card's order."""
    out = Path(out)
    return [{"question": q, "answer": a, "section": sec} for q, (a, sec) in ((q, f(out)) for q, f in QUESTIONS)]


def findings_block(out: str | Path) -> list[tuple[str, Any]]:
    rows = [[f["question"], f["answer"], f"#{f['section']}"] for f in findings(out)]
    return [("h2", ("findings", "Findings")),
            ("findings", rows),
            ("p", f"Thresholds: decodable from the first layer within {int(DECODABLE * 100)} % of the best probe; "
                  f"causal from the first layer with a normalised effect of at least {CAUSAL}; read out from the "
                  "first layer whose logit lens reaches 90 % of the model's own accuracy. Each line links to its "
                  "section; what the numbers do not show is at the end.")]
