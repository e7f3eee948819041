"""The analyses stage: logit lens, direct logit attribution, attention to the items and attribution
patching, each into its own folder (OUT/lens, OUT/dla, OUT/attention, OUT/atp) with its figures.

Shared by `countlens analyse` and the study's `analyses` stage. The lens reads the probes stage's
directions (their alignment with the digit readout) and puts the probe accuracy next to its own;
AtP runs on the patching stage's pairs and grid and is compared with its exact table.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from countlens.options import MEMORY_BUDGET

ANALYSES = ("lens", "dla", "attention", "atp")


@dataclass
class AnalysesResult:
    """{analysis: result} for the analyses that ran; each result has .table, .summary, .to_frame()."""
    results: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None

    def to_frame(self):
        """One row per analysis: its headline (what the findings card reads)."""
        import pandas as pd

        return pd.DataFrame([{"analysis": k, **headline(k, r.summary)} for k, r in self.results.items()])

    def __getitem__(self, name: str) -> Any:
        return self.results[name]

    def plot(self, out_dir: str | Path = ".") -> dict[str, Any]:
        """Each analysis's figures into OUT_DIR/<analysis>/ (AtP's need the exact table: drawn by the stage)."""
        from countlens import plot

        return {k: plot(r, Path(out_dir) / k) for k, r in self.results.items() if k != "atp"}


def headline(name: str, s: dict) -> dict:
    """The one number of each analysis the findings card shows."""
    if name == "lens":
        return {"quantity": "first layer where the logit lens reaches 90 % of the model's accuracy",
                "value": s.get("first_layer_90")}
    if name == "dla":
        top = (s.get("top_heads") or [{}])[0]
        return {"quantity": "top head by direct logit attribution", "value": top.get("component")}
    if name == "attention":
        top = (s.get("top_heads") or [{}])[0]
        return {"quantity": "top head by matching - non-matching attention from the answer",
                "value": f"{top.get('layer')}.{top.get('head')}" if top else None}
    if name == "atp":
        rows = {r["site"]: r for r in s.get("agreement", [])}
        return {"quantity": "AtP vs exact patching, Spearman over every cell",
                "value": rows.get("all", {}).get("spearman")}
    return {}


def _probe_rows(probes: Path | None) -> list[dict] | None:
    f = probes / "summary.json" if probes else None
    return json.loads(f.read_text()).get("per_layer") if f and f.exists() else None


def run_analyses(handle: Any, out: str | Path, *, data: str | Path, n: int | None = 200,
                 which: Sequence[str] = ANALYSES, batch_size: int = 16, template: str | None = None,
                 pairs: str | Path | None = None, patch: str | Path | None = None,
                 probes: str | Path | None = None, patch_config: Any = None,
                 log: Callable[[str], None] | None = None, memory_budget: int = MEMORY_BUDGET) -> AnalysesResult:
    """Run the chosen analyses on `data` (and `pairs` for AtP) and write OUT/<analysis>/ with figures."""
    from countlens.errors import InputError
    from countlens.interp.acts import read_rows

    bad = [w for w in which if w not in ANALYSES]
    if bad:
        raise InputError(f"unknown analyses {bad} (choose from {', '.join(ANALYSES)})")
    out = Path(out)
    probes = Path(probes) if probes else None
    res = AnalysesResult(out=out)
    rows = read_rows(data, n, template=template, native=handle.native_template) \
        if {"lens", "dla", "attention"} & set(which) else []
    shared_dla = None
    if "lens" in which:
        from countlens.interp.directions import Directions
        from countlens.interp.lens import LensOptions, run_lens
        from countlens.report.lens_figures import lens_figures

        dirs = Directions.load(probes) if probes and (probes / "directions" / "resid-last").is_dir() else None
        if "dla" in which:  # direct logit attribution reads the lens's forwards (one forward for both)
            from countlens.interp.dla import Attribution, DLAOptions

            shared_dla = Attribution(handle, rows, DLAOptions(batch_size=batch_size))
        r = run_lens(handle, rows, LensOptions(batch_size=batch_size), directions=dirs, also=shared_dla)
        r.save(out / "lens")
        lens_figures(r.table, r.summary, out / "lens", probe=_probe_rows(probes))
        res.results["lens"] = r
    if "dla" in which:
        from countlens.interp.dla import DLAOptions, run_dla
        from countlens.report.dla_figures import dla_figures

        r = shared_dla.result() if shared_dla is not None else run_dla(handle, rows, DLAOptions(batch_size=batch_size))
        r.save(out / "dla")
        dla_figures(r.table, r.summary, out / "dla")
        res.results["dla"] = r
    if "attention" in which:
        from countlens.interp.attention import AttentionOptions, run_attention
        from countlens.report.attention_figures import attention_figures

        r = run_attention(handle, rows, AttentionOptions(batch_size=batch_size))
        r.save(out / "attention")
        attention_figures(r.table, r.summary, out / "attention")
        res.results["attention"] = r
    if "atp" in which:
        res.results["atp"] = _atp(handle, out / "atp", pairs, patch, patch_config, template, batch_size, log,
                                  memory_budget)
    return res


def _atp(handle, out: Path, pairs, patch, patch_config, template, batch_size, log, memory_budget):
    """AtP on the patching stage's pairs and grid, compared with its exact table where both exist."""
    import pandas as pd

    from countlens.errors import InputError
    from countlens.interp.atp import AtPOptions, cell_table, compare, run_atp
    from countlens.interp.patching import load_pairs
    from countlens.report.atp_figures import atp_figures

    if not pairs or not Path(pairs).exists():
        raise InputError("attribution patching needs minimal pairs (--pairs, from `countlens data pairs`)")
    pc = patch_config
    positions = "all" if pc is None or pc.positions in ("auto", "all") else pc.positions
    shared = {k: getattr(pc, k) for k in ("sites", "directions", "filter")} if pc is not None else {}
    opts = AtPOptions(**shared, positions=positions, batch_size=batch_size, template=template,
                      memory_budget=memory_budget)
    exact = Path(patch) / "table.parquet" if patch else None
    table = pd.read_parquet(exact) if exact is not None and exact.exists() else None
    kept, fallback = None, None
    if table is not None and (Path(patch) / "summary.json").exists():  # the pairs exact patching kept
        kept = list(dict.fromkeys(table.pair.astype(str)))
        fallback = json.loads((Path(patch) / "summary.json").read_text()).get("filter_fallback")
    r = run_atp(handle, load_pairs(pairs), opts, log=log, kept_ids=kept, kept_fallback=fallback)
    if table is not None:
        agreement = compare(r.table, table)
        r.summary["agreement"] = json.loads(agreement.to_json(orient="records"))
        r.save(out)
        atp_figures(cell_table(r.table, table), agreement, out)
    else:
        r.save(out)
    return r


def load_analyses(d: str | Path) -> AnalysesResult | None:
    """The analyses a finished stage wrote into d/<analysis>/, read back (None when none ran)."""
    from countlens.interp.atp import AtPResult
    from countlens.interp.attention import AttentionResult
    from countlens.interp.dla import DLAResult
    from countlens.interp.lens import LensResult

    d = Path(d)
    classes = {"lens": LensResult, "dla": DLAResult, "attention": AttentionResult, "atp": AtPResult}
    res = AnalysesResult(out=d)
    for name, cls in classes.items():
        if (d / name / "summary.json").exists():
            res.results[name] = cls.load(d / name)
    return res if res.results else None
