"""What the CLI prints for a human: one summary dict in, lines of text out (`--json` prints the dict)."""

from __future__ import annotations

from typing import Any


def _unsigned_zero(text: str) -> str:
    """'-0.0' -> '0.0' (a rounded zero has no sign)."""
    return text.replace("-", "", 1) if text.lstrip("+-").strip("0.") == "" else text


def _pct(v: float | None) -> str:
    return "-" if v is None else _unsigned_zero(f"{100 * v:.1f}") + "%"


def lexicon(lex: Any) -> str:
    d = lex.to_dict()
    return "\n".join([f"lexicon {lex.name}" + (" (read-only)" if lex.read_only else "")]
                     + [f"  {c:<11} {' '.join(ws)}" for c, ws in d["categories"].items()]
                     + [f"  {'noise':<11} {' '.join(d['noise'])}"]
                     + ([f"  ambiguous: {lex.ambiguous}"] if lex.ambiguous else []))


def data(s: dict, out: Any) -> str:  # noqa: D103 (one line per command below: what it prints)
    return (f"wrote {s['rows']} rows to {out}\n  by count:  {s['by_count']}\n"
            f"  by length: {s['by_list_length']}\n  by category: {s['by_category']}")


def validation(s: dict, file: Any, fix: Any) -> str:
    return (f"{file} against lexicon {s['lexicon']}\n  rows {s['rows']}  label_errors {s['label_errors']}  "
            f"duplicate_word_lists {s['duplicate_word_lists']}  ambiguous_rows {s['ambiguous_rows']}  "
            f"unknown_words {s['unknown_words']}\n  balance {s['balance']}"
            + (f"\n  relabelled copy: {fix}" if fix else ""))


def pairs(s: dict, out: Any) -> str:
    return (f"wrote {s['pairs']} aligned pairs to {out} (dropped_misaligned {s['dropped_misaligned']}, "
            f"redrawn {s['redrawn']}, by N {s['by_n_low']})")


def patching(s: dict) -> str:
    lines = [f"kept {s['kept_pairs']}/{s['total_pairs']} pairs (dropped_misaligned {s['dropped_misaligned']})"
             + (f"; {s['filter_fallback']}" if s.get("filter_fallback") else "")]
    for d, ds in s["by_direction"].items():
        curve = "  ".join(f"{e['layer']}:{e['mean']:.2f}" for e in ds["per_layer"])
        lines.append(f"{d}: normalised effect by layer (resid, last position; {ds['informative_pairs']} pairs with "
                     f"|LD gap| > {ds['ld_gap_threshold']}): {curve}")
    return "\n".join(lines + [f"wrote {s['out']}"])


def acts(s: dict, out: Any) -> str:
    return (f"{'complete' if s['complete'] else 'partial'}: {s['done_examples']}/{s['n_examples']} examples, "
            f"{s['n_rows']} rows x {len(s['sites'])} sites ({s['bytes_on_disk'] / 2**20:.1f} MiB) in {out} "
            f"({s['seconds']} s" + (f", resumed at {s['resumed_from']})" if s["resumed_from"] else ")"))


def probe_table(s: dict) -> list[str]:
    """The probe summary as aligned text lines, in percent like the report."""
    def ci(v, lo, hi) -> str:
        return "-" if v is None else f"{_pct(v)} [{_pct(lo)}, {_pct(hi)}]"

    def pts(v) -> str:
        return "-" if v is None else _unsigned_zero(f"{100 * v:+.1f}").replace("+0.0", "0.0") + " pts"

    head = ("layer", "accuracy [Wilson 95%]", "control", "selectivity", "R2")
    rows = [(str(r["layer"]), ci(r["accuracy"], r["ci_low"], r["ci_high"]), _pct(r["control_accuracy"]),
             pts(r["selectivity"]), "-" if r["r2"] is None else f"{r['r2']:.3f}") for r in s["per_layer"]]
    widths = [max(len(x[i]) for x in (head, *rows)) for i in range(len(head))]
    fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths))).rstrip()
    lines = [f"probes on {s['n_examples']} examples ({s['site']}, last position, split {s['split']}, "
             f"{s['folds']} folds); accuracy intervals: Wilson 95 % score intervals over examples "
             "(selectivity and R2: bootstrap 95 % in summary.json)",
             fmt(head), *map(fmt, rows)]
    if s.get("majority"):
        lines.append(f"majority class {_pct(s['majority']['accuracy'])}")
    if s.get("input_baseline"):
        ib = s["input_baseline"]
        lines.append(f"input only (bag of words) {ci(ib['accuracy'], ib['ci_low'], ib['ci_high'])}")
    if s.get("best_layer"):
        b = s["best_layer"]
        lines.append(f"best layer {b['layer']}: accuracy {ci(b['accuracy'], b['ci_low'], b['ci_high'])}, "
                     f"selectivity {pts(b['selectivity'])}, R2 {'-' if b['r2'] is None else format(b['r2'], '.3f')}")
    return lines


def probes(s: dict, out: Any, figures: bool) -> str:
    lines = probe_table(s)
    if s.get("running_count"):
        rc = s["running_count"]
        best = [max((row[i] for row in rc["accuracy"] if row[i] is not None), default=None)
                for i in range(len(rc["items"]))]
        lines.append("running count, best accuracy over layers by word: " + " ".join(_pct(v) for v in best))
    lines.append(f"wrote {out}/summary.json, probes.parquet, predictions.parquet, directions/"
                 + (", probe_*.png" if figures else ""))
    return "\n".join(lines)


def steering(s: dict) -> str:
    b = s["best"]
    return (f"mean-diff N->N+1: best layer {b.get('layer')} scale {b.get('scale')}: success "
            f"{b.get('success_rate', float('nan')):.1%} (random vector of equal norm: "
            f"{b.get('control_success_rate') or 0:.1%}); wrote {s['out']}")


def models(rows: list[dict]) -> str:
    return "\n".join(f"{r['name']:<19} {'installed' if r['installed'] else 'not installed':<14} "
                     f"{'cached' if r['cached'] else 'not cached':<11} {r['size_mb'] or 0:>7.1f} MB  "
                     f"{r['path'] or r.get('install') or ''}\n{'':<19} {r['source']}" for r in rows)


def finetune(s: dict, out: Any) -> str:
    return (f"adapter in {out}/adapter: {s['held_out_accuracy']:.1%} greedy on {s['held_out_n']} held-out examples "
            f"after {s['steps']} steps ({s['train_seconds'] / 60:.1f} min); merged model: {s['merged']}")


def organism(s: dict) -> str:
    return (f"{s['path']}\n  template {s['template']}  accuracy {s['accuracy']}  "
            f"{s['architecture']} {s['n_layers']} layers d={s['d_model']}")


def analyses(s: dict) -> str:
    return "\n".join([f"{r['analysis']}: {r['quantity']}: {r['value']}" for r in s["table"]] + [f"wrote {s['out']}"])


def export(s: dict) -> str:
    return "\n".join([f"wrote {s['rows']} rows ({s['prompt_format']} prompts) and the {s['format']} task to {s['out']}"]
                     + [f"  {task}: {cmd}" for task, cmd in s["commands"].items()])
