"""Activation patching over sites x layers x positions (x heads), fast and reference.

Pairs are (low, high) prompts whose counts differ by one and whose tokens differ only at one
list word. Denoising runs the low prompt and patches in activations from the high prompt;
noising runs the high prompt and patches in the low prompt's. Metrics are read at the last
position of `format(prompt) + answer_prefix`, the position that predicts the count digit.

normalized effect = (LD_patched - LD_base) / (LD_source - LD_base), LD = logit(N_high) - logit(N_low),
so 0 = no change and 1 = the patched run behaves like the source run, in both directions.

The fast path (`method="fast"`) reuses KV caches: one base forward gives the KV of every
position; the source run starts from the base KV of the shared prefix (everything before the
changed word); each patch at position p recomputes only positions >= p, with every site,
layer and head of the sweep batched together as rows. The reference path runs a full forward
per (site, layer, head, position) with a hook. Both must agree to 1e-4 in float32.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from countlens.data.answers import parse_lenient
from countlens.errors import InputError
from countlens.models import kvcache
from countlens.models import hooks
from countlens.models.hooks import n_heads
from countlens.sites import Site, every_layer, layer_key, parse_layer
from countlens.io import read_jsonl
from countlens.results import PatchResult
from countlens.summaries import PatchSummary
from countlens.models.generation import generate_batch, prefix_kv
from countlens.models.handle import ModelHandle, forward_reduced, keep_logits, pad_left
from countlens.options import MEMORY_BUDGET, PatchOptions
from countlens.stats import bootstrap_ci, wilson_ci

SITE_KINDS = ("resid", "attn", "mlp", "head")
METRICS = ("logit_diff", "normalized", "p_target", "exact_match")


@dataclass
class EncodedPairs:
    """Pairs tokenised with the model's tokenizer, aligned, with their answer token ids."""
    ids: list[str]
    n_low: list[int]
    low: list[list[int]]
    high: list[list[int]]
    start: list[int]          # first differing token (unpadded index)
    tok_low: list[int]
    tok_high: list[int]
    dropped_misaligned: int = 0
    end: list[int] = field(default_factory=list)         # last differing token: "changed word"
    last_item: list[int] = field(default_factory=list)   # last token of the last list word (-1: unknown)

    FIELDS = ("ids", "n_low", "low", "high", "start", "tok_low", "tok_high", "end", "last_item")

    def subset(self, keep: list[bool]) -> "EncodedPairs":
        return EncodedPairs(**{f: [v for v, k in zip(getattr(self, f), keep) if k] for f in self.FIELDS},
                            dropped_misaligned=self.dropped_misaligned)

    def named_positions(self, i: int) -> dict[str, int]:
        """Unpadded token index of pair i's named positions: changed word, last list word, answer."""
        out = {"changed": self.end[i]}
        if self.last_item[i] >= 0:
            out["last_item"] = self.last_item[i]
        out["answer"] = len(self.low[i]) - 1
        return out


def sweep_configs(handle: ModelHandle, sites: tuple[str, ...], layers: tuple | None = None) -> list[Site]:
    """The sites of a sweep, one per row: resid has "emb" + every block; head has every head.

    `layers` keeps only those layers (strings or ints; "emb" only applies to resid)."""
    out = _all_configs(handle, sites)
    if layers is None:
        return out
    want = {str(x) for x in layers}
    bad = want - {"emb", *map(str, range(handle.n_layers))}
    if bad:
        raise InputError(f"--layers: {sorted(bad)} out of range (the model has blocks 0..{handle.n_layers - 1} and emb)")
    return [c for c in out if str(c.layer) in want]


def _all_configs(handle: ModelHandle, sites: tuple[str, ...]) -> list[Site]:
    out: list[Site] = []
    for kind in sites:
        if kind not in SITE_KINDS:
            raise InputError(f"--sites: unknown site '{kind}' (choose from {', '.join(SITE_KINDS)})")
        if kind == "resid":
            out += [Site("resid", layer) for layer in every_layer(handle.n_layers)]
        elif kind == "head":
            out += [Site("head", layer, h) for layer in range(handle.n_layers) for h in range(n_heads(handle.model))]
        else:
            out += [Site(kind, layer) for layer in range(handle.n_layers)]
    return out


def encode_pairs(handle: ModelHandle, pairs: list[dict], template: Any = None) -> EncodedPairs:
    """Tokenise formatted low/high prompts + answer prefix; drop (and count) pairs that misalign."""
    tpl = handle.template(template)
    answers = handle.answer_tokens(max(p["n_high"] for p in pairs), tpl.answer_prefix)
    if any(len(a) != 1 for a in answers):
        raise InputError("patching reads single-token answers; this tokenizer splits some counts in several tokens")
    enc = EncodedPairs([], [], [], [], [], [], [])
    for p in pairs:
        a = handle.encode_text(handle.format(p["low"]["prompt"]) + tpl.answer_prefix)
        b = handle.encode_text(handle.format(p["high"]["prompt"]) + tpl.answer_prefix)
        diff = [i for i in range(min(len(a), len(b))) if a[i] != b[i]]
        if len(a) != len(b) or not diff or diff[-1] - diff[0] + 1 > 8 or diff[-1] == len(a) - 1:
            enc.dropped_misaligned += 1
            continue
        enc.end.append(diff[-1])
        enc.last_item.append(_last_item_token(handle, p["low"], tpl.answer_prefix))
        enc.ids.append(p["id"])
        enc.n_low.append(p["n_low"])
        enc.low.append(a)
        enc.high.append(b)
        enc.start.append(diff[0])
        enc.tok_low.append(answers[p["n_low"]][0])
        enc.tok_high.append(answers[p["n_high"]][0])
    return enc


def _last_item_token(handle: ModelHandle, row: dict, answer_prefix: str) -> int:
    """Token index of the last list word's last token in the formatted prompt (-1 when the row's
    template cannot be matched to its prompt, e.g. an external file without one)."""
    import dataclasses

    from countlens.data.templates import load_template
    from countlens.models.encoding import encode_prompt

    words, category = row.get("word_list"), row.get("category")
    if not words or not category or not row.get("template"):
        return -1
    try:
        t = load_template(row["template"])
    except InputError:
        return -1
    if t.render(category, words) != row["prompt"]:
        return -1
    try:  # the pair is run with the sweep's answer prefix
        return encode_prompt(handle, dataclasses.replace(t, answer_prefix=answer_prefix), category, words).items[-1]
    except InputError:
        return -1


def _reduce(logits: torch.Tensor, hi: torch.Tensor, lo: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """[N, V] last-position logits -> [N, 4]: logit(N_high), logit(N_low), P(target), argmax == target."""
    logits = logits.float().cpu()
    r = torch.arange(len(logits))
    p = torch.softmax(logits, -1)[r, tgt]
    return torch.stack([logits[r, hi], logits[r, lo], p, (logits.argmax(-1) == tgt).float()], -1)


def _row_patch_hooks(handle: ModelHandle, configs, cfg_of: torch.Tensor, src_of: torch.Tensor,
                     acts: dict[Site, torch.Tensor], t_index: int):
    """Patch row i of a forward with config configs[cfg_of[i]], at sequence index t_index,
    with acts[site][src_of[i]] (acts: one position's source activations, [N, ...] per site)."""
    import contextlib

    by_site: dict[Site, list[tuple[torch.Tensor, int | None]]] = {}
    for c in torch.unique(cfg_of).tolist():
        site = configs[c]
        by_site.setdefault(site.module_site, []).append(((cfg_of == c).nonzero()[:, 0], site.head))
    stack = contextlib.ExitStack()
    for site, items in by_site.items():
        rows = torch.cat([r for r, _ in items])
        v = acts[site][src_of[rows].to(acts[site].device)]
        heads = None
        if items[0][1] is not None:  # head sites: every config of the site names a head
            heads = torch.cat([torch.full((len(r),), h, dtype=torch.long) for r, h in items])
            v = v[torch.arange(len(rows), device=v.device), heads.to(v.device)]
        stack.enter_context(hooks.replace(handle, site, v, positions=t_index, rows=rows, heads=heads))
    return stack


def _source_sites(configs: list[Site]) -> list[Site]:
    """The tensors a sweep's source run must capture (a head site's whole attention input)."""
    return list(dict.fromkeys(c.module_site for c in configs))


# Instrumentation: when set, every forward of the fast path runs inside FORWARD_PROBE(info), info a
# dict with kind (base | source | patch), rows, prefix, suffix, est_bytes (the forward's own working
# set as estimated by _forward_bytes; for the base forward it is filled in before the context exits),
# resident_bytes (base KV + captured source activations held meanwhile) and budget. Tests use it to
# check the chunking and the estimate against measured peaks.
FORWARD_PROBE: Callable[[dict], Any] | None = None


def _probe(info: dict | None = None, **kw):
    import contextlib

    return FORWARD_PROBE(info if info is not None else kw) if FORWARD_PROBE is not None else contextlib.nullcontext()


def _dims(handle: ModelHandle, kv) -> dict[str, int]:
    """hidden, intermediate, heads x head_dim (the head site's width), vocab, dtype bytes, logits_to_keep."""
    cfg = handle.model.config
    tc = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    hidden = int(tc.hidden_size)
    inter = getattr(tc, "intermediate_size", None) or getattr(tc, "n_inner", None) or 4 * hidden
    vocab = getattr(tc, "vocab_size", None) or handle.model.get_output_embeddings().weight.shape[0]
    return {"hidden": hidden, "inter": int(inter), "heads": n_heads(handle.model),
            "q_width": n_heads(handle.model) * kv[0][0].shape[-1], "vocab": int(vocab),
            "elem": kv[0][0].element_size(), "keep": bool(keep_logits(handle.model))}


def _forward_bytes(handle: ModelHandle, kv, dims: dict[str, int], prefix: int, suffix: int) -> int:
    """Estimated bytes one row of a forward of `suffix` positions after a `prefix` KV cache holds at its peak.

    KV: its copy of every layer's keys and values, 2 x kv_heads x head_dim x dtype bytes per
    position and layer, for prefix + suffix positions (`kvcache.row_bytes`; a sliding-window layer
    keeps fewer) -- `DynamicCache.update` concatenates, so the copy cannot be shared between rows.
    Activations of one layer at a time over the suffix: 6 x hidden + 4 x intermediate (residual,
    norms, hook clones; MLP gate/up/product) + 4 x heads x head_dim (q, rotated q/k, attention
    output) + keys/values repeated to every query head over prefix + suffix (GQA), in the model's
    dtype; attention scores and probabilities (float32, heads x suffix x (prefix + suffix)) and the
    mask. Logits: the last position's vocabulary in the model's dtype plus two float32 copies
    (every position's when the model cannot keep only the last).
    """
    d = dims
    kv_len = prefix + suffix
    kv_bytes = kvcache.row_bytes(kv, handle.model.config, prefix, suffix)
    acts = (6 * d["hidden"] + 4 * d["inter"] + 4 * d["q_width"]) * suffix * d["elem"]
    acts += 2 * d["q_width"] * kv_len * d["elem"]
    scores = d["heads"] * suffix * kv_len * 4 * 2 + suffix * kv_len * 4
    logits = (1 if d["keep"] else suffix) * d["vocab"] * (d["elem"] + 8)
    return kv_bytes + acts + scores + logits


def _site_width(site: Site, dims: dict[str, int]) -> int:
    return dims["q_width"] if site.kind == "head" else dims["hidden"]


@torch.no_grad()
def _batch_fast(handle, base, src, mask, pos, positions, starts, configs, answers, budget: int = MEMORY_BUDGET,
                wanted: list[dict[int, str]] | None = None):
    """Fast sweep of one batch. Returns clean_base [B,4], clean_src [B,4], patched [B,P,R,4].

    Every (pair, config) at one position is a row of a patched forward; rows are chunked so that
    each forward's estimated working set (`_forward_bytes` per row), plus what stays resident
    meanwhile (the batch's base KV and the captured source activations), fits in `budget` bytes,
    at least one row per forward. Source activations are captured for groups of positions small
    enough to take at most a quarter of the budget (one source forward per group).
    """
    model, cfg = handle.model, handle.model.config
    B, W = base.shape
    R = len(configs)
    hi, lo, tgt = answers
    info = dict(kind="base", rows=B, prefix=0, suffix=W, est_bytes=None, resident_bytes=0, budget=budget)
    with _probe(info=info):
        out = kvcache.forward(model, input_ids=base, attention_mask=mask, position_ids=pos, last_logits=True)
        clean_base = _reduce(out.logits[:, -1], hi, lo, tgt)
        out_last = out.logits[:, -1]
        kv = kvcache.kv_tensors(kvcache.output_cache(out))
        del out
        dims = _dims(handle, kv)
        info["est_bytes"] = B * _forward_bytes(handle, kv, dims, 0, W)  # known once the KV is
    resident_kv = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
    # Source run: shares the base's tokens (hence KV) before min(start, positions).
    cs = min(min(starts), min(positions))
    sites = _source_sites(configs)
    per_pos = B * sum(_site_width(s, dims) for s in sites) * dims["elem"]
    group = max(1, (budget // 4) // max(1, per_pos))
    clean_src = None
    # Before a pair's first changed token its two prompts agree, so a patch there is an exact
    # no-op: those rows are the clean base run and are not recomputed.
    patched = clean_base[:, None, None, :].repeat(1, len(positions), R, 1)
    for g0 in range(0, len(positions), group):
        gpos = positions[g0:g0 + group]
        rel = torch.tensor([p - cs for p in gpos])
        with hooks.capture(handle, sites, positions=rel.tolist(), to_cpu=False) as acts:
            with _probe(kind="source", rows=B, prefix=cs, suffix=W - cs,
                        est_bytes=B * _forward_bytes(handle, kv, dims, cs, W - cs) + per_pos * len(gpos),
                        resident_bytes=resident_kv, budget=budget):
                sout = kvcache.forward(model, cache=kvcache.build_cache(kv, cfg, cs), input_ids=src[:, cs:],
                                       attention_mask=mask, position_ids=pos[:, cs:], last_logits=True)
        if clean_src is None:
            clean_src = _reduce(sout.logits[:, -1], hi, lo, tgt)
        del sout
        resident = resident_kv + sum(a.numel() * a.element_size() for a in acts.values())
        for jj, p in enumerate(gpos):
            j = g0 + jj
            active = torch.tensor([b for b in range(B) if starts[b] <= p and (wanted is None or p in wanted[b])],
                                  dtype=torch.long)
            if not len(active):
                continue
            pacts = {s: a[:, jj] for s, a in acts.items()}
            if p == W - 1 and len(active) == B and kvcache.shared_prefix_ok(model, kv, W - 1, base[:, -1],
                                                                            pos[:, -1], mask, out_last):
                shared = _patch_last_shared(handle, kv, base, pos, mask, configs, pacts, answers, budget, resident,
                                            dims)
                if shared is not None:
                    patched[:, j] = shared
                    continue
            per_row = _forward_bytes(handle, kv, dims, p, W - p)
            cap = max(1, (budget - resident) // per_row)
            n = len(active) * R
            for k0 in range(0, n, cap):
                idx = torch.arange(k0, min(n, k0 + cap))
                pair, cfg_of = active[idx // R], idx % R
                pair_d = pair.to(base.device)
                with _probe(kind="patch", rows=len(idx), prefix=p, suffix=W - p, est_bytes=len(idx) * per_row,
                            resident_bytes=resident, budget=budget), \
                        _row_patch_hooks(handle, configs, cfg_of, pair, pacts, 0):
                    o = kvcache.forward(model, cache=kvcache.build_cache(kv, cfg, p, pair_d),
                                        input_ids=base[pair_d, p:], attention_mask=mask[pair_d],
                                        position_ids=pos[pair_d, p:], last_logits=True)
                    patched[pair, j, cfg_of] = _reduce(o.logits[:, -1], hi[pair], lo[pair], tgt[pair])
                    del o
    return clean_base, clean_src, patched


def _patch_last_shared(handle, kv, base, pos, mask, configs, pacts, answers, budget, resident, dims) -> torch.Tensor:
    """Every config at the answer position as its own query token over the batch's one base cache.

    Query q of pair b is config configs[q] patched with pair b's source activation; the queries
    see the prompt and themselves only (kvcache.shared_prefix_forward), so there is no KV copy
    per config. Returns [B, R, 4] like the per-row path, or None when one query per pair does not fit
    the budget."""
    B, W = base.shape
    R = len(configs)
    hi, lo, tgt = answers
    # the batch's one prefix cache (copied into the cache, then concatenated with the queries' keys),
    # plus per query: its logits, one layer's activations, attention scores over the width, mask row
    fixed = 2 * B * kvcache.row_bytes(kv, handle.model.config, W - 1, 1)
    per_query = B * (dims["vocab"] * (dims["elem"] + 4) + (4 * dims["hidden"] + 2 * dims["inter"]
                                                         + 2 * dims["q_width"]) * dims["elem"]
                     + (dims["heads"] * 4 + dims["elem"]) * (W + R) + kvcache.row_bytes(kv, handle.model.config,
                                                                                      0, 1))
    if resident + fixed + per_query > budget:
        return None  # not even one query per pair fits: the per-row path chunks finer
    Q = max(1, min(R, (budget - resident - fixed) // max(1, per_query)))
    prefix = [(k[:, :, :W - 1], v[:, :, :W - 1]) for k, v in kv]
    out = torch.empty(B, R, 4)
    for q0 in range(0, R, Q):
        chunk = list(range(q0, min(R, q0 + Q)))
        by_site: dict[Site, list[tuple[int, int | None]]] = {}
        for q, r in enumerate(chunk):
            by_site.setdefault(configs[r].module_site, []).append((q, configs[r].head))
        import contextlib

        with contextlib.ExitStack() as stack:  # x [B, Q, ...]: query q is config chunk[q]
            for site, items in by_site.items():
                for q, head in items:
                    v = pacts[site] if head is None else pacts[site][:, head]
                    stack.enter_context(hooks.replace(handle, Site(site.kind, site.layer, head), v, positions=q))
            with _probe(kind="patch", rows=B * len(chunk), prefix=W - 1, suffix=1, est_bytes=fixed + per_query * len(chunk),
                        resident_bytes=resident, budget=budget):
                o = kvcache.shared_prefix_forward(handle.model, prefix, W - 1, base[:, -1], pos[:, -1], mask,
                                                  len(chunk))
        logits = o.logits[:, -len(chunk):]                                       # [B, Q, V]
        Qn = len(chunk)
        red = _reduce(logits.reshape(B * Qn, -1), hi.repeat_interleave(Qn), lo.repeat_interleave(Qn),
                      tgt.repeat_interleave(Qn)).view(B, Qn, 4)
        out[:, q0:q0 + Qn] = red
        del o, logits
    return out


@torch.no_grad()
def _batch_reference(handle, base, src, mask, pos, positions, starts, configs, answers, budget: int = MEMORY_BUDGET,
                     wanted: list[dict[int, str]] | None = None):
    """Reference sweep: a full forward per (config, position) with a hook (B rows each; budget unused)."""
    B, W = base.shape
    hi, lo, tgt = answers

    reduce = functools.partial(_reduce, hi=hi, lo=lo, tgt=tgt)

    def full(ids):  # a plain full forward (no cache) -> the 4 numbers per row (`_reduce`) at the last position
        return forward_reduced(handle, reduce, input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    clean_base = full(base)
    # the source's sites at the swept positions only (under --remote: all that is downloaded of them)
    with hooks.capture(handle, _source_sites(configs), positions=list(positions), to_cpu=False) as acts:
        clean_src = full(src)
    patched = torch.empty(B, len(positions), len(configs), 4)
    rows = torch.arange(B)
    for j, p in enumerate(positions):
        pacts = {s: a[:, j] for s, a in acts.items()}
        for r, cfg in enumerate(configs):
            with _row_patch_hooks(handle, [cfg], torch.zeros(B, dtype=torch.long), rows, pacts, p):
                patched[:, j, r] = full(base)
    return clean_base, clean_src, patched


def resolve_named(enc: EncodedPairs, idx: list[int], W: int, answer: bool = True
                  ) -> tuple[list[int], list[dict[int, str]]]:
    """Named positions of a batch: the union of padded indices, and per pair {index: name}."""
    wanted = []
    for i in idx:
        pad = W - len(enc.low[i])
        wanted.append({pad + t: name for name, t in enc.named_positions(i).items() if answer or name != "answer"})
    return sorted({p for w in wanted for p in w}), wanted


def resolve_positions(spec: str, W: int, starts: list[int]) -> list[int]:
    """Padded indices to patch: last, all (from the first changed token on), or offsets from the end."""
    if spec == "last":
        return [W - 1]
    if spec == "all":
        return list(range(min(starts), W))
    try:
        offs = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--positions must be last, all or offsets from the end like -1,-2 (got '{spec}')") from None
    if not offs or any(o >= 0 or -o > W for o in offs):
        raise InputError(f"--positions offsets must be negative and within the prompt (got '{spec}')")
    return sorted(W + o for o in offs)


def _direction_tensors(enc: EncodedPairs, idx: list[int], direction: str, device):
    lows = [enc.low[i] for i in idx]
    highs = [enc.high[i] for i in idx]
    base_seqs, src_seqs = (lows, highs) if direction == "denoise" else (highs, lows)
    pad = 0
    b = pad_left(base_seqs, pad, device)
    s = pad_left(src_seqs, pad, device)["input_ids"]
    W = b["input_ids"].shape[1]
    starts = [W - len(enc.low[i]) + enc.start[i] for i in idx]
    hi = torch.tensor([enc.tok_high[i] for i in idx])
    lo = torch.tensor([enc.tok_low[i] for i in idx])
    tgt = hi if direction == "denoise" else lo
    return b, s, starts, (hi, lo, tgt)


def _run_batches(handle, enc, direction, configs, opts, progress, spec: str | None = None):
    """Yield (pair index list, W, positions, clean_base, clean_src, patched) batch by batch.

    The fast path chunks its forwards to `opts.memory_budget` bytes by itself; on an out-of-memory
    error (a budget above what the device has free) the batch is retried with half the budget and
    half the pairs. progress(n) is called with the number of pairs each finished batch held.
    """
    # the nnsight engine runs full forwards (its traces, local or on NDIF, do not hand a KV cache back)
    fn = _batch_fast if opts.method == "fast" and hooks.backend(handle) is hooks.TORCH else _batch_reference
    budget = int(opts.memory_budget)
    if budget <= 0:
        raise InputError(f"memory_budget must be a positive number of bytes (got {opts.memory_budget})")
    order = sorted(range(len(enc.ids)), key=lambda i: len(enc.low[i]))
    bs = max(1, opts.batch_size)
    i = 0
    while i < len(order):
        idx = order[i:i + bs]
        b, s, starts, answers = _direction_tensors(enc, idx, direction, handle.device)
        W = b["input_ids"].shape[1]
        spec = spec or opts.positions
        wanted = None
        if spec in ("named", "named-list"):
            positions, wanted = resolve_named(enc, idx, W, answer=spec == "named")
        else:
            positions = resolve_positions(spec, W, starts)
        try:
            res = fn(handle, b["input_ids"], s, b["attention_mask"], b["position_ids"], positions, starts,
                     configs, answers, budget=budget, wanted=wanted)
        except torch.cuda.OutOfMemoryError:
            if bs == 1 and budget <= 1 << 20:
                raise
            torch.cuda.empty_cache()
            bs, budget = max(1, bs // 2), max(1 << 20, budget // 2)
            continue
        yield idx, W, positions, wanted, *res
        if progress:
            progress(len(idx))
        i += len(idx)


def _tidy(enc, idx, W, positions, configs, direction, clean_base, clean_src, patched,
          wanted: list[dict[int, str]] | None = None) -> pd.DataFrame:
    B, P, R = len(idx), len(positions), len(configs)
    ld = patched[..., 0] - patched[..., 1]
    ld_b = (clean_base[:, 0] - clean_base[:, 1])[:, None, None]
    ld_s = (clean_src[:, 0] - clean_src[:, 1])[:, None, None]
    norm = (ld - ld_b) / (ld_s - ld_b)
    vals = torch.stack([ld, norm, patched[..., 2], patched[..., 3]], -1).numpy()  # [B,P,R,4]
    lengths = np.array([len(enc.low[i]) for i in idx])
    pos_abs = np.array(positions)
    valid = pos_abs[None, :] >= (W - lengths)[:, None]  # not in a pair's left padding
    names = np.array([[(wanted[b].get(p, "") if wanted is not None else "answer" if p == W - 1 else "")
                       for p in positions] for b in range(B)], dtype=object)
    if wanted is not None:  # named positions: each pair only at its own
        valid &= names != ""
    bi, pj, rk, mm = np.meshgrid(np.arange(B), np.arange(P), np.arange(R), np.arange(4), indexing="ij")
    keep = valid[bi, pj]
    kinds = np.array([c.kind for c in configs], dtype=object)
    layers = np.array([str(c.layer) for c in configs], dtype=object)
    heads = np.array([-1 if c.head is None else c.head for c in configs])
    return pd.DataFrame({
        "pair": np.array([enc.ids[i] for i in idx], dtype=object)[bi[keep]],
        "n_low": np.array([enc.n_low[i] for i in idx])[bi[keep]],
        "direction": direction,
        "site": kinds[rk[keep]],
        "layer": layers[rk[keep]],
        "position": (pos_abs - W)[pj[keep]],
        "position_name": names[bi[keep], pj[keep]],
        "head": heads[rk[keep]],
        "metric": np.array(METRICS, dtype=object)[mm[keep]],
        "value": vals[keep],
    })


@torch.no_grad()
def baseline_keep(handle: ModelHandle, enc: EncodedPairs, opts: PatchOptions) -> list[bool]:
    """Pairs the model answers correctly on both prompts (greedy argmax, or all k samples)."""
    keep = []
    for i0 in range(0, len(enc.ids), opts.batch_size):
        idx = list(range(i0, min(len(enc.ids), i0 + opts.batch_size)))
        ok = torch.ones(len(idx), dtype=torch.bool)
        for seqs, toks in ((enc.low, enc.tok_low), (enc.high, enc.tok_high)):
            batch = pad_left([seqs[i] for i in idx], 0, handle.device)
            logits = handle.model(**batch, **keep_logits(handle.model)).logits[:, -1].float().cpu()
            want = torch.tensor([toks[i] for i in idx])
            if opts.filter == "sampled":
                gen = torch.Generator().manual_seed(opts.seed)
                probs = torch.softmax(logits, -1)
                draws = torch.multinomial(probs, opts.k_samples, replacement=True, generator=gen)
                ok &= (draws == want[:, None]).all(-1)
            else:
                ok &= logits.argmax(-1) == want
        keep += ok.tolist()
    return keep


@torch.no_grad()
def generate_sweep(handle: ModelHandle, enc: EncodedPairs, direction: str, configs, opts: PatchOptions,
                   tokens_to_int: Callable[[str], int | None] = parse_lenient) -> pd.DataFrame:
    """The original protocol, corrected: patch the last position (prefill only), generate, parse.

    Metrics per pair and config: changed (answer differs from the unpatched answer), exact_match
    (answer == the source prompt's count), abs_shift (|patched - unpatched answer|).
    """
    rows = []
    prefix = handle.template(opts.template).answer_prefix
    for i0 in range(0, len(enc.ids), opts.batch_size):
        idx = list(range(i0, min(len(enc.ids), i0 + opts.batch_size)))
        b, s, starts, _ = _direction_tensors(enc, idx, direction, handle.device)
        with hooks.capture(handle, _source_sites(configs), positions=-1, to_cpu=False) as acts:
            handle.model(input_ids=s, attention_mask=b["attention_mask"], position_ids=b["position_ids"])
        kv = prefix_kv(handle, b)  # the patch is at the last position: every generation shares the rest

        def gen(patch_cfg):
            stack = contextlib.ExitStack()
            if patch_cfg is not None:
                v = acts[patch_cfg.module_site][:, 0]
                v = v if patch_cfg.head is None else v[:, patch_cfg.head]
                # only the prefill (here: the last prompt position) holds the patched position
                stack.enter_context(hooks.replace(handle, patch_cfg, v, positions=-1, prompt_only=True))
            with stack:
                new = generate_batch(handle, b, opts.max_new_tokens, prefix=kv)
            texts = handle.tokenizer.batch_decode(new, skip_special_tokens=True)
            return [tokens_to_int(prefix + t) for t in texts]

        base_ans = gen(None)
        for cfg in configs:
            ans = gen(cfg)
            for j, i in enumerate(idx):
                src_n = enc.n_low[i] + 1 if direction == "denoise" else enc.n_low[i]
                a, b0 = ans[j], base_ans[j]
                for metric, value in (("gen_changed", float(a != b0)), ("gen_exact_match", float(a == src_n)),
                                      ("gen_abs_shift", float(abs(a - b0)) if a is not None and b0 is not None
                                       else math.nan)):
                    rows.append((enc.ids[i], enc.n_low[i], direction, cfg.kind, str(cfg.layer), -1,
                                 -1 if cfg.head is None else cfg.head, metric, value))
    out = pd.DataFrame(rows, columns=["pair", "n_low", "direction", "site", "layer", "position", "head",
                                      "metric", "value"])
    out.insert(6, "position_name", "answer")
    return out


MIN_LD_GAP = 0.5       # logits: pairs with |LD_source - LD_base| below this are left out of the normalised mean
MIN_KEPT_PAIRS = 8     # fewer pairs than this pass the correctness filter -> fall back to all aligned pairs


def _direction_summary(table: pd.DataFrame, pair_ld: pd.DataFrame, direction: str, opts: PatchOptions,
                       ratio: dict) -> dict:
    """Residual stream at the last position, one direction: per-layer effects with CIs.

    `mean` is the normalised effect over the pairs whose source and base logit differences
    differ by more than MIN_LD_GAP (a ratio with a ~0 denominator says nothing); `delta_ld`
    (patched LD - base LD, in logits) is over every pair, so a weak model still gets a number.
    """
    t = table[(table.site == "resid") & (table.position == -1) & (table.direction == direction)]
    gaps = pair_ld[pair_ld.direction == direction].drop_duplicates("pair").set_index("pair")
    informative = set(gaps.index[(gaps.ld_source - gaps.ld_base).abs() > MIN_LD_GAP])
    per_layer, by_n = [], {}
    for layer in sorted(t.layer.unique(), key=layer_key):
        tl = t[t.layer == layer]
        tn = tl[(tl.metric == "normalized") & tl.pair.isin(informative)]
        mean, lo, hi = bootstrap_ci(tn.value.to_numpy(), opts.n_boot, opts.seed)
        ld = tl[tl.metric == "logit_diff"]
        delta = ld.value.to_numpy() - gaps.ld_base.reindex(ld.pair).to_numpy()
        d_mean, d_lo, d_hi = bootstrap_ci(delta, opts.n_boot, opts.seed)
        em = tl[tl.metric == "exact_match"].value.to_numpy()
        em_lo, em_hi = wilson_ci(int(np.nansum(em)), int(np.isfinite(em).sum())) if len(em) else (math.nan,) * 2
        entry = {"layer": parse_layer(layer), "mean": mean, "ci_low": lo, "ci_high": hi,
                 "n_pairs": int(len(tn)), "delta_ld": d_mean, "delta_ld_ci_low": d_lo, "delta_ld_ci_high": d_hi,
                 "exact_match_ci_low": em_lo, "exact_match_ci_high": em_hi,
                 "ratio_of_means": ratio.get(str(layer), math.nan) if informative else math.nan}
        for m in ("logit_diff", "p_target", "exact_match"):
            entry[m] = float(tl[tl.metric == m].value.mean())
        per_layer.append(entry)
        for n, g in tn.groupby("n_low"):
            by_n.setdefault(str(n), []).append({"layer": entry["layer"], "mean": float(g.value.mean()),
                                                "pairs": int(len(g))})
    gen = table[table.metric.str.startswith("gen_") & (table.site == "resid") & (table.direction == direction)]
    generate = []
    for layer in (sorted(gen.layer.unique(), key=layer_key) if len(gen) else []):
        entry = {"layer": parse_layer(layer),
                 **{m: float(gen[(gen.layer == layer) & (gen.metric == m)].value.mean())
                    for m in ("gen_changed", "gen_exact_match", "gen_abs_shift")}}
        gem = gen[(gen.layer == layer) & (gen.metric == "gen_exact_match")].value.dropna().to_numpy()
        entry["gen_exact_match_ci_low"], entry["gen_exact_match_ci_high"] = wilson_ci(int(gem.sum()), len(gem))
        generate.append(entry)
    g = gaps.ld_source - gaps.ld_base
    return {"per_layer": per_layer, "by_n": by_n, "generate": generate,
            "informative_pairs": len(informative), "ld_gap_threshold": MIN_LD_GAP,
            "mean_ld_base": float(gaps.ld_base.mean()), "mean_ld_source": float(gaps.ld_source.mean()),
            "mean_ld_gap": float(g.mean()) if len(g) else math.nan}


def summarize(table: pd.DataFrame, opts: PatchOptions, stats: dict, pair_ld: pd.DataFrame | None = None) -> dict:
    """Per direction (`by_direction`); the top level repeats the first direction (denoise if it ran)."""
    ratios = stats.pop("_ratio_of_means", {})
    if pair_ld is None:  # no per-pair logit differences given: every pair counts as informative
        frames = [pd.DataFrame({"pair": table[table.direction == d].pair.unique(), "direction": d,
                                "ld_base": 0.0, "ld_source": np.inf}) for d in opts.directions]
        pair_ld = pd.concat(frames, ignore_index=True)
    by_direction = {d: _direction_summary(table, pair_ld, d, opts, ratios.get(d, {})) for d in opts.directions}
    direction = "denoise" if "denoise" in opts.directions else opts.directions[0]
    return {**by_direction[direction], "direction": direction, "by_direction": by_direction,
            "method": opts.method, "sites": list(opts.sites), "positions": opts.positions,
            "directions": list(opts.directions),
            "interval": "bootstrap 95% (means of effects); wilson 95% (exact-match rates)",
            **stats}


def select_pairs(handle: ModelHandle, pairs: list[dict], opts: PatchOptions, verb: str = "patched",
                 log: Callable[[str], None] | None = None, kept_ids: Collection[str] | None = None
                 ) -> tuple[EncodedPairs, EncodedPairs, int | None, str | None]:
    """(encoded, kept, how many passed the filter, fallback): the aligned pairs the model answers right
    on both prompts (opts.filter), or every aligned pair when fewer than MIN_KEPT_PAIRS pass, said in
    `fallback` (a model near chance). Exact patching and AtP select the same pairs: `kept_ids` (the
    pair ids an exact patching run kept) skips the filter's two forwards per pair."""
    enc = encode_pairs(handle, pairs, opts.template)
    if not enc.ids:
        raise InputError(f"none of the {len(pairs)} pairs is token-aligned under this model's tokenizer "
                         "(rebuild them with `countlens data pairs --tokenizer` for this model)")
    if kept_ids is not None:
        wanted = set(kept_ids)
        keep = [i in wanted for i in enc.ids]
        if not any(keep):
            raise InputError("none of the given pair ids is among these aligned pairs")
        return enc, enc.subset(keep), int(sum(keep)), None
    keep = baseline_keep(handle, enc, opts) if opts.filter != "none" else [True] * len(enc.ids)
    passed = int(sum(keep)) if opts.filter != "none" else None
    fallback = None
    if opts.filter != "none" and sum(keep) < min(MIN_KEPT_PAIRS, len(enc.ids)):
        fallback = (f"only {sum(keep)} of {len(enc.ids)} aligned pairs are answered correctly on both prompts "
                    f"(filter '{opts.filter}'); {verb} all {len(enc.ids)} aligned pairs instead")
        if log:
            log(f"{'atp' if verb == 'estimated' else 'patch'}: {fallback}")
        keep = [True] * len(enc.ids)
    return enc, enc.subset(keep), passed, fallback


def run_patching(handle: ModelHandle, pairs: list[dict], opts: PatchOptions | None = None,
                 progress: Callable[[int], None] | None = None, log: Callable[[str], None] | None = None) -> PatchResult:
    """Filter pairs, sweep every requested direction, and return the tidy table + summary.

    When fewer than MIN_KEPT_PAIRS pairs pass the correctness filter (a model near chance), every
    aligned pair is patched instead and the summary says so (`filter_fallback`); its effects
    then describe where count information flows, not a working counter.
    """
    opts = opts or PatchOptions()
    if opts.method not in ("fast", "reference"):
        raise InputError(f"--method must be fast or reference (got '{opts.method}')")
    for d in opts.directions:
        if d not in ("denoise", "noise"):
            raise InputError(f"--direction must be denoise, noise or both (got '{d}')")
    if not pairs:
        raise InputError("no pairs to patch")
    enc, kept, passed, fallback = select_pairs(handle, pairs, opts, "patched", log)
    stats = {"total_pairs": len(pairs), "dropped_misaligned": enc.dropped_misaligned,
             "kept_pairs": len(kept.ids), "filter": opts.filter if fallback is None else "none",
             "filter_requested": opts.filter, "filter_passed": passed, "filter_fallback": fallback}
    configs = sweep_configs(handle, opts.sites, opts.layers)
    comp = opts.component_positions or opts.positions
    resid, comps = [c for c in configs if c.kind == "resid"], [c for c in configs if c.kind != "resid"]
    if opts.positions == "named" and opts.named_layers is not None:
        # every resid layer at the answer (one cheap query each), a layer subset at the list words
        sub = {str(x) for x in opts.named_layers}
        groups = [(resid, "last"), ([c for c in resid if str(c.layer) in sub], "named-list")]
    elif comp == opts.positions:
        groups, comps = [(configs, opts.positions)], []
    else:
        groups = [(resid, opts.positions)]
    groups = [(g, spec) for g, spec in groups + [(comps, comp)] if g]
    frames, ratio, ld_rows = [], {}, []
    for direction in opts.directions:
        sums: dict[str, list[float]] = {}
        for gi, (configs, spec) in enumerate(groups):
            for idx, W, positions, wanted, cb, cs, patched in _run_batches(
                    handle, kept, direction, configs, opts, progress if gi == len(groups) - 1 else None, spec):
                frames.append(_tidy(kept, idx, W, positions, configs, direction, cb, cs, patched, wanted))
                if gi == 0:
                    for j, i in enumerate(idx):
                        ld_rows.append((kept.ids[i], direction, float(cb[j, 0] - cb[j, 1]),
                                        float(cs[j, 0] - cs[j, 1])))
                _ratio_sums(sums, configs, W, positions, cb, cs, patched)
        ratio[direction] = {k: a / b if b else math.nan for k, (a, b) in sums.items()}
        if opts.generate:
            gen_cfgs = [c for c in sweep_configs(handle, ("resid",), opts.layers)
                        if opts.generate_layers is None or str(c.layer) in {str(x) for x in opts.generate_layers}]
            frames.append(generate_sweep(handle, kept, direction, gen_cfgs, opts))
    table = pd.concat(frames, ignore_index=True)
    stats["_ratio_of_means"] = ratio
    pair_ld = pd.DataFrame(ld_rows, columns=["pair", "direction", "ld_base", "ld_source"])
    stats["example"] = example_tokens(handle, kept)
    summary = summarize(table, opts, stats, pair_ld)
    cells = patch_cells(table, pair_ld, summary["direction"], opts)
    summary["cells"] = cells_summary(cells)
    return PatchResult(table=table, summary=summary, options=opts, cells=cells)


CELL_METRIC = "change in logit difference (patched - base)"


def patch_cells(table: pd.DataFrame, pair_ld: pd.DataFrame, direction: str, opts: PatchOptions) -> pd.DataFrame:
    """Per cell (site, layer, head, position) of the grid: the mean change in logit difference over pairs
    with a bootstrap 95 % CI, a sign-flip test against zero and the Benjamini-Hochberg correction over
    every cell of the site kind's grid (one heatmap, one family; interp/cellstats.py), so a heatmap can
    show which cells are real. With named positions a cell is a named position (pairs differ in
    length, so offsets differ). With n pairs no p is below 2 / 2^n (n <= 12) or 1 / 5001: a small
    study can have no significant cell at all, and the summary says how many there are."""
    from countlens.interp.cellstats import cell_stats

    t = table[(table.metric == "logit_diff") & (table.direction == direction)]
    base = pair_ld[pair_ld.direction == direction].set_index("pair").ld_base
    t = t.assign(delta=t.value - t.pair.map(base))
    where = "position_name" if opts.positions == "named" else "position"
    key = ["site", "layer", "head", where]
    # a cell every pair leaves exactly unchanged (before the changed word, where the patch is a no-op)
    # is no test: it is left out of the grid and of its correction
    live = t.assign(a=t.delta.abs()).groupby(key).a.transform("max") > 0
    t = t[live]
    # one family per site kind: each is its own heatmap, read as one screen
    parts = [cell_stats(t[t.site == site], value="delta", cells=("site", "layer", "head", where),
                        n_boot=min(opts.n_boot, 1000), n_perm=5000, seed=opts.seed) for site in dict.fromkeys(t.site)]
    cells = pd.concat(parts, ignore_index=True)
    cells.attrs = {**parts[0].attrs, "n_cells": int(sum(p.attrs["n_cells"] for p in parts)),
                   "families": "one per site kind"}
    if where == "position_name":  # the answer's offset, so every cell has a position
        cells.insert(3, "position", np.where(cells.position_name == "answer", -1, 0))
    else:
        names = t.drop_duplicates(["site", "layer", "head", "position"]).set_index(
            ["site", "layer", "head", "position"]).position_name
        cells.insert(4, "position_name", [names.get((r.site, r.layer, r.head, r.position), "")
                                          for r in cells.itertuples()])
    return cells


def cells_summary(cells: pd.DataFrame, top: int = 10) -> dict:
    """How many cells the correction keeps, and the strongest ones at the answer position per site."""
    at_answer = cells[cells.position_name == "answer"] if "answer" in set(cells.position_name) \
        else cells[cells.position == -1]
    best = {}
    for site in dict.fromkeys(cells.site):
        c = at_answer[(at_answer.site == site) & at_answer.significant]
        c = c.reindex(c["mean"].abs().sort_values(ascending=False).index).head(top)
        best[site] = [{"layer": parse_layer(r.layer), "head": None if r.head < 0 else int(r.head),
                       "mean": float(r.mean), "ci_low": float(r.ci_low), "ci_high": float(r.ci_high),
                       "p_adj": float(r.p_adj)} for r in c.itertuples()]
    return {"metric": CELL_METRIC, "test": "two-sided sign-flip test of mean = 0 over pairs",
            "correction": cells.attrs.get("correction", "bh"), "families": cells.attrs.get("families"),
            "alpha": cells.attrs.get("alpha", 0.05),
            "n_cells": int(len(cells)), "significant": int(cells.significant.sum()),
            "p_floor": cells.attrs.get("p_floor"), "top_at_answer": best}


def example_tokens(handle: ModelHandle, enc: EncodedPairs) -> dict | None:
    """One pair's low prompt as tokens, to label positions (offsets from the end) in the figures.

    The pair reaching furthest back from the end to its changed word, so every offset of an
    `all` heatmap has a token; `named` gives each named position's offset in that prompt.
    """
    if not enc.ids:
        return None
    i = max(range(len(enc.ids)), key=lambda j: (len(enc.low[j]) - enc.start[j], -j))
    n = len(enc.low[i])
    return {"pair": enc.ids[i], "tokens": [handle.tokenizer.decode([t]) for t in enc.low[i]],
            "changed": [enc.start[i] - n, enc.end[i] - n],
            "named": {name: t - n for name, t in enc.named_positions(i).items()}}


def _ratio_sums(sums: dict, configs, W: int, positions: list[int], cb, cs, patched) -> None:
    """Accumulate the ratio of means (resid, answer position): sums of (patched - base) and (source - base)."""
    if positions[-1] != W - 1:
        return
    ld = patched[:, -1, :, 0] - patched[:, -1, :, 1]
    ld_b = (cb[:, 0] - cb[:, 1])[:, None]
    ld_s = (cs[:, 0] - cs[:, 1])[:, None]
    for r, site in enumerate(configs):
        if site.kind == "resid":
            acc = sums.setdefault(str(site.layer), [0.0, 0.0])
            acc[0] += float((ld[:, r] - ld_b[:, 0]).sum())
            acc[1] += float((ld_s - ld_b).sum())


def load_pairs(path: str | Path, n: int | None = None) -> list[dict]:
    pairs = []
    for lineno, obj in read_jsonl(path, n):
        for key in ("id", "n_low", "n_high", "low", "high"):
            if key not in obj:
                raise InputError("missing (is this a pairs file from `countlens data pairs`?)", file=str(path),
                                 line=lineno, field=key)
        pairs.append(obj)
    return pairs


def save_result(result: PatchResult, out: str | Path) -> dict:
    """Write table.parquet, summary.json and figures into `out` (each file complete or absent)."""
    from countlens.io import write_json, write_parquet

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(out / "table.parquet", result.table)
    if result.cells is not None:
        write_parquet(out / "cells.parquet", result.cells)
    summary = result.summary | {"options": result.options.model_dump(mode="json"),
                                "figures": [str(p) for p in result.plot(out)]}
    write_json(out / "summary.json", PatchSummary.check(summary, str(out / "summary.json")))
    return summary
