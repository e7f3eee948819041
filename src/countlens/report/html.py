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
from countlens.report.fmt import BOOT, WILSON
from countlens.report.fmt import load as _load
from countlens.report.fmt import num as _num
from countlens.report.fmt import pct as _pct
from countlens.report.analyses_sections import analyses_sections
from countlens.report.findings import bench_summaries, chance_levels, ci, counts_above_chance, findings_block
from countlens.summaries import DataSummary, ModelSummary, PatchSummary, ProbeSummary, SteerSummary

Block = tuple[str, Any]  # ("h2", (id, text)) | ("p", text) | ("table", (header, rows)) | ("fig", (path, caption))


def _figs(d: Path, names: list[str], captions: dict[str, str] | None = None) -> list[Block]:
    out = []
    for name in names:
        for p in sorted(d.glob(name)):
            out.append(("fig", (p, (captions or {}).get(p.name, p.stem.replace("_", " ")))))
    return out


def run_section(out: Path, cfg: Any) -> list[Block]:
    env = _load(out / "environment.json") or {}
    timings = _load(out / "timings.json") or {}
    data = DataSummary.read(out / "data" / "summary.json")
    model = ModelSummary.read(out / "model.json")
    blocks: list[Block] = [("h2", ("run", "What ran"))]
    rows = [["model", cfg.model], ["preset", cfg.preset],
            ["template", f"{(model and model.template) or cfg.template or 'seed-v1'}"
                         + ("" if cfg.template else " (the model's native template, else seed-v1)")],
            ["prompt format", f"{model.prompt_format if model else cfg.prompt_format} (asked: {cfg.prompt_format})"],
            ["examples", str(data.rows if data else None)], ["data seed", str(cfg.data.seed)],
            ["lexicon", cfg.data.lexicon]]
    if model:
        rows += [["architecture", f"{model.architecture}: {model.n_layers} decoder blocks, d_model "
                                  f"{model.d_model}, {model.n_heads} query heads over "
                                  f"{model.n_kv_heads} key/value heads, {model.parameters / 1e6:.1f} M "
                                  f"parameters, {model.dtype} on {model.device}"],
                 ["system prompt", repr(model.default_system_prompt) + " (added by the chat template by default)"
                  if model.default_system_prompt else "none"],
                 ["BOS", {"adds": "the tokenizer adds BOS itself; it is in the formatted text",
                          "has": f"the tokenizer has BOS {model.bos_token!r} but does not add it; raw prompts "
                                 "get it in front, chat prompts as the template writes them",
                          "none": "the tokenizer has no BOS token"}.get(model.bos_rule, "n/a")]]
        if model.gguf:
            g = model.gguf
            rows.append(["weights", f"dequantized from {Path(g['gguf']).name} (sha256 {g['sha256'][:12]}...): "
                                    "the numbers describe the quantized release, not the original float weights"])
        if model.finetune:
            f = model.finetune
            rows.append(["fine-tune", f"LoRA adapter (rank {f['config']['rank']}, every linear layer) on {f['base']}, "
                                      f"{f['steps']} steps of {f['config']['batch_size']} fresh "
                                      f"{f['template']['name']} examples in its chat format, loss on the answer only, "
                                      f"no mechanism shaping; {_pct(f['held_out_accuracy'])} greedy on "
                                      f"{f['held_out_n']} held-out examples"])
    rows += [*[[k, str(v)] for k, v in env.items()],
             ["stage timings (s)", ", ".join(f"{k} {v}" for k, v in timings.items())]]
    ran = preset_plan(cfg)
    rows.append(["what the preset ran", ran])
    org = Path(model.path) / "countlens.json" if model and model.path else None  # the model's folder
    if org and org.exists():
        meta = json.loads(org.read_text())
    if org and org.exists() and "finetune" not in meta:  # a fine-tuned model has its own row above
        ev = meta.get("eval")
        rows.append(["organism", f"{meta.get('template')} template, {_pct(meta.get('accuracy'))} greedy on "
                     f"{ev.get('n') if isinstance(ev, dict) else ev} fresh examples, {meta.get('steps')} training steps"])
    blocks.append(("table", (["setting", "value"], rows)))
    ex = model.example if model else None
    if ex:
        blocks.append(("p", "One prompt exactly as the model sees it, as tokens (| between tokens), with its named "
                            "positions: " + "|".join(t.text for t in ex.tokens).replace("\n", "\\n")))
        blocks.append(("table", (["token index", "token", "named position"],
                                 [[str(t.i), repr(t.text), t.name] for t in ex.tokens if t.name])))
    return blocks


def preset_plan(cfg: Any) -> str:
    """The grids the study ran, in words (presets scale with the model)."""
    p, s = cfg.patch, cfg.steer
    comps = [k for k in p.sites if k != "resid"]
    named = (f"resid at the answer on every layer and at the changed and last list word on layers "
             f"{', '.join(p.named_layers)}") if p.positions == "named" and getattr(p, "named_layers", None) else None
    sweeps = "; ".join(([named or f"resid at {p.positions}"] if "resid" in p.sites else [])
                       + ([f"{', '.join(comps)} at {p.component_positions}"] if comps else []))
    gen = ("on layers " + ", ".join(p.generate_layers) if p.generate_layers else "on every layer") \
        if p.generate else "off"
    return (f"bench {cfg.bench.n} examples ({', '.join(cfg.bench.modes)}); patching {cfg.pairs.n} pairs: {sweeps}"
            f" ({', '.join(p.directions)}; generate protocol {gen}); "
            f"probes {cfg.probes.n} examples at {', '.join(cfg.probes.positions)}"
            f"{' on layers ' + ','.join(cfg.probes.layers) if getattr(cfg.probes, 'layers', None) else ''}; "
            f"steering {cfg.steer.n} examples on layers {', '.join(s.layers) if s.layers else 'all'}, scales "
            f"{', '.join(f'{x:g}' for x in s.scales)}")


def bench_section(out: Path) -> list[Block]:
    blocks: list[Block] = [("h2", ("bench", "1. How well does it count? (benchmark)"))]
    rows, figs = [], []
    ch = chance_levels(out)
    for mode, s in bench_summaries(out).items():
        d = out / "bench" / mode
        for m in s.models:
            rows.append([mode, m.model, str(m.n), ci(m.accuracy, m.ci_low, m.ci_high), _pct(m.accuracy_strict),
                         _pct(m.parse_error_rate), _pct(m.numerical_error_rate), _num(m.mean_signed_error)])
            if m.by_count:
                blocks.append(("p", f"Accuracy by true count ({mode} mode): " + ", ".join(
                    f"{k}: {_pct(v.accuracy)}" for k, v in m.by_count.items())))
            if mode == "generate":
                if m.by_list_length:
                    blocks.append(("p", "By list length (generate mode): " + ", ".join(
                        f"{k}: {_pct(v.accuracy)}" for k, v in m.by_list_length.items())))
            elif m.score:
                extra = m.score.model_dump(include={"p_correct", "mean_expected_error", "ece", "mean_confidence"})
                blocks.append(("p", "Score mode (one forward per prompt): " + ", ".join(
                    f"{k.replace('_', ' ')} {_num(v, 3)}" for k, v in extra.items())))
        names = ["accuracy_by_count.png", "confusion*.png"]
        if len(s.models) > 1:  # one model: the table above says it; no single-bar chart
            names.insert(0, "accuracy.png")
        figs += _figs(d, names, bench_captions(d, mode))
    if not rows:
        return blocks + [("p", "The benchmark stage has not run.")]
    above = counts_above_chance(out)
    verdict = ("Every mode's interval lies above both chance levels: the model counts above chance."
               if above else
               "The model does NOT count above chance here (some mode's interval reaches a chance level): the "
               "patching, probing and steering sections below describe where count information flows in "
               "this model, not how a working counter works." if above is False else "")
    blocks.insert(1, ("p", f"Chance: uniform over the answers 0..{ch.get('k')} is {_pct(ch.get('uniform'))}; "
                           f"always answering the most frequent count scores {_pct(ch.get('majority'))}. "
                           + verdict) if ch else ("p", verdict))
    blocks.insert(2, ("table", (["mode", "model", "n", f"accuracy [{WILSON}]", "strict", "parse errors",
                                 "numerical errors", "mean signed error"], rows)))
    blocks.append(("p", "Reading: accuracy uses the lenient parser as the original study did; the strict "
                   f"column needs the exact `(N)` form. Intervals are {WILSON}s over "
                   "examples, which stay honest at 0 % and 100 %: they cover sampling of examples from this "
                   "generator, not other templates or lexicons."))
    return blocks + figs


BENCH_MODE = {"generate": "generate mode: greedy generation, answer parsed from the text",
              "score": "score mode: the most probable count among P(0..K) after the answer prefix, one forward"}


def bench_captions(d: Path, mode: str) -> dict[str, str]:
    """What each benchmark figure shows, naming the mode (generate and score draw the same kinds)."""
    how = BENCH_MODE.get(mode, f"{mode} mode")
    caps = {"accuracy.png": f"Accuracy per model ({how}), with {WILSON}s.",
            "accuracy_by_count.png": f"Accuracy by true count N ({how}), with {WILSON}s per count."}
    for p in d.glob("confusion*.png"):
        model = p.stem.removeprefix("confusion_")
        caps[p.name] = (f"Confusion matrix of {model} ({how}): true count (rows) x "
                        + ("parsed answer (columns; none: unparseable)." if mode == "generate"
                           else "most probable count (columns)."))
    return caps


def patch_section(out: Path) -> list[Block]:
    d = out / "patch"
    s = PatchSummary.read(d / "summary.json")
    blocks: list[Block] = [("h2", ("patch", "2. Where is the count causally carried? (activation patching)"))]
    if not s:
        return blocks + [("p", "The patching stage has not run.")]
    pl = s.per_layer
    rows = [[str(e.layer), ci(e.mean, e.ci_low, e.ci_high, _num),
             f"{_num(e.delta_ld, 3)} [{_num(e.delta_ld_ci_low, 3)}, {_num(e.delta_ld_ci_high, 3)}]",
             _num(e.ratio_of_means), _pct(e.p_target),
             ci(e.exact_match, e.exact_match_ci_low, e.exact_match_ci_high)] for e in pl]
    first_half = next((e for e in pl if (e.mean or 0) >= 0.5), None)
    blocks += [
        ("p", f"{s.kept_pairs} of {s.total_pairs} minimal pairs patched ("
              + (f"FALLBACK: {s.filter_fallback}, so these are all aligned pairs with logit-difference metrics"
                 if s.filter_fallback else "no baseline filter" if s.filter == "none" else
                 f"the model answers both prompts correctly, filter '{s.filter}'")
              + f"; {s.dropped_misaligned} dropped as misaligned under the model's tokenizer). "
              f"Method: {s.method}; direction shown: {s.direction}. The normalised effect is averaged over "
              f"the {s.informative_pairs} pairs whose source and base logit differences "
              f"differ by more than {s.ld_gap_threshold} logits (mean gap "
              f"{_num(s.mean_ld_gap)}); the change in logit difference is over every pair."),
        ("table", (["layer", f"normalised effect [{BOOT}]", f"Δ logit diff [{BOOT}]", "ratio of means",
                    "P(target)", f"argmax = target [{WILSON}]"], rows)),
        ("p", (f"Reading: no pair's source and base logit differences differ by more than "
               f"{s.ld_gap_threshold} logits (mean gap {_num(s.mean_ld_gap, 3)}): the model's output "
               "barely tells the two counts of a pair apart, so there is no output difference for patching to "
               "move and the normalised effect is undefined; the Δ logit-difference column shows the (small) "
               "absolute effects. This describes where the changed word's information flows, not a counter."
         if s.informative_pairs == 0 else
              f"Reading: the normalised effect of patching the residual stream at the answer position is "
              f"{_num(pl[0].mean, 2)} at 'emb' and {_num(pl[-1].mean, 2)} after the last block (0: no "
              f"change, 1: the patched run behaves like the source prompt); it first passes one half at layer "
              f"{first_half.layer if first_half else 'n/a'}. "
              "Layer L is the output of block L. The heatmaps show where along the prompt the count "
              "information sits at each layer: effect at the changed word's position in early layers and at "
              "the answer position only in late layers suggests a running count carried forward; effect only "
              "at the answer position suggests aggregation at the end. Averages hide single-pair noise: see "
              "the CI.")),
    ]
    if s.generate:
        blocks.append(("table", (["layer", "changed (generate)", f"exact match (generate) [{WILSON}]",
                                  "mean absolute shift"],
                                 [[str(g.layer), _pct(g.gen_changed),
                                   ci(g.gen_exact_match, g.gen_exact_match_ci_low, g.gen_exact_match_ci_high),
                                   _num(g.gen_abs_shift)] for g in s.generate])))
        blocks.append(("p", "The original study's protocol (patch, generate, parse), kept for comparison."))
    blocks.append(("p", f"Intervals: {BOOT}s (percentile, over pairs) for the means of effects; {WILSON}s "
                        "for the argmax and exact-match rates, which stay honest at 0 % and 100 %."))
    return blocks + _figs(d, ["patch_per_layer.png", "patch_heatmap_*.png", "patch_heads.png"], patch_captions(s))


def patch_captions(s: PatchSummary) -> dict[str, str]:
    direction = s.direction
    how = ("the low-count prompt run with the high-count prompt's activations patched in" if direction == "denoise"
           else "the high-count prompt run with the low-count prompt's activations patched in")
    caps = {"patch_per_layer.png": f"Normalised effect of patching the residual stream at the answer position, by "
                                   f"layer ({direction}: {how}), mean over pairs with a {BOOT}.",
            "patch_heads.png": f"Normalised effect of patching each attention head's output at the answer position, "
                               f"by layer x head ({direction})."}
    named = s.positions == "named"
    for site in ("resid", "attn", "mlp"):
        caps[f"patch_heatmap_{site}.png"] = (
            f"Normalised effect of patching the {SITE_NAMES[site]} at each layer (rows) x position (columns), "
            f"{direction}. " + ("Columns are the named positions, each pair at its own token."
                                if named else "Columns are offsets from the end, labelled with the tokens of one "
                                "example prompt; the changed word is in red."))
    return caps


SITE_NAMES = {"resid": "residual stream", "attn": "attention output", "mlp": "MLP output"}


def probe_section(out: Path) -> list[Block]:
    d = out / "probes"
    s = ProbeSummary.read(d / "summary.json")
    blocks: list[Block] = [("h2", ("probes", "3. Where can the count be read out? (linear probes, with controls)"))]
    if not s:
        return blocks + [("p", "The probe stage has not run.")]
    pl = s.per_layer
    rows = [[str(e.layer), ci(e.accuracy, e.ci_low, e.ci_high), _pct(e.control_accuracy), _pct(e.selectivity),
             _num(e.r2)] for e in pl]
    best = max(pl, key=lambda e: e.accuracy or 0) if pl else None
    best_layer, best_acc = (best.layer, best.accuracy) if best else (None, None)
    inp = s.input_baseline.accuracy if s.input_baseline else None
    maj = s.majority.accuracy if s.majority else None
    blocks += [("table", (["layer", f"accuracy [{WILSON}]", "control task", "selectivity", "ridge R²"], rows)),
               ("p", f"Baselines: majority class {_pct(maj)}; input-only bag-of-words classifier {_pct(inp)}. "
                     f"Best layer {best_layer}: {_pct(best_acc)}."),
               ("p", "Reading: a probe shows the count is linearly decodable, not that the model uses it "
                     "(see patching and steering for use). Selectivity subtracts the accuracy of the same probe "
                     "on a control task (random word memberships), so it measures what the representation "
                     "encodes beyond the probe's own capacity. The running-count heatmap asks whether a count "
                     "of matches so far is readable at every list word, or only at the answer."),
               ("p", f"Intervals: accuracies have {WILSON}s over held-out examples, which stay "
                     f"honest at 0 % and 100 %; selectivity and R² have {BOOT}s over examples.")]
    caps = {"probe_accuracy_by_layer.png": f"Left: held-out accuracy of the linear count probe at the answer "
                                           f"position by layer ({WILSON}s), beside the control task, shuffled "
                                           "labels, the majority class and the input-only bag of words. Right: "
                                           "ridge R² of the count as a number.",
            "probe_running_count.png": "Running-count probe: held-out accuracy of the count of matches so far, at "
                                       "each list word (columns) and layer (rows).",
            "probe_confusion.png": f"Confusion matrix of the best layer's probe (layer {best_layer}): true "
                                   "count (rows) x predicted count (columns), out-of-fold."}
    return blocks + _figs(d, ["probe_accuracy_by_layer.png", "probe_running_count.png", "probe_confusion.png"], caps)


def steer_section(out: Path) -> list[Block]:
    d = out / "steer"
    s = SteerSummary.read(d / "summary.json")
    blocks: list[Block] = [("h2", ("steer", "4. Can we move the count? (steering)"))]
    if not s:
        return blocks + [("p", "The steering stage has not run.")]
    rows = []
    for kind, v in s.vectors().items():
        b, lb = v.best, v.last_block
        if b:
            rows.append([kind, str(b.layer), _num(b.scale, 1), ci(b.success_rate, b.ci_low, b.ci_high),
                         _pct(b.control_success_rate), _pct(b.wrong_way), _pct(lb.success_rate) if lb else "n/a"])
    source = ("The probes stage's saved directions (fitted on its own examples, not these)"
              if s.options.get("directions") else f"Vectors from {s.n_train} examples")
    blocks += [("p", f"{source}, evaluated on {s.n_eval} held-out examples "
                     f"(unsteered accuracy {_pct(s.unsteered_accuracy)}); target: N -> N+1."),
               ("table", (["vector", "best layer", "scale", f"success [{WILSON}]", "random vector, same norm",
                           "moved the wrong way", "at the last block"], rows))]
    if s.generate:
        blocks.append(("table", (["generation", "layer", "scale", "parse rate", "N+1 rate", "still correct"],
                                 [[g.vector, str(g.layer), _num(g.scale, 1), _pct(g.parse_rate),
                                   _pct(g.success_rate), _pct(g.correct_rate)] for g in s.generate])))
    md = s.mean_diff.best if s.mean_diff else None
    if md and md.ci_low is not None and md.control_success_rate is not None and md.ci_low <= md.control_success_rate:
        blocks.append(("p", "No steering vector moved the count N -> N+1 more often than a random vector of the "
                            f"same norm (best mean-difference setting {_pct(md.success_rate)} against "
                            f"{_pct(md.control_success_rate)} for the control): this model's count is not "
                            "steerable along these directions at these scales."))
    blocks.append(("p", "Reading: the best setting is chosen among layers before the last block, because at the "
                        "last block's output any class-mean difference moves the logits almost by construction "
                        "(reported separately). The random vector of the same norm is the control: success well "
                        "above it means the direction, not the perturbation size, moves the count."))
    blocks.append(("p", f"Intervals: success rates have {WILSON}s over held-out examples; the "
                        f"dose-response curves have {BOOT}s of the mean shift."))
    at = f"layer {md.layer}, scale {_num(md.scale, 1)}" if md else "its best setting"
    caps = {"steer_dose_response.png": f"Dose-response: mean (steered answer - true N) against the scale, one line "
                                       f"per layer, for each vector ({BOOT}s over examples).",
            "steer_transitions_mean-diff.png": f"True count N (rows) x steered answer (columns) with the "
                                               f"mean-difference N -> N+1 vector at {at}.",
            "steer_transitions_random_at_mean-diff.png": f"The control: true count N (rows) x answer (columns) with a "
                                                         f"random vector of the same norm at {at}."}
    return blocks + _figs(d, ["steer_dose_response.png", "steer_transitions_mean-diff.png",
                              "steer_transitions_random_at_mean-diff.png"], caps)


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
    """Findings first; then each stage's section; what the numbers do not show; what ran, last."""
    from countlens.report.mechanism_section import mechanism_section

    return [("h1", f"countlens study: {cfg.model}"), *findings_block(out), *bench_section(out),
            *patch_section(out), *probe_section(out), *steer_section(out), *analyses_sections(out),
            *mechanism_section(out), *caveats(cfg), *run_section(out, cfg)]


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
        elif kind == "findings":
            lines.append("| question | answer |")
            lines.append("|---|---|")
            lines += [f"| [{q}]({link}) | {a} |" for q, a, link in v]
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
        elif kind == "findings":
            parts.append("<table class='findings'>" + "".join(
                f"<tr><th><a href='{html.escape(link)}'>{html.escape(q)}</a></th><td>{html.escape(a)}</td></tr>"
                for q, a, link in v) + "</table>")
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
