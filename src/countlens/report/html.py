"""The study report: one self-contained report.html (figures as PNG data URIs) and report.md.

Everything here reads result files written by the stages; no number in the text is typed in.
The report is a list of blocks rendered twice (HTML and Markdown) so both say the same.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from countlens.io import write_text

Block = tuple[str, Any]  # ("h2", (id, text)) | ("p", text) | ("table", (header, rows)) | ("fig", (path, caption))


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _pct(x: Any) -> str:
    return "n/a" if x is None or x != x else f"{100 * float(x):.1f}%"


def _num(x: Any, nd: int = 2) -> str:
    return "n/a" if x is None or x != x else f"{float(x):.{nd}f}"


def _ci(e: dict, key="accuracy", lo="ci_low", hi="ci_high", pct=True) -> str:
    f = _pct if pct else _num
    return f"{f(e.get(key))} [{f(e.get(lo))}, {f(e.get(hi))}]"


def _figs(d: Path, names: list[str], captions: dict[str, str] | None = None) -> list[Block]:
    out = []
    for name in names:
        for p in sorted(d.glob(name)):
            out.append(("fig", (p, (captions or {}).get(p.name, p.stem.replace("_", " ")))))
    return out


def run_section(out: Path, cfg: Any) -> list[Block]:
    env = _load(out / "environment.json") or {}
    timings = _load(out / "timings.json") or {}
    data = _load(out / "data" / "summary.json") or {}
    blocks: list[Block] = [("h2", ("run", "What ran"))]
    rows = [["model", cfg.model], ["preset", cfg.preset], ["template", cfg.template or "model's native"],
            ["prompt format", cfg.prompt_format], ["examples", str(data.get("rows"))],
            ["data seed", str(cfg.data.seed)], ["lexicon", cfg.data.lexicon],
            *[[k, str(v)] for k, v in env.items()],
            ["stage timings (s)", ", ".join(f"{k} {v}" for k, v in timings.items())]]
    org = Path(_organism_meta(cfg.model)) if _organism_meta(cfg.model) else None
    if org and org.exists():
        meta = json.loads(org.read_text())
        rows.append(["organism", f"{meta.get('template')} template, {_pct(meta.get('accuracy'))} greedy on "
                     f"{meta.get('eval', {}).get('n')} fresh examples, {meta.get('steps')} training steps"])
    blocks.append(("table", (["", ""], rows)))
    return blocks


def _organism_meta(model: str) -> str | None:
    from countlens.models.registry import resolve

    p = Path(resolve(model)) / "countlens.json"
    return str(p) if p.exists() else None


def bench_section(out: Path) -> list[Block]:
    blocks: list[Block] = [("h2", ("bench", "1. How well does it count? (benchmark)"))]
    rows, figs = [], []
    for mode in ("generate", "score"):
        d = out / "bench" / mode
        s = _load(d / "summary.json")
        if not s:
            continue
        for m in s.get("models", []):
            rows.append([mode, m.get("model"), str(m.get("n")), _ci(m), _pct(m.get("accuracy_strict")),
                         _pct(m.get("parse_error_rate")), _pct(m.get("numerical_error_rate")),
                         _num(m.get("mean_signed_error"))])
            if mode == "generate":
                by = m.get("by_count") or {}
                if by:
                    blocks.append(("p", "Accuracy by true count (generate): " + ", ".join(
                        f"{k}: {_pct(v.get('accuracy') if isinstance(v, dict) else v)}" for k, v in by.items())))
                byl = m.get("by_list_length") or {}
                if byl:
                    blocks.append(("p", "By list length: " + ", ".join(
                        f"{k}: {_pct(v.get('accuracy') if isinstance(v, dict) else v)}" for k, v in byl.items())))
            else:
                extra = {k: v for k, v in (m.get("score") or {}).items()
                         if k in ("p_correct", "mean_expected_error", "ece", "mean_confidence")}
                if extra:
                    blocks.append(("p", "Score mode (one forward per prompt): " + ", ".join(
                        f"{k.replace('_', ' ')} {_num(v, 3)}" for k, v in extra.items())))
        figs += _figs(d, ["accuracy.png", "accuracy_by_count.png", "confusion*.png"])
    if not rows:
        return blocks + [("p", "The benchmark stage has not run.")]
    blocks.insert(1, ("table", (["mode", "model", "n", "accuracy [95% CI]", "strict", "parse errors",
                                 "numerical errors", "mean signed error"], rows)))
    blocks.append(("p", "Reading: accuracy uses the lenient parser as the original study did; the strict "
                   "column needs the exact `(N)` form. The interval is a bootstrap over examples: it covers "
                   "sampling of examples from this generator, not other templates or lexicons."))
    return blocks + figs


def patch_section(out: Path) -> list[Block]:
    d = out / "patch"
    s = _load(d / "summary.json")
    blocks: list[Block] = [("h2", ("patch", "2. Where is the count causally carried? (activation patching)"))]
    if not s:
        return blocks + [("p", "The patching stage has not run.")]
    pl = s["per_layer"]
    rows = [[str(e["layer"]), _ci(e, "mean", pct=False), _num(e.get("ratio_of_means")), _pct(e.get("p_target")),
             _pct(e.get("exact_match"))] for e in pl]
    first_half = next((e for e in pl if e["mean"] >= 0.5), None)
    blocks += [
        ("p", f"{s['kept_pairs']} of {s['total_pairs']} minimal pairs kept ("
              + ("no baseline filter" if s.get("filter") == "none" else
                 f"the model answers both prompts correctly, filter '{s.get('filter')}'")
              + f"; {s['dropped_misaligned']} dropped as misaligned under the model's tokenizer). "
              f"Method: {s['method']}; direction shown: {s['direction']}."),
        ("table", (["layer", "normalised effect [95% CI]", "ratio of means", "P(target)", "argmax = target"],
                   rows)),
        ("p", f"Reading: patching the residual stream at the answer position moves the answer from 0 at "
              f"'emb' ({_num(pl[0]['mean'], 3)}) to 1 after the last block ({_num(pl[-1]['mean'], 3)}); the "
              f"effect first passes one half at layer {first_half['layer'] if first_half else 'n/a'}. "
              "Layer L is the output of block L. The heatmaps show where along the prompt the count "
              "information sits at each layer: effect at the changed word's position in early layers and at "
              "the answer position only in late layers suggests a running count carried forward; effect only "
              "at the answer position suggests aggregation at the end. Averages hide single-pair noise: see "
              "the CI."),
    ]
    gen = s.get("generate") or []
    if gen:
        blocks.append(("table", (["layer", "changed (generate)", "exact match (generate)", "mean |shift|"],
                                 [[str(g["layer"]), _pct(g["gen_changed"]), _pct(g["gen_exact_match"]),
                                   _num(g["gen_abs_shift"])] for g in gen])))
        blocks.append(("p", "The original study's protocol (patch, generate, parse), kept for comparison."))
    return blocks + _figs(d, ["patch_per_layer.png", "patch_heatmap_*.png", "patch_heads.png"])


def probe_section(out: Path) -> list[Block]:
    d = out / "probes"
    s = _load(d / "summary.json")
    blocks: list[Block] = [("h2", ("probes", "3. Where can the count be read out? (linear probes, with controls)"))]
    if not s:
        return blocks + [("p", "The probe stage has not run.")]
    pl = s.get("per_layer", [])
    rows = [[str(e["layer"]), _ci(e), _pct(e.get("control_accuracy")), _pct(e.get("selectivity")),
             _num(e.get("r2"))] for e in pl]
    best = max(pl, key=lambda e: e.get("accuracy") or 0) if pl else {}
    inp = (s.get("input_baseline") or {}).get("accuracy")
    maj = s.get("majority")
    maj = maj.get("accuracy") if isinstance(maj, dict) else maj
    blocks += [("table", (["layer", "accuracy [95% CI]", "control task", "selectivity", "ridge R²"], rows)),
               ("p", f"Baselines: majority class {_pct(maj)}; input-only bag-of-words classifier {_pct(inp)}. "
                     f"Best layer {best.get('layer')}: {_pct(best.get('accuracy'))}."),
               ("p", "Reading: a probe shows the count is linearly decodable, not that the model uses it "
                     "(see patching and steering for use). Selectivity subtracts the accuracy of the same probe "
                     "on a control task (random word memberships), so it measures what the representation "
                     "encodes beyond the probe's own capacity. The running-count heatmap asks whether a count "
                     "of matches so far is readable at every list word, or only at the answer.")]
    return blocks + _figs(d, ["probe_accuracy_by_layer.png", "probe_running_count.png", "probe_confusion.png"])


def steer_section(out: Path) -> list[Block]:
    d = out / "steer"
    s = _load(d / "summary.json")
    blocks: list[Block] = [("h2", ("steer", "4. Can we move the count? (steering)"))]
    if not s:
        return blocks + [("p", "The steering stage has not run.")]
    rows = []
    for kind in ("mean-diff", "one-more", "probe"):
        b = (s.get(kind) or {}).get("best")
        lb = (s.get(kind) or {}).get("last_block")
        if b:
            rows.append([kind, str(b["layer"]), _num(b["scale"], 1),
                         f"{_pct(b['success_rate'])} [{_pct(b.get('ci_low'))}, {_pct(b.get('ci_high'))}]",
                         _pct(b.get("control_success_rate")), _pct(b.get("wrong_way")),
                         _pct(lb["success_rate"]) if lb else "n/a"])
    blocks += [("p", f"Vectors from {s['n_train']} examples, evaluated on {s['n_eval']} held-out examples "
                     f"(unsteered accuracy {_pct(s.get('unsteered_accuracy'))}); target: N -> N+1."),
               ("table", (["vector", "best layer", "scale", "success [95% CI]", "random vector, same norm",
                           "moved the wrong way", "at the last block"], rows))]
    gen = s.get("generate") or []
    if gen:
        blocks.append(("table", (["generation", "layer", "scale", "parse rate", "N+1 rate", "still correct"],
                                 [[g["vector"], str(g["layer"]), _num(g["scale"], 1), _pct(g["parse_rate"]),
                                   _pct(g["success_rate"]), _pct(g["correct_rate"])] for g in gen])))
    blocks.append(("p", "Reading: the best setting is chosen among layers before the last block, because at the "
                        "last block's output any class-mean difference moves the logits almost by construction "
                        "(reported separately). The random vector of the same norm is the control: success well "
                        "above it means the direction, not the perturbation size, moves the count."))
    return blocks + _figs(d, ["steer_dose_response.png", "steer_transitions_mean-diff.png",
                              "steer_transitions_random_at_mean-diff.png"])


def caveats(cfg: Any) -> list[Block]:
    organism = cfg.model == "organism"
    text = ("This model is the countlens organism: a 4-layer transformer trained here only to count. It is a "
            "positive control (it is known to count, so every analysis must find its count) and says little "
            "about how a pretrained LLM counts: run the same study on an LLM folder for that. Its last training "
            "phase (interchange intervention training) put the count in the residual stream entering its last "
            "block at the answer position, so patching and steering finding it at layer L-2 check the tools "
            "against a known answer; they are not a discovery about this model.") if organism else \
        "Results hold for this model, template and lexicon; other prompt formats may route the count differently."
    return [("h2", ("caveats", "What these numbers do not show")),
            ("p", text),
            ("p", "Probe accuracy is not use; patching effects are averages over pairs whose single-pair values "
                  "vary (see CIs); steering success at one layer and scale is a dose, not a mechanism.")]


def build_blocks(out: Path, cfg: Any) -> list[Block]:
    return [("h1", f"countlens study: {cfg.model}"), *run_section(out, cfg), *bench_section(out),
            *patch_section(out), *probe_section(out), *steer_section(out), *caveats(cfg)]


def _md(blocks: list[Block], out: Path) -> str:
    lines = []
    for kind, v in blocks:
        if kind == "h1":
            lines.append(f"# {v}\n")
        elif kind == "h2":
            lines.append(f"\n## {v[1]}\n")
        elif kind == "p":
            lines.append(v + "\n")
        elif kind == "table":
            header, rows = v
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
            lines.append("")
        elif kind == "fig":
            path, cap = v
            lines.append(f"![{cap}]({path.relative_to(out).as_posix()})\n")
    return "\n".join(lines)


CSS = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px}"
       "th{background:#f3f3f3}figure{margin:1em 0}img{max-width:100%}figcaption{font-size:13px;color:#555}"
       "section{border-top:1px solid #ddd;margin-top:1.5em}")


def _html(blocks: list[Block]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>countlens report</title>",
             f"<style>{CSS}</style></head><body>"]
    open_section = False
    for kind, v in blocks:
        if kind == "h1":
            parts.append(f"<h1>{html.escape(v)}</h1>")
        elif kind == "h2":
            if open_section:
                parts.append("</section>")
            parts.append(f"<section id='{v[0]}'><h2>{html.escape(v[1])}</h2>")
            open_section = True
        elif kind == "p":
            parts.append(f"<p>{html.escape(v)}</p>")
        elif kind == "table":
            header, rows = v
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                                   for r in rows) + "</table>")
        elif kind == "fig":
            path, cap = v
            data = base64.b64encode(Path(path).read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(cap)}</figcaption></figure>")
    if open_section:
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out: str | Path, cfg: Any) -> dict:
    out = Path(out)
    blocks = build_blocks(out, cfg)
    write_text(out / "report.md", _md(blocks, out))
    write_text(out / "report.html", _html(blocks))
    return {"html": str(out / "report.html"), "md": str(out / "report.md"),
            "figures": sum(1 for k, _ in blocks if k == "fig")}
