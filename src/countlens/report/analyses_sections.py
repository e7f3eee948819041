"""Report sections of the analyses stage (logit lens, direct logit attribution, attention to the
items, attribution patching), read from OUT/analyses/<analysis>/summary.json and its figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from countlens.report.fmt import BOOT, WILSON
from countlens.report.fmt import num as _num
from countlens.report.fmt import pct as _pct
from countlens.summaries import AtPSummary, AttentionSummary, DLASummary, LensSummary

Block = tuple[str, Any]


def _fig(d: Path, name: str, caption: str) -> list[Block]:
    return [("fig", (d / name, caption))] if (d / name).exists() else []


def analyses_dir(out: Path) -> Path:
    """The analyses' folder of a study (OUT/analyses) or of `countlens analyse` (OUT itself)."""
    return out / "analyses" if (out / "analyses").is_dir() else out


def lens_section(out: Path) -> list[Block]:
    d = analyses_dir(out) / "lens"
    s = LensSummary.read(d / "summary.json")
    blocks: list[Block] = [("h2", ("lens", "5. Where is the count read out? (logit lens)"))]
    if not s:
        return blocks + [("p", "The logit lens has not run.")]
    own = s.own
    rows = [[str(e.layer), f"{_pct(e.accuracy)} [{_pct(e.ci_low)}, {_pct(e.ci_high)}]",
             _num(e.p_correct, 3), _num(e.rank, 2)] for e in s.per_layer]
    blocks += [
        ("p", f"Each layer's residual stream at the answer position, through the final norm and the unembedding, "
              f"restricted to the count tokens 0..{s.k_max} ({s.n_rows} examples). The model's own "
              f"accuracy over the same tokens is {_pct(own.accuracy)} [{_pct(own.ci_low)}, "
              f"{_pct(own.ci_high)}]; the lens first reaches 90 % of it at layer "
              f"{s.first_layer_90}. The last layer's lens equals the model's own logits (max difference "
              f"{_num(s.last_layer_max_abs_diff, 7)})."),
        ("table", (["layer", f"lens accuracy [{WILSON}]", "P(correct) among counts", "rank of the truth"], rows)),
        ("p", "Reading: a layer where a probe decodes the count but the lens does not holds the count in a "
              "direction the unembedding does not read yet (decodable, not read out). " + s.note),
    ]
    al = s.alignment
    if al:
        pl = [e for e in al.per_layer if e.mean_diff_vs_step is not None]
        if pl:
            last = pl[-1]
            blocks.append(("p", f"Alignment of the probes' count directions with the digit readout (W_U rows with "
                                f"the final norm's gain folded in): at layer {last.layer} the N -> N+1 mean "
                                f"difference has cosine {_num(last.mean_diff_vs_step)} with the readout step "
                                f"digit N+1 - digit N, the one-more direction {_num(last.one_more_vs_step)}; "
                                f"two random directions in this width have |cosine| about "
                                f"{_num(al.random_abs_cosine)}."))
    return blocks + _fig(d, "lens_vs_probe.png", "Decodable vs read out: probe accuracy (with its control task) and "
                         "logit-lens accuracy per layer at the answer position, with chance. Look for the gap "
                         "between the curves: layers where the count is decodable but not yet read out.") \
        + _fig(d, "lens_heatmap.png", "Logit-lens accuracy per layer (rows) and position (columns: each list word, "
               "where the truth is the running count so far, and the answer).") \
        + _fig(d, "lens_alignment.png", "Cosine of the count directions with the digits' readout directions per "
               "layer; near the random level means the decodable direction is not the one the output reads.")


def dla_section(out: Path) -> list[Block]:
    d = analyses_dir(out) / "dla"
    s = DLASummary.read(d / "summary.json")
    blocks: list[Block] = [("h2", ("dla", "6. Which components write the answer? (direct logit attribution)"))]
    if not s:
        return blocks + [("p", "Direct logit attribution has not run.")]
    t = s.total
    rows = [[c.component, f"{_num(c.mean)} [{_num(c.ci_low)}, {_num(c.ci_high)}]"]
            for c in (*s.top_heads[:5], *s.top_mlps[:5])]
    return blocks + [
        ("p", f"Metric: {s.metric}, total {_num(t.mean)} [{_num(t.ci_low)}, "
              f"{_num(t.ci_high)}] over {s.n_rows} examples. Every head's output (through the "
              f"output projection), every MLP's, the embedding and the bias terms are projected onto it with the "
              f"final norm's scale frozen from the clean run, so they sum to the total (largest error "
              f"{_num(s.max_abs_sum_error, 6)}); what does not decompose (sandwich norms, soft-capping) is "
              f"its own remainder term, {_pct(s.remainder_share)} of the attributions here."),
        ("table", (["component", f"mean direct effect [{BOOT}]"], rows)),
        ("p", "Reading: direct effects only. A component can matter through later components (its indirect "
              "effect) without writing the digit itself: patching measures the total effect. " + s.note),
    ] + _fig(d, "dla_heads_mlps.png", "Direct logit attribution per head (layer x head) and per MLP: which "
             "components write the true count's logit above the other counts'.")


def attention_section(out: Path) -> list[Block]:
    d = analyses_dir(out) / "attention"
    s = AttentionSummary.read(d / "summary.json")
    blocks: list[Block] = [("h2", ("attention", "7. Which heads look at the matching items? (attention)"))]
    if not s:
        return blocks + [("p", "The attention analysis has not run.")]
    topv = {(h.layer, h.head): h for h in s.top_heads_value}
    rows = [[f"{h.layer}.{h.head}", f"{_num(h.diff, 3)} [{_num(h.ci_low, 3)}, {_num(h.ci_high, 3)}]",
             _num(h.match_mean, 3), _num(h.nonmatch_mean, 3),
             _num(topv[(h.layer, h.head)].diff, 3) if (h.layer, h.head) in topv else "-"]
            for h in s.top_heads[:8]]
    return blocks + [
        ("p", f"Attention from the answer position to each list word (a word's weight is the sum over its tokens), "
              f"matching minus non-matching words, per word, over {s.n_examples} examples "
              f"({s.interval}); the value-weighted version multiplies each weight by the norm of what the "
              f"head writes from that token. Query heads (on GQA models several share a key/value head)."),
        ("table", (["head (layer.head)", "match - non-match per word", "matching", "non-matching",
                    "value-weighted difference"], rows)),
        ("p", "Reading: a head that attends more to matching words is a candidate for moving the count (or "
              "the words to be counted) to the answer position; attention alone does not show that its output "
              "is used (see head patching and DLA)."),
    ] + _fig(d, "attention_heads_answer.png", "Matching minus non-matching attention from the answer position, "
             "per layer and head (attention weight and value-weighted).") \
        + _fig(d, "attention_heads_items.png", "The same from each list word to the earlier words: a head that "
               "attends to earlier matching words from every item could keep a running count.")


def atp_section(out: Path) -> list[Block]:
    d = analyses_dir(out) / "atp"
    s = AtPSummary.read(d / "summary.json")
    blocks: list[Block] = [("h2", ("atp", "8. Attribution patching against exact patching"))]
    if not s:
        return blocks + [("p", "Attribution patching has not run.")]
    rows = [[a.site, str(a.n_cells), _num(a.spearman_cells), _num(a.spearman), _num(a.pearson),
             _pct(a.recall_at_top)] for a in s.agreement]
    blocks += [("p", f"AtP estimates every patching cell from {s.forwards} forwards and "
                     f"{s.backwards} backward passes ({_num(s.seconds, 1)} s) on "
                     f"{s.kept_pairs} pairs: (a_source - a_base) . d metric / d a.")]
    if rows:
        blocks.append(("table", (["site", "cells", "Spearman (cell means)", "Spearman (pair x cell)", "Pearson",
                                  "exact top-10 found by AtP"], rows)))
    blocks.append(("p", "Reading: AtP is a first-order estimate. It misses effects through saturated attention "
                        "(a softmax far from linear) and can cancel where a component's direct and indirect "
                        "effects have opposite signs (Kramár et al. 2024); it is a map for choosing where to run "
                        "exact patching on large grids, not a replacement for it."))
    return blocks + _fig(d, "atp_vs_exact.png", "AtP estimate against exact patching per cell, one panel per "
                         "site: points on the diagonal are estimated exactly.")


def analyses_sections(out: Path) -> list[Block]:
    return [*lens_section(out), *dla_section(out), *attention_section(out), *atp_section(out)]
