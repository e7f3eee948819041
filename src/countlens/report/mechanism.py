"""Running counter or parallel aggregation: a decision rule over the study's own numbers.

Two accounts of how a model counts "fruit" in "apple chair pear":

  running counter       a latent count is updated at each list item and read at the end
                        (CountScope, arXiv 2511.17699);
  parallel aggregation  the answer position gathers the matching items at once, with no
                        token-by-token state (Tang et al., arXiv 2605.30233).

Three pieces of evidence, each produced by an existing stage, are turned into one vote each
("running counter", "parallel aggregation" or "neutral") by the thresholds below, and the votes into
a verdict by `decide`; docs/MECHANISM.md gives the rule and the reasons for every threshold.

  probes     running-count probe at the list words that are never the last one (items 1..):
             accuracy above what the current word alone gives (the embedding layer), the
             Hewitt & Liang control and the majority class              (OUT/probes)
  patch      normalised effect of patching the residual stream at the LAST list word, relative
             to the answer position, on pairs whose changed word comes before it; the changed
             word itself must carry the effect at some layer              (OUT/patch)
  attention  per-word attention from the answer position to matching minus non-matching words
             (the top head), and the same from each list word to the words before it
                                                                         (OUT/analyses/attention)

Patching is the causal piece: without a patching vote the verdict is "inconclusive", whatever
the probes and attention say; any two votes that disagree also make it "inconclusive".

`evidence_from(out)` reads the files (missing evidence is None, never an error); the
`*_evidence` functions and `decide` are pure: numbers in, verdict out. This module reads result
files only (it imports no engine module).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from countlens.sites import layer_key, parse_layer
from countlens.stats import bootstrap_ci, wilson_ci
from countlens.summaries import AttentionSummary, PatchSummary, ProbeSummary, Summary

RUNNING, PARALLEL, INCONCLUSIVE = "running counter", "parallel aggregation", "inconclusive"
NEUTRAL = "neutral"
Hypothesis = Literal["running counter", "parallel aggregation", "inconclusive"]
Vote = Literal["running counter", "parallel aggregation", "neutral", "missing"]
Layer = Union[int, str]

# ------------------------------------------------------------------------------------ thresholds
# Probes: lift = running-count accuracy minus its baseline, averaged over the never-final items 1..
PROBE_LIFT_RUNNING = 0.20      # lift at or above this (best layer) ...
PROBE_LIFT_RUNNING_LOW = 0.05  # ... with the lift's lower bound above this: a running count is decodable
PROBE_LIFT_ABSENT = 0.05       # lift at or below this at every layer: no count beyond the current word
PROBE_MIN_EXAMPLES = 20        # an item cell with fewer examples is not used
# Patching: ratio = peak effect at the last list word / peak effect at the answer position
PATCH_RATIO_RUNNING = 0.50     # at or above, with the lower bound at or above ...
PATCH_RATIO_RUNNING_LOW = 0.25  # ... this: the count passes through the last item
PATCH_RATIO_ABSENT = 0.15      # at or below, with the upper bound at or below ...
PATCH_RATIO_ABSENT_HIGH = 0.30  # ... this: the count bypasses the last item
PATCH_ANSWER_MIN = 0.50        # the answer position must carry at least half the effect at some layer
PATCH_CHANGED_MIN = 0.50       # and (for parallel aggregation) the changed word too
PATCH_MIN_PAIRS = 8            # fewer usable pairs: patching says nothing
MIN_LD_GAP = 0.5               # logits: a pair whose source and base logit differences differ by less is left out
# Attention (raw attention probability per word, matching minus non-matching, the top head)
ATTN_DIFF = 0.10               # at or above, with the lower bound at or above ...
ATTN_DIFF_LOW = 0.05           # ... this: the head concentrates on the matching words
ATTN_ABSENT = 0.05             # answer top head below this, or its interval reaching 0: no concentration
N_BOOT = 1000

THRESHOLDS = {k: v for k, v in dict(globals()).items()
              if k.startswith(("PROBE_", "PATCH_", "ATTN_")) or k == "MIN_LD_GAP"}


# ----------------------------------------------------------------------------------- the numbers

class ProbeEvidence(BaseModel):
    """Running-count probe at the never-final items, its baseline and lift at the best layer."""
    source: Optional[str] = None
    site: Optional[str] = None
    n_examples: Optional[int] = None
    items: list[int]                    # the word indices used (never the last word of a list, not the first)
    layer: Layer                        # the best layer by lift
    accuracy: float                     # mean over `items` at `layer`
    baseline: float                     # mean over `items` of max(embedding layer, control, majority)
    lift: float
    lift_ci_low: float                  # mean of the per-item lower (upper) Wilson bounds minus the baseline
    lift_ci_high: float
    per_layer: list[dict]               # {layer, accuracy, baseline, lift, lift_ci_low, lift_ci_high}
    per_item: list[dict]                # at `layer`: {item, accuracy, ci_low, ci_high, baseline, baseline_from}
    notes: list[str] = Field(default_factory=list)


class PatchEvidence(BaseModel):
    """Residual-stream patching at the changed word, the last list word and the answer position."""
    source: Optional[str] = None
    mode: str                           # named | all | last
    direction: str
    total_pairs: Optional[int] = None
    kept_pairs: Optional[int] = None
    filter_fallback: Optional[str] = None   # set when the model fails the correctness filter
    n_pairs: int                        # informative pairs whose changed word precedes the last item
    last_item: Optional[float] = None   # peak mean normalised effect at the last list word
    last_item_ci_low: Optional[float] = None
    last_item_ci_high: Optional[float] = None
    last_item_layer: Optional[Layer] = None
    answer: Optional[float] = None      # peak at the answer position
    answer_ci_low: Optional[float] = None
    answer_ci_high: Optional[float] = None
    answer_layer: Optional[Layer] = None
    changed: Optional[float] = None     # peak at the changed word
    changed_layer: Optional[Layer] = None
    later_items: Optional[float] = None  # positions=all only, not voted on: per pair the largest effect over the
    later_items_layer: Optional[Layer] = None  # list positions after the changed word (last included), peak layer
    ratio: Optional[float] = None       # last_item / answer (its CI: the last item's CI over the answer peak)
    ratio_ci_low: Optional[float] = None
    ratio_ci_high: Optional[float] = None
    per_layer: list[dict] = Field(default_factory=list)   # {layer, changed, last_item, answer}
    notes: list[str] = Field(default_factory=list)


class AttentionEvidence(BaseModel):
    """The top head by matching - non-matching per-word attention, from the answer and from the items."""
    source: Optional[str] = None
    n_examples: Optional[int] = None
    answer_head: Optional[tuple[int, int]] = None
    answer_diff: Optional[float] = None
    answer_ci_low: Optional[float] = None
    answer_ci_high: Optional[float] = None
    answer_match_mean: Optional[float] = None
    answer_nonmatch_mean: Optional[float] = None
    items_head: Optional[tuple[int, int]] = None
    items_diff: Optional[float] = None
    items_ci_low: Optional[float] = None
    items_ci_high: Optional[float] = None
    notes: list[str] = Field(default_factory=list)


class Evidence(BaseModel):
    probes: Optional[ProbeEvidence] = None
    patch: Optional[PatchEvidence] = None
    attention: Optional[AttentionEvidence] = None
    notes: list[str] = Field(default_factory=list)  # why a piece is missing, when something was there


class EvidenceLine(BaseModel):
    """One piece of evidence as the report shows it: its number, what it says, and its vote."""
    key: Literal["patching", "probes", "attention"]
    name: str
    value: str                          # the number with its interval, as text
    reading: str                        # one sentence
    vote: Vote
    numbers: dict[str, Any] = Field(default_factory=dict)
    thresholds_met: list[str] = Field(default_factory=list)


class Verdict(BaseModel):
    hypothesis: Hypothesis
    strength: Literal["strong", "moderate", "weak"]
    summary: str
    lean: Optional[str] = None          # for "inconclusive": the hypothesis the available votes lean to, if any
    evidence: list[EvidenceLine]
    thresholds_met: list[str]
    notes: list[str] = Field(default_factory=list)   # why a piece is missing or how it was read
    thresholds: dict[str, float] = Field(default_factory=lambda: dict(THRESHOLDS))


# ----------------------------------------------------------------------------------------- helpers

def _f(x: Any) -> Optional[float]:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _fmt(x: Optional[float], nd: int = 2) -> str:
    if x is None or x != x:
        return "n/a"
    text = f"{float(x):.{nd}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _ci(v: Optional[float], lo: Optional[float], hi: Optional[float], nd: int = 2) -> str:
    return f"{_fmt(v, nd)} [{_fmt(lo, nd)}, {_fmt(hi, nd)}]"


def _layer_str(x: Any) -> str:
    return str(parse_layer(x))


# ------------------------------------------------------------------------------------------ probes

def middle_items(items: Sequence[int], n: Sequence[int]) -> tuple[list[int], Optional[str]]:
    """Word indices that are never a list's last word and not its first: i >= 1 whose next word
    exists in every example that has word i (n[i + 1] == n[i]). Falls back to 1 <= i < max item."""
    count = dict(zip(items, n))
    never_final = [i for i in items if i >= 1 and i + 1 in count and count[i + 1] >= count[i]
                   and count[i] >= PROBE_MIN_EXAMPLES]
    if never_final:
        return never_final, None
    loose = [i for i in items if 1 <= i < max(items) and count[i] >= PROBE_MIN_EXAMPLES] if items else []
    return loose, ("no word index is non-final in every list; used items 1..max-1, some of which end a list"
                   if loose else None)


def probe_evidence(summary: dict, table: Optional[pd.DataFrame] = None, source: Optional[str] = None
                   ) -> Optional[ProbeEvidence]:
    """From the probes stage's summary.json (and probes.parquet for the intervals, else Wilson
    intervals from accuracy and n); None when the probes ran without item positions."""
    rc = summary.get("running_count")
    if not rc or not rc.get("items"):
        return None
    items = [int(i) for i in rc["items"]]
    n = [int(x) for x in rc.get("n") or [0] * len(items)]
    layers = [parse_layer(x) for x in rc["layers"]]
    acc = {(str(L), i): _f(v) for L, row in zip(layers, rc["accuracy"]) for i, v in zip(items, row)}
    ctl = {(str(L), i): _f(v) for L, row in zip(layers, rc.get("control_accuracy") or []) for i, v in zip(items, row)}
    maj = dict(zip(items, [_f(v) for v in rc.get("majority") or [None] * len(items)]))
    n_of = dict(zip(items, n))
    cis: dict[tuple[str, int], tuple[float, float]] = {}
    site = rc.get("site") or summary.get("site")
    if table is not None and len(table):
        t = table[(table["probe"] == "linear") & (table["position"] == "items") & (table["metric"] == "accuracy")]
        if site is not None and "kind" in t:
            t = t[t["kind"] == site]
        for r in t.itertuples():
            cis[(_layer_str(r.layer), int(r.item))] = (float(r.ci_low), float(r.ci_high))
    use, note = middle_items(items, n)
    notes = [note] if note else []
    if not use:
        return None
    has_emb = any(str(L) == "emb" for L in layers)
    if not has_emb:
        notes.append("no embedding-layer probe: the baseline is the control task and the majority class only")
    per_layer, best = [], None
    for L in layers:
        if str(L) == "emb":
            continue
        rows = []
        for i in use:
            a = acc.get((str(L), i))
            if a is None:
                continue
            cands = {"embedding layer": acc.get(("emb", i)), "control task": ctl.get((str(L), i)),
                     "majority class": maj.get(i)}
            cands = {k: v for k, v in cands.items() if v is not None}
            base_from, base = max(cands.items(), key=lambda kv: kv[1]) if cands else ("none", 0.0)
            lo, hi = cis.get((str(L), i)) or wilson_ci(int(round(a * n_of[i])), n_of[i])
            rows.append({"item": i, "accuracy": a, "ci_low": lo, "ci_high": hi, "baseline": base,
                         "baseline_from": base_from, "n": n_of[i]})
        if not rows:
            continue
        entry = {"layer": L, "accuracy": float(np.mean([r["accuracy"] for r in rows])),
                 "baseline": float(np.mean([r["baseline"] for r in rows])),
                 "lift": float(np.mean([r["accuracy"] - r["baseline"] for r in rows])),
                 "lift_ci_low": float(np.mean([r["ci_low"] - r["baseline"] for r in rows])),
                 "lift_ci_high": float(np.mean([r["ci_high"] - r["baseline"] for r in rows]))}
        per_layer.append(entry)
        if best is None or entry["lift"] > best[0]["lift"]:
            best = (entry, rows)
    if best is None:
        return None
    e, rows = best
    return ProbeEvidence(source=source, site=site, n_examples=summary.get("n_examples"), items=use,
                         layer=e["layer"], accuracy=e["accuracy"], baseline=e["baseline"], lift=e["lift"],
                         lift_ci_low=e["lift_ci_low"], lift_ci_high=e["lift_ci_high"], per_layer=per_layer,
                         per_item=rows, notes=notes)


# ---------------------------------------------------------------------------------------- patching

def _pair_roles(t: pd.DataFrame, summary: dict) -> tuple[pd.DataFrame, str, list[str]]:
    """Rows of the resid table with a `role` (changed | last_item | answer), the mode, and notes.
    Named positions carry their names; with `all` the answer is offset -1, the last list word the
    example's named offset (the suffix after the list is the same in every prompt), and the changed
    word the last position whose embedding-layer patch moves the output (elsewhere it is a no-op)."""
    notes: list[str] = []
    names = set(t["position_name"].dropna()) if "position_name" in t else set()
    if {"changed", "last_item"} & names:
        r = t[t["position_name"].isin(["changed", "last_item", "answer"])].assign(role=lambda d: d["position_name"])
        return r, "named", notes
    answer = t[(t["position"] == -1)].assign(role="answer")
    positions = set(t["position"].unique())
    if positions <= {-1}:
        return answer, "last", ["patched at the answer position only: the last list word was not patched"]
    named = ((summary.get("example") or {}).get("named") or {})
    last_off = named.get("last_item")
    if last_off is None:
        return answer, "all", notes + ["the summary names no last-item offset: the last list word cannot be found"]
    norm = t[t["metric"] == "normalized"]
    emb = norm[(norm["layer"].astype(str) == "emb") & (norm["position"] != -1)]
    if emb.empty:
        return answer, "all", notes + ["no embedding-layer patch: the changed word cannot be located"]
    moved = emb[emb["value"].abs() > 1e-3]
    changed_at = moved.groupby("pair")["position"].max()
    role = pd.Series("", index=t.index, dtype=object)
    role[t["position"] == -1] = "answer"
    role[t["position"] == int(last_off)] = "last_item"
    ch = t["pair"].map(changed_at)
    role[(t["position"] == ch) & (t["position"] != int(last_off))] = "changed"
    role[(t["position"] > ch) & (t["position"] < int(last_off))] = "between"   # list words after the changed one
    notes.append(f"positions=all: the last list word taken at offset {int(last_off)} from the end in every pair")
    return t.assign(role=role)[role != ""], "all", notes


def patch_evidence(summary: dict, table: Optional[pd.DataFrame], source: Optional[str] = None,
                   n_boot: int = N_BOOT, seed: int = 0) -> Optional[PatchEvidence]:
    """From the patching stage's summary.json and table.parquet; None without a table."""
    if table is None or table.empty:
        return None
    direction = summary.get("direction") or ("denoise" if "denoise" in set(table["direction"]) else
                                             str(table["direction"].iloc[0]))
    t = table[(table["site"] == "resid") & (table["direction"] == direction)]
    if "head" in t:
        t = t[t["head"] < 0]
    common = dict(source=source, direction=direction, total_pairs=summary.get("total_pairs"),
                  kept_pairs=summary.get("kept_pairs"), filter_fallback=summary.get("filter_fallback"))
    if t.empty:
        return PatchEvidence(mode="none", n_pairs=0, notes=["no residual-stream rows"], **common)
    t, mode, notes = _pair_roles(t, summary)
    ld = t[(t["metric"] == "logit_diff") & (t["role"] == "answer")]
    layers_ans = sorted(ld["layer"].astype(str).unique(), key=layer_key)
    if "emb" in layers_ans and len(layers_ans) > 1:  # emb at the answer: the base run; last layer: the source
        w = ld.assign(layer=ld["layer"].astype(str)).pivot_table(index="pair", columns="layer", values="value")
        gap = (w[layers_ans[-1]] - w["emb"]).abs()
        informative = set(gap.index[gap > MIN_LD_GAP])
    else:
        informative = set(t["pair"])
        notes.append("no embedding-layer patch at the answer: every pair counted as informative")
    norm = t[(t["metric"] == "normalized") & t["pair"].isin(informative)]
    norm = norm[np.isfinite(norm["value"].astype(float))]
    both = set(norm.loc[norm["role"] == "changed", "pair"]) & set(norm.loc[norm["role"] == "last_item", "pair"])
    usable = norm[norm["pair"].isin(both)] if mode != "last" else norm
    n_pairs = len(both) if mode != "last" else 0
    means = usable.assign(layer=usable["layer"].astype(str)).groupby(["role", "layer"])["value"].mean()
    all_layers = sorted({L for _, L in means.index}, key=layer_key)
    per_layer = [{"layer": parse_layer(L), **{r: _f(means.get((r, L))) for r in ("changed", "last_item", "answer")}}
                 for L in all_layers]
    ev = PatchEvidence(mode=mode, n_pairs=n_pairs, per_layer=per_layer, notes=notes, **common)
    if n_pairs == 0:
        if mode != "last":
            ev.notes.append("no informative pair whose changed word precedes the last list word")
        return ev

    def peak(role: str) -> tuple[Optional[str], Optional[float], Optional[float], Optional[float]]:
        # at "emb" the last list word is the same token in both prompts: its patch is a no-op
        m = {L: means.get((role, L)) for L in all_layers if (role, L) in means.index
             and not (role == "last_item" and L == "emb")}
        if not m:
            return None, None, None, None
        L = max(m, key=lambda k: (m[k], -layer_key(k)))
        vals = usable[(usable["role"] == role) & (usable["layer"].astype(str) == L)]["value"].to_numpy(float)
        mean, lo, hi = bootstrap_ci(vals, n_boot, seed)
        return L, mean, lo, hi

    La, a, alo, ahi = peak("answer")
    Ll, last, llo, lhi = peak("last_item")
    Lc, ch, _, _ = peak("changed")
    layer = lambda L: None if L is None else parse_layer(L)  # noqa: E731
    ev.answer_layer, ev.answer, ev.answer_ci_low, ev.answer_ci_high = layer(La), a, alo, ahi
    ev.last_item_layer, ev.last_item, ev.last_item_ci_low, ev.last_item_ci_high = layer(Ll), last, llo, lhi
    ev.changed_layer, ev.changed = layer(Lc), ch
    if a is not None and last is not None and a > 0:
        ev.ratio, ev.ratio_ci_low, ev.ratio_ci_high = last / a, llo / a, lhi / a
    later = usable[usable["role"].isin(["between", "last_item"]) & (usable["layer"].astype(str) != "emb")]
    if mode == "all" and (usable["role"] == "between").any():
        by_layer = later.assign(layer=later["layer"].astype(str)).groupby(["layer", "pair"])["value"].max() \
            .groupby("layer").mean()
        L = max(by_layer.index, key=lambda k: (by_layer[k], -layer_key(k)))
        ev.later_items, ev.later_items_layer = float(by_layer[L]), parse_layer(L)
    return ev


# --------------------------------------------------------------------------------------- attention

def attention_evidence(summary: Optional[dict], table: Optional[pd.DataFrame] = None,
                       source: Optional[str] = None) -> Optional[AttentionEvidence]:
    """From the attention analysis' summary.json (top heads at the answer) and table.parquet (also
    the top head from the list words); raw attention, not the value-weighted version."""
    ev = AttentionEvidence(source=source, n_examples=(summary or {}).get("n_examples"))

    def top(query: str) -> Optional[dict]:
        if table is None or table.empty:
            return None
        t = table[(table["query"] == query) & (table["weighting"] == "attention")]
        d = t[t["measure"] == "diff_mean"].dropna(subset=["mean"])
        if d.empty:
            return None
        r = d.sort_values("mean", ascending=False).iloc[0]
        side = t.set_index(["layer", "head", "measure"])["mean"]
        return {"layer": int(r["layer"]), "head": int(r["head"]), "diff": float(r["mean"]),
                "ci_low": _f(r["ci_low"]), "ci_high": _f(r["ci_high"]),
                "match_mean": _f(side.get((r["layer"], r["head"], "match_mean"))),
                "nonmatch_mean": _f(side.get((r["layer"], r["head"], "nonmatch_mean")))}

    a = top("answer") or ((summary or {}).get("top_heads") or [None])[0]
    if a:
        ev.answer_head, ev.answer_diff = (int(a["layer"]), int(a["head"])), _f(a["diff"])
        ev.answer_ci_low, ev.answer_ci_high = _f(a.get("ci_low")), _f(a.get("ci_high"))
        ev.answer_match_mean, ev.answer_nonmatch_mean = _f(a.get("match_mean")), _f(a.get("nonmatch_mean"))
    i = top("items")
    if i:
        ev.items_head, ev.items_diff = (i["layer"], i["head"]), i["diff"]
        ev.items_ci_low, ev.items_ci_high = i["ci_low"], i["ci_high"]
    elif table is None:
        ev.notes.append("no attention table: attention from the list words is unknown")
    if ev.answer_diff is None and ev.items_diff is None:
        return None
    return ev


# ------------------------------------------------------------------------------------------- files

def _read_json(path: Path, schema: type[Summary]) -> Optional[dict]:
    """The summary checked against its schema (a renamed key is a note naming it, not a silent gap),
    as the dict the evidence functions take (they also take partial dicts)."""
    s = schema.read(path)
    return None if s is None else s.model_dump(by_alias=True)


def _read_table(path: Optional[Path]) -> Optional[pd.DataFrame]:
    return pd.read_parquet(path) if path is not None and path.is_file() else None


def _split(path: Optional[Path], table_name: str) -> tuple[Optional[Path], Optional[Path]]:
    """A stage folder, its summary.json, or its table: (summary path, table path)."""
    if path is None:
        return None, None
    if path.is_dir():
        return path / "summary.json", path / table_name
    if path.suffix == ".parquet":
        return path.parent / "summary.json", path
    return path, path.parent / table_name


def evidence_from(out: str | Path | None = None, *, probes: str | Path | None = None,
                  patch: str | Path | None = None, attention: str | Path | None = None,
                  patch_table: str | Path | None = None, attention_table: str | Path | None = None,
                  probes_table: str | Path | None = None) -> Evidence:
    """The three pieces of evidence of a study folder `out` (OUT/probes, OUT/patch, and
    OUT/analyses/attention or OUT/attention), or of explicit stage folders / summary.json /
    table.parquet paths (an explicit path wins over the study folder). A piece whose files are
    absent is None; one that cannot be read is None with a note saying why."""
    base = Path(out) if out is not None else None
    pick = lambda given, *rel: Path(given) if given is not None else (  # noqa: E731
        next((base / r for r in rel if (base / r).exists()), None) if base is not None else None)
    ev = Evidence()
    p_sum, p_tab = _split(pick(probes, "probes"), "probes.parquet")
    if probes_table is not None:
        p_tab = Path(probes_table)
    try:
        s = _read_json(p_sum, ProbeSummary) if p_sum else None
        if s is not None:
            ev.probes = probe_evidence(s, _read_table(p_tab), str(p_sum))
            if ev.probes is None:
                ev.notes.append("probes: no running-count probe at the list words (positions 'items' not probed, "
                                "or too few examples per word)")
    except (OSError, ValueError, KeyError, TypeError) as e:
        ev.notes.append(f"probes: could not be read ({type(e).__name__}: {e})")
    c_sum, c_tab = _split(pick(patch, "patch"), "table.parquet")
    if patch_table is not None:
        c_tab = Path(patch_table)
    try:
        s = _read_json(c_sum, PatchSummary) if c_sum else None
        tab = _read_table(c_tab)
        if tab is not None:
            ev.patch = patch_evidence(s or {}, tab, str(c_tab))
        elif s is not None:
            ev.notes.append("patch: summary.json without table.parquet (per-position effects unknown)")
    except (OSError, ValueError, KeyError, TypeError) as e:
        ev.notes.append(f"patch: could not be read ({type(e).__name__}: {e})")
    a_sum, a_tab = _split(pick(attention, "analyses/attention", "attention"), "table.parquet")
    if attention_table is not None:
        a_tab = Path(attention_table)
    try:
        s = _read_json(a_sum, AttentionSummary) if a_sum else None
        tab = _read_table(a_tab)
        if s is not None or tab is not None:
            ev.attention = attention_evidence(s, tab, str(a_tab if tab is not None else a_sum))
    except (OSError, ValueError, KeyError, TypeError) as e:
        ev.notes.append(f"attention: could not be read ({type(e).__name__}: {e})")
    return ev


# ---------------------------------------------------------------------------------------- the rule

def _probe_line(p: Optional[ProbeEvidence]) -> EvidenceLine:
    name = "running-count probe at the list words"
    if p is None:
        return EvidenceLine(key="probes", name=name, value="n/a", vote="missing",
                            reading="No running-count probe at the list words (no probes summary, or the probes "
                                    "stage did not probe positions 'items').")
    items = f"{p.items[0]}" if len(p.items) == 1 else f"{p.items[0]}-{p.items[-1]}"
    value = f"lift {_ci(p.lift, p.lift_ci_low, p.lift_ci_high)} (layer {p.layer}, words {items})"
    nums = {"lift": p.lift, "ci_low": p.lift_ci_low, "ci_high": p.lift_ci_high, "accuracy": p.accuracy,
            "baseline": p.baseline, "layer": p.layer, "items": p.items}
    met = []
    if p.lift >= PROBE_LIFT_RUNNING:
        met.append("PROBE_LIFT_RUNNING")
    if p.lift_ci_low >= PROBE_LIFT_RUNNING_LOW:
        met.append("PROBE_LIFT_RUNNING_LOW")
    best = max(e["lift"] for e in p.per_layer)
    if best <= PROBE_LIFT_ABSENT:
        met.append("PROBE_LIFT_ABSENT")
    acc = f"accuracy {_fmt(p.accuracy)} against a baseline of {_fmt(p.baseline)}"
    if "PROBE_LIFT_RUNNING" in met and "PROBE_LIFT_RUNNING_LOW" in met:
        vote, reading = RUNNING, (f"A linear probe reads the count so far at list words that are not the last "
                                  f"({acc} from the current word alone, the control task and the majority class, "
                                  f"layer {p.layer}): the items hold a running count.")
    elif "PROBE_LIFT_ABSENT" in met:
        vote, reading = PARALLEL, (f"No layer holds the count so far at the list words beyond what the current word "
                                   f"gives ({acc}): no running count is decodable at the items.")
    else:
        vote, reading = NEUTRAL, (f"The count so far is only partly decodable at the list words ({acc}, lift "
                                  f"{_fmt(p.lift)}), between the thresholds {PROBE_LIFT_ABSENT} and "
                                  f"{PROBE_LIFT_RUNNING}.")
    return EvidenceLine(key="probes", name=name, value=value, reading=reading, vote=vote, numbers=nums,
                        thresholds_met=met)


def _patch_line(c: Optional[PatchEvidence]) -> tuple[EvidenceLine, bool]:
    """The line and whether the model counts the pairs (False when the correctness filter fell back)."""
    name = "patching: last list word vs answer position"
    if c is None:
        return EvidenceLine(key="patching", name=name, value="n/a", vote="missing",
                            reading="No patching table (the patch stage has not run)."), True
    counts = c.filter_fallback is None
    nums = {"ratio": c.ratio, "ci_low": c.ratio_ci_low, "ci_high": c.ratio_ci_high, "last_item": c.last_item,
            "last_item_layer": c.last_item_layer, "answer": c.answer, "answer_layer": c.answer_layer,
            "changed": c.changed, "changed_layer": c.changed_layer, "n_pairs": c.n_pairs, "mode": c.mode}
    later = (f"; any later list word up to {_fmt(c.later_items)} at layer {c.later_items_layer}"
             if c.later_items is not None else "")
    value = (f"ratio {_ci(c.ratio, c.ratio_ci_low, c.ratio_ci_high)} (last word {_fmt(c.last_item)} at layer "
             f"{c.last_item_layer}, answer {_fmt(c.answer)} at layer {c.answer_layer}{later}; {c.n_pairs} pairs)"
             if c.ratio is not None else f"n/a ({c.n_pairs} usable pairs)")
    nums["later_items"], nums["later_items_layer"] = c.later_items, c.later_items_layer
    if not counts:
        return EvidenceLine(key="patching", name=name, value=value, vote=NEUTRAL, numbers=nums,
                            reading=f"The model fails the patching stage's correctness filter ({c.filter_fallback}): "
                                    "the effects describe information flow in a model that does not count."), False
    if c.n_pairs < PATCH_MIN_PAIRS or c.ratio is None:
        why = "; ".join(c.notes) or "too few pairs"
        return EvidenceLine(key="patching", name=name, value=value, vote=NEUTRAL, numbers=nums,
                            reading=f"Patching cannot compare the last list word with the answer position: "
                                    f"{c.n_pairs} usable pairs (at least {PATCH_MIN_PAIRS} needed; {why})."), True
    met = []
    if c.answer is not None and c.answer >= PATCH_ANSWER_MIN:
        met.append("PATCH_ANSWER_MIN")
    if c.changed is not None and c.changed >= PATCH_CHANGED_MIN:
        met.append("PATCH_CHANGED_MIN")
    if c.ratio >= PATCH_RATIO_RUNNING:
        met.append("PATCH_RATIO_RUNNING")
    if c.ratio_ci_low is not None and c.ratio_ci_low >= PATCH_RATIO_RUNNING_LOW:
        met.append("PATCH_RATIO_RUNNING_LOW")
    if c.ratio <= PATCH_RATIO_ABSENT:
        met.append("PATCH_RATIO_ABSENT")
    if c.ratio_ci_high is not None and c.ratio_ci_high <= PATCH_RATIO_ABSENT_HIGH:
        met.append("PATCH_RATIO_ABSENT_HIGH")
    has = set(met)
    if {"PATCH_ANSWER_MIN", "PATCH_RATIO_RUNNING", "PATCH_RATIO_RUNNING_LOW"} <= has:
        vote, reading = RUNNING, (f"Patching the last list word's residual stream at layer {c.last_item_layer} moves "
                                  f"the answer {_fmt(c.ratio)} times as much as patching the answer position does: "
                                  "the count of the earlier words passes through the last item.")
    elif {"PATCH_ANSWER_MIN", "PATCH_CHANGED_MIN", "PATCH_RATIO_ABSENT", "PATCH_RATIO_ABSENT_HIGH"} <= has:
        vote, reading = PARALLEL, (f"The changed word carries the effect (up to {_fmt(c.changed)} at layer "
                                   f"{c.changed_layer}) and the answer position does ({_fmt(c.answer)} at layer "
                                   f"{c.answer_layer}), but the last list word does not (ratio {_fmt(c.ratio)}): "
                                   "the count goes from the words to the answer directly.")
    elif "PATCH_ANSWER_MIN" not in has:
        vote, reading = NEUTRAL, (f"Patching the answer position's residual stream never reaches half the effect "
                                  f"(peak {_fmt(c.answer)}), so the comparison says nothing.")
    else:
        vote, reading = NEUTRAL, (f"The last list word carries part of the effect (ratio {_fmt(c.ratio)} to the "
                                  f"answer position, interval {_fmt(c.ratio_ci_low)}-{_fmt(c.ratio_ci_high)}), "
                                  "neither clearly all nor clearly none of it.")
    return EvidenceLine(key="patching", name=name, value=value, reading=reading, vote=vote, numbers=nums,
                        thresholds_met=met), True


def _attention_line(a: Optional[AttentionEvidence]) -> EvidenceLine:
    name = "attention to the matching words"
    if a is None:
        return EvidenceLine(key="attention", name=name, value="n/a", vote="missing",
                            reading="No attention analysis (the analyses stage has not run 'attention').")
    nums = {"answer_diff": a.answer_diff, "answer_ci_low": a.answer_ci_low, "answer_ci_high": a.answer_ci_high,
            "answer_head": a.answer_head, "items_diff": a.items_diff, "items_ci_low": a.items_ci_low,
            "items_ci_high": a.items_ci_high, "items_head": a.items_head}
    head = lambda h: "n/a" if h is None else f"{h[0]}.{h[1]}"  # noqa: E731
    value = (f"answer {_ci(a.answer_diff, a.answer_ci_low, a.answer_ci_high, 3)} (head {head(a.answer_head)}); "
             f"items {_ci(a.items_diff, a.items_ci_low, a.items_ci_high, 3)} (head {head(a.items_head)})")
    met = []
    lo = a.answer_ci_low
    if a.answer_diff is not None and a.answer_diff >= ATTN_DIFF and lo is not None and lo >= ATTN_DIFF_LOW:
        met.append("ATTN_DIFF (answer)")
    if a.answer_diff is None or a.answer_diff < ATTN_ABSENT or lo is None or lo <= 0:
        met.append("ATTN_ABSENT (answer)")
    if a.items_diff is not None and a.items_diff >= ATTN_DIFF and a.items_ci_low is not None \
            and a.items_ci_low >= ATTN_DIFF_LOW:
        met.append("ATTN_DIFF (items)")
    if "ATTN_DIFF (answer)" in met:
        vote, reading = PARALLEL, (f"Head {head(a.answer_head)} at the answer position attends "
                                   f"{_fmt(a.answer_diff, 3)} more to each matching word than to each other word: "
                                   "the answer reads the matching items directly.")
    elif "ATTN_ABSENT (answer)" in met and "ATTN_DIFF (items)" in met:
        vote, reading = RUNNING, (f"No head at the answer position prefers the matching words, but head "
                                  f"{head(a.items_head)} at the list words attends {_fmt(a.items_diff, 3)} more to "
                                  "each earlier matching word: the matches are gathered along the list.")
    else:
        vote, reading = NEUTRAL, ("Attention separates matching from other words neither at the answer position "
                                  "nor along the list clearly enough to choose (thresholds "
                                  f"{ATTN_DIFF} per word, interval above {ATTN_DIFF_LOW}).")
    return EvidenceLine(key="attention", name=name, value=value, reading=reading, vote=vote, numbers=nums,
                        thresholds_met=met)


def decide(evidence: Evidence) -> Verdict:
    """The verdict: patching must vote (it is the causal piece); each other piece that agrees adds a
    degree of strength (weak, moderate, strong); any disagreement, a neutral or missing patching
    vote, or a model that does not count gives "inconclusive" (strength "weak")."""
    probe = _probe_line(evidence.probes)
    patch, counts = _patch_line(evidence.patch)
    attn = _attention_line(evidence.attention)
    lines = [patch, probe, attn]
    prefix = {"probes": "probes:", "patching": "patch:", "attention": "attention:"}
    for line in lines:  # a piece that is missing because its file could not be read says so
        why = [n.split(":", 1)[1].strip() for n in evidence.notes if n.startswith(prefix[line.key])]
        if line.vote == "missing" and why:
            line.reading = line.reading.rstrip(".") + f"; {'; '.join(why)}."
    notes = list(evidence.notes) + [f"{k}: {n}" for k, piece in (("probes", evidence.probes), ("patch", evidence.patch),
                                                                  ("attention", evidence.attention))
                                    if piece is not None for n in piece.notes]
    met = [f"{line.key}: {t}" for line in lines for t in line.thresholds_met]
    votes = {line.key: line.vote for line in lines}
    decided = {v for v in votes.values() if v in (RUNNING, PARALLEL)}

    def verdict(h: str, strength: str, summary: str, lean: Optional[str] = None) -> Verdict:
        return Verdict(hypothesis=h, strength=strength, summary=summary, lean=lean, evidence=lines, thresholds_met=met,
                       notes=notes)

    if not counts:
        return verdict(INCONCLUSIVE, "weak", "The model does not count the patching pairs correctly, so there is no "
                                             "counting mechanism to classify.", lean=None)
    if len(decided) > 1:
        side = lambda h: " and ".join(k for k, v in votes.items() if v == h)  # noqa: E731
        text = (f"The evidence conflicts: {side(RUNNING)} point to a running counter, {side(PARALLEL)} to parallel "
                "aggregation.")
        if votes["probes"] == RUNNING and votes["patching"] == PARALLEL:
            text += (" The list words hold a decodable count so far, but the answer does not take it from the last "
                     "word: a running count that this route does not use, or a counter read somewhere else.")
        elif votes["probes"] == PARALLEL and votes["patching"] == RUNNING:
            text += (" The last word carries the count but the earlier words hold none: the list may be aggregated "
                     "at its last word rather than counted along it.")
        return verdict(INCONCLUSIVE, "weak", text)
    if patch.vote not in (RUNNING, PARALLEL):
        lean = next(iter(decided)) if decided else None
        why = "no patching table" if patch.vote == "missing" else "patching does not separate the two"
        return verdict(INCONCLUSIVE, "weak", f"Without a causal vote ({why}) the probes and attention alone do not "
                                             "decide" + (f"; they lean to {lean}." if lean else "."), lean=lean)
    h = patch.vote
    support = [line.key for line in (probe, attn) if line.vote == h]
    strength = {2: "strong", 1: "moderate", 0: "weak"}[len(support)]
    rest = [f"{line.key} {line.vote}" for line in (probe, attn) if line.vote != h]
    agree = f"; {' and '.join(support)} agree" if support else "; nothing else agrees"
    named = "a running counter" if h == RUNNING else h
    return verdict(h, strength, f"Patching points to {named}{agree}" + (f" ({'; '.join(rest)})." if rest else "."))

__all__ = ["AttentionEvidence", "Evidence", "EvidenceLine", "PatchEvidence", "ProbeEvidence", "THRESHOLDS",
           "Verdict", "attention_evidence", "decide", "evidence_from", "middle_items", "patch_evidence",
           "probe_evidence"]
