"""Report section: running counter or parallel aggregation, by the decision rule of
docs/MECHANISM.md (report/mechanism.py), with the evidence it weighed."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def mechanism_section(out: Path) -> list[tuple[str, Any]]:
    from countlens.report.mechanism import decide, evidence_from

    blocks: list[tuple[str, Any]] = [("h2", ("mechanism", "9. Running counter or parallel aggregation?"))]
    v = decide(evidence_from(out))
    lean = f" The evidence that voted leans to {v.lean}." if v.hypothesis == "inconclusive" and v.lean else ""
    blocks.append(("p", f"Verdict: {v.hypothesis} ({v.strength}). {v.summary}{lean}"))
    rows = [[e.name, e.value, e.vote or "abstains", e.reading] for e in v.evidence]
    if rows:
        blocks.append(("table", (["evidence", "number", "vote", "reading"], rows)))
    if v.notes:
        blocks.append(("p", "Notes: " + " ".join(v.notes)))
    blocks.append(("p", "The rule and its thresholds are in docs/MECHANISM.md. A running counter keeps the count so "
                        "far at each matching item (CountScope, arXiv 2511.17699); parallel aggregation gathers "
                        "the list at the answer position with no token-by-token state (Tang et al., arXiv "
                        "2605.30233). 'inconclusive' means the numbers do not separate the two, not that neither "
                        "holds."))
    return blocks
