"""The findings card that opens the report: each question a counting study asks, answered with its
number, its interval and a link to the section that shows it. Read from the stages' summary files
only; a stage that has not run says so instead of a number."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from countlens.report.analyses_sections import analyses_dir
from countlens.report.fmt import load, num, pct


DECODABLE = 0.9   # "decodable" from the first layer whose probe accuracy is within 90 % of the best layer's
CAUSAL = 0.5      # "causal" from the first layer whose normalised patching effect reaches one half


def chance_levels(out: Path) -> dict:
    """Uniform chance over the answers 0..K and the majority-class rate of the data."""
    data = load(out / "data" / "summary.json") or {}
    by = {int(k): v for k, v in (data.get("by_count") or {}).items()}
    if not by:
        return {}
    return {"uniform": 1 / (max(by) + 1), "majority": max(by.values()) / sum(by.values()), "k": max(by)}


def counts_above_chance(out: Path) -> bool | None:
    """True when every benchmark mode's accuracy interval lies above both chance levels."""
    ch = chance_levels(out)
    lows = []
    for mode in ("generate", "score"):
        s = load(out / "bench" / mode / "summary.json")
        for m in (s or {}).get("models", []):
            lows.append(m.get("ci_low"))
    if not lows or not ch or any(x is None for x in lows):
        return None
    return min(lows) > max(ch["uniform"], ch["majority"])


def _ci(e: dict, key: str, f=pct, lo: str = "ci_low", hi: str = "ci_high") -> str:
    return f"{f(e.get(key))} [{f(e.get(lo))}, {f(e.get(hi))}]"


def _counts(out: Path) -> tuple[str, str]:
    s = load(out / "bench" / "generate" / "summary.json") or load(out / "bench" / "score" / "summary.json")
    if not s or not s.get("models"):
        return "not measured (the benchmark has not run)", "bench"
    m = s["models"][0]
    ch = chance_levels(out)
    above = counts_above_chance(out)
    verdict = "yes, above chance" if above else "NO, not above chance" if above is False else "see the benchmark"
    return (f"{verdict}: {_ci(m, 'accuracy')} on {m.get('n')} examples (chance: uniform {pct(ch.get('uniform'))}, "
            f"majority {pct(ch.get('majority'))})"), "bench"


def _decodable(out: Path) -> tuple[str, str]:
    s = load(out / "probes" / "summary.json")
    pl = (s or {}).get("per_layer") or []
    if not pl:
        return "not measured (the probes have not run)", "probes"
    best = max(e.get("accuracy") or 0 for e in pl)
    first = next(e for e in pl if (e.get("accuracy") or 0) >= DECODABLE * best)
    weak = (first.get("accuracy") or 0) - (first.get("control_accuracy") or 0) < 0.1
    return (f"from layer {first['layer']} at the answer position: probe accuracy {_ci(first, 'accuracy')} "
            f"(best {pct(best)}; control task {pct(first.get('control_accuracy'))}"
            + ("; barely above the control, so only weakly decodable)" if weak else ")")), "probes"


def _causal(out: Path) -> tuple[str, str]:
    s = load(out / "patch" / "summary.json")
    pl = (s or {}).get("per_layer") or []
    if not pl:
        return "not measured (patching has not run)", "patch"
    if s.get("informative_pairs") == 0:
        return "undefined: the model's output does not tell a pair's two counts apart", "patch"
    first = next((e for e in pl if (e.get("mean") or 0) >= CAUSAL), None)
    if first is None:
        return (f"no layer reaches a normalised effect of {CAUSAL} at the answer position (largest "
                f"{num(max(e.get('mean') or 0 for e in pl))})"), "patch"
    return (f"from layer {first['layer']} at the answer position: patching the residual stream there moves "
            f"{_ci(first, 'mean', num)} of the way to the other count"), "patch"


def _read_out(out: Path) -> tuple[str, str]:
    s = load(analyses_dir(out) / "lens" / "summary.json")
    if not s:
        return "not measured (the logit lens has not run)", "lens"
    first = s.get("first_layer_90")
    own, chance = s.get("own") or {}, s.get("chance") or {}
    level = max(chance.get("uniform") or 0, chance.get("majority") or 0)
    if own.get("ci_low") is not None and own["ci_low"] <= level:
        return (f"nothing to read out: the model's own accuracy over the count tokens, {_ci(own, 'accuracy')}, "
                f"is at chance ({pct(level)})"), "lens"
    row = next((e for e in s.get("per_layer", []) if str(e["layer"]) == str(first)), {})
    return (f"from layer {first}: the logit lens reaches {_ci(row, 'accuracy')}, 90 % of the model's own "
            f"{pct((s.get('own') or {}).get('accuracy'))}" if first is not None else
            "the logit lens never reaches 90 % of the model's own accuracy"), "lens"


def _components(out: Path) -> tuple[str, str]:
    parts = []
    dla = load(analyses_dir(out) / "dla" / "summary.json")
    if dla:
        h = (dla.get("top_heads") or [{}])[0]
        m = (dla.get("top_mlps") or [{}])[0]
        parts.append(f"DLA: head {h.get('component', '?').removeprefix('head.')} {_ci(h, 'mean', num)}, "
                     f"{m.get('component')} {_ci(m, 'mean', num)} logits")
    att = load(analyses_dir(out) / "attention" / "summary.json")
    if att and att.get("top_heads"):
        h = att["top_heads"][0]
        parts.append(f"attention to matching items: head {h['layer']}.{h['head']} "
                     f"{_ci(h, 'diff', lambda x: num(x, 3))} more per matching word")
    patch = load(out / "patch" / "summary.json")
    heads = (((patch or {}).get("cells") or {}).get("top_at_answer") or {}).get("head") or []
    if heads:
        h = heads[0]
        parts.append(f"head patching: head {h['layer']}.{h['head']} {_ci(h, 'mean', num)} logit difference")
    return ("; ".join(parts) if parts else "not measured (DLA, attention and head patching have not run)"), "dla"


def _mechanism(out: Path) -> tuple[str, str]:
    try:
        from countlens.report.mechanism import decide, evidence_from
    except ImportError:  # pragma: no cover
        return "not decided", "mechanism"
    v = decide(evidence_from(out))
    return f"{v.hypothesis} ({v.strength}): {v.summary}", "mechanism"


def _steer(out: Path) -> tuple[str, str]:
    s = load(out / "steer" / "summary.json")
    b = ((s or {}).get("mean-diff") or {}).get("best")
    if not b:
        return "not measured (steering has not run)", "steer"
    ok = b.get("ci_low") is not None and b.get("control_success_rate") is not None \
        and b["ci_low"] > b["control_success_rate"]
    return (f"{'yes' if ok else 'no better than a random vector'}: N -> N+1 in {_ci(b, 'success_rate')} of "
            f"held-out examples at layer {b['layer']} (scale {num(b['scale'], 1)}), random vector of the same norm "
            f"{pct(b.get('control_success_rate'))}"), "steer"


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
