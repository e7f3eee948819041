"""Attribution patching (AtP): a first-order estimate of every cell of an activation-patching grid.

Exact patching (`patching.py`) runs one patched forward per cell (site x layer x head x position,
KV-cached); a SmolLM2 grid of 30 layers x ~60 positions x 4 sites, heads included, is tens of
thousands of forwards per pair batch. AtP (Nanda 2023; Syed et al. 2023; Kramár et al. 2024,
arXiv 2403.00745) replaces each by a dot product:

    LD(patched at a) - LD(base)  ~=  (a_source - a_base) . dLD/da |_(a = a_base)

from two forwards (the base prompt with gradients; the source prompt without) and one backward
per pair batch, for every site at once. LD = logit(N_high) - logit(N_low) at the answer position,
and everything else follows exact patching's conventions so the tables merge cell by cell:
denoise runs the low prompt and patches in the high prompt's activations, noise the reverse; the
normalised effect is estimate / (LD_source - LD_base) with the same clean logit differences; the
same pairs (same filter and fallback), the same layer convention (`sites.py`), the same batches
(pairs sorted by length) and positions (`all`: from the batch's first changed token on; a pair's
positions before its own changed token are exact no-ops, 0 here as there). Table: patching's long
format, metrics `logit_diff` (LD_base + estimate), `normalized` and `delta_ld` (the estimate, in
logits; exact patching has no such row).

Gradients are taken at hooked leaves: every site's tensor x is replaced by x + z with z a zero
tensor that requires grad, so dLD/dz = dLD/dx while the gradient still flows on to earlier sites
(a detached replacement would cut emb off from everything after block 0). Head sites are the
output projection's input [B, T, H, d]; a head's estimate uses its slice only.

Where AtP fails (Kramár et al. 2024) and where that may bite here:
  * attention saturation: when a softmax is saturated (a head puts ~all its weight on a few
    tokens), the gradient through the attention pattern is ~0, so a change of query or key that
    moves the pattern a lot is estimated as ~nothing (false negatives). Swapping a list word for
    one of the other kind (a fruit for a chair) is exactly such a change for heads that attend to
    matching words (`attention.py`); the estimates at the changed word's position in early
    layers, whose effect runs through those patterns, are the ones to distrust. AtP* fixes it for
    queries and keys by recomputing the attention softmax exactly (the "QK fix"), not done here.
  * cancellation: a cell whose direct and indirect effects cancel in the first-order term (or
    nearly do) gets a small estimate although patching it alone moves the answer; AtP* adds
    GradDrop (gradients with each layer's residual path dropped) against it, also not done here.
  * large patches: a word swap is not a small perturbation; the residual stream at the changed
    position carries the word itself, so the linearisation is worst there, and best at the answer
    position late in the model, where the logits are nearly linear in the residual (exactly linear
    before the final norm, which `tests/test_attention_atp.py` uses).
So AtP is a screen: `choose_cells` ranks cells by |estimate| for exact patching, and `compare`
measures, on a grid small enough to patch exactly, how well the ranking holds (Spearman per site).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from countlens.options import AtPOptions  # noqa: F401  (the options live with the others)
from countlens.errors import InputError
from countlens.results import AtPResult
from countlens.interp.patching import (EncodedPairs, PatchOptions, select_pairs,
                                       resolve_named, resolve_positions, sweep_configs)
from countlens.models import hooks
from countlens.models.handle import ModelHandle, keep_logits, pad_left
from countlens.sites import Site
from countlens.stats import bootstrap_ci

ATP_METRICS = ("logit_diff", "normalized", "delta_ld")
CELL = ["site", "layer", "head", "position"]
COLUMNS = ["pair", "n_low", "direction", "site", "layer", "position", "position_name", "head", "metric", "value"]


def pair_bytes(handle: ModelHandle, T: int, n_sites: int) -> int:
    """Estimated bytes one pair of T tokens holds in `estimate_batch`: what autograd saves for the
    backward (per layer and token ~10 d + 4 d_mlp floats, and the attention probabilities), plus
    each site's base and source activation and gradient. On SmolLM2 (T 120) ~0.3 GB, as measured."""
    cfg = handle.model.config
    d = cfg.hidden_size
    d_mlp = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d
    H, L = hooks.n_heads(handle.model), handle.n_layers
    floats = L * T * (10 * d + 4 * d_mlp) + 3 * L * H * T * T + 3 * n_sites * T * d
    return floats * next(handle.model.parameters()).element_size()


def metric_gradients(handle: ModelHandle, inputs: dict[str, torch.Tensor], hi: torch.Tensor, lo: torch.Tensor,
                     sites: Sequence[Site]) -> tuple[torch.Tensor, dict[Site, torch.Tensor], dict[Site, torch.Tensor]]:
    """One forward with gradients and one backward: LD [B] = logit(hi) - logit(lo) at the last position,
    each site's activation [B, T, ...] and dLD/d(activation) (same shape; float32; head sites
    [B, T, H, d])."""
    leaves: dict[Site, tuple[torch.Tensor, torch.Tensor]] = {}
    with contextlib.ExitStack() as stack:
        for site in sites:
            def fn(x: torch.Tensor, site: Site = site) -> torch.Tensor:
                z = torch.zeros_like(x, requires_grad=True)
                leaves[site] = (x.detach(), z)
                return x + z
            stack.enter_context(hooks.edit(handle, site, fn))
        with torch.enable_grad():
            logits = handle.model(**inputs, use_cache=False, **keep_logits(handle.model)).logits[:, -1].float()
            r = torch.arange(len(logits), device=logits.device)
            ld = logits[r, hi.to(logits.device)] - logits[r, lo.to(logits.device)]
            grads = torch.autograd.grad(ld.sum(), [leaves[s][1] for s in sites], allow_unused=True)
    acts = {s: leaves[s][0].float() for s in sites}
    return ld.detach(), acts, {s: (torch.zeros_like(acts[s]) if g is None else g.float()) for s, g in zip(sites, grads)}


@torch.no_grad()
def _source(handle: ModelHandle, inputs: dict[str, torch.Tensor], hi: torch.Tensor, lo: torch.Tensor,
            sites: Sequence[Site]) -> tuple[torch.Tensor, dict[Site, torch.Tensor]]:
    with hooks.capture(handle, sites, to_cpu=False) as acts:
        logits = handle.model(**inputs, use_cache=False, **keep_logits(handle.model)).logits[:, -1].float()
    r = torch.arange(len(logits), device=logits.device)
    return logits[r, hi.to(logits.device)] - logits[r, lo.to(logits.device)], {s: a.float() for s, a in acts.items()}


def estimate_batch(handle: ModelHandle, base: dict[str, torch.Tensor], src_ids: torch.Tensor, hi: torch.Tensor,
                   lo: torch.Tensor, configs: Sequence[Site]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(LD_base [B], LD_source [B], estimate [B, T, R]) for the R sites of a sweep (`sweep_configs`) at
    every position: (a_source - a_base) . dLD/da, a head site over its own slice."""
    sites = list(dict.fromkeys(c.module_site for c in configs))
    ld_b, acts_b, grads = metric_gradients(handle, base, hi, lo, sites)
    ld_s, acts_s = _source(handle, {**base, "input_ids": src_ids}, hi, lo, sites)
    contrib = {s: ((acts_s[s] - acts_b[s]) * grads[s]).sum(-1) for s in sites}   # [B, T] or [B, T, H]
    cols = [contrib[c.module_site] if c.head is None else contrib[c.module_site][..., c.head] for c in configs]
    return ld_b.cpu(), ld_s.cpu(), torch.stack(cols, -1).cpu()


def _tidy(enc: EncodedPairs, idx: list[int], W: int, positions: list[int], configs: Sequence[Site], direction: str,
          ld_b: torch.Tensor, ld_s: torch.Tensor, est: torch.Tensor, starts: list[int],
          wanted: list[dict[int, str]] | None) -> pd.DataFrame:
    """Patching's long table (same columns, rows and position names) from one batch's estimates."""
    B, P, R = len(idx), len(positions), len(configs)
    pos = torch.tensor(positions)
    e = est[:, pos, :].numpy().astype(np.float64)                                  # [B, P, R]
    before = np.array(positions)[None, :] < np.array(starts)[:, None]              # exact no-ops
    e[before] = 0.0
    lb = ld_b.numpy().astype(np.float64)[:, None, None]
    ls = ld_s.numpy().astype(np.float64)[:, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        vals = np.stack([np.broadcast_to(lb + e, e.shape), e / (ls - lb), e], -1)  # [B, P, R, 3]
    lengths = np.array([len(enc.low[i]) for i in idx])
    pos_abs = np.array(positions)
    valid = pos_abs[None, :] >= (W - lengths)[:, None]
    names = np.array([[(wanted[b].get(p, "") if wanted is not None else "answer" if p == W - 1 else "")
                       for p in positions] for b in range(B)], dtype=object)
    if wanted is not None:
        valid &= names != ""
    bi, pj, rk, mm = np.meshgrid(np.arange(B), np.arange(P), np.arange(R), np.arange(len(ATP_METRICS)), indexing="ij")
    keep = valid[bi, pj]
    return pd.DataFrame({
        "pair": np.array([enc.ids[i] for i in idx], dtype=object)[bi[keep]],
        "n_low": np.array([enc.n_low[i] for i in idx])[bi[keep]],
        "direction": direction,
        "site": np.array([c.kind for c in configs], dtype=object)[rk[keep]],
        "layer": np.array([str(c.layer) for c in configs], dtype=object)[rk[keep]],
        "position": (pos_abs - W)[pj[keep]],
        "position_name": names[bi[keep], pj[keep]],
        "head": np.array([-1 if c.head is None else c.head for c in configs])[rk[keep]],
        "metric": np.array(ATP_METRICS, dtype=object)[mm[keep]],
        "value": vals[keep],
    }, columns=COLUMNS)


def _batch_tensors(enc: EncodedPairs, idx: list[int], direction: str, device: Any):
    """(base inputs, source ids, padded changed-token starts, hi, lo) of one batch, as exact patching pads."""
    base_seqs, src_seqs = ([enc.low[i] for i in idx], [enc.high[i] for i in idx])
    if direction == "noise":
        base_seqs, src_seqs = src_seqs, base_seqs
    base = pad_left(base_seqs, 0, device)
    src = pad_left(src_seqs, 0, device)["input_ids"]
    W = base["input_ids"].shape[1]
    starts = [W - len(enc.low[i]) + enc.start[i] for i in idx]
    return base, src, starts, torch.tensor([enc.tok_high[i] for i in idx]), torch.tensor([enc.tok_low[i] for i in idx])


def run_atp(handle: ModelHandle, pairs: list[dict], options: AtPOptions | None = None,
            progress: Callable[[int], None] | None = None, log: Callable[[str], None] | None = None,
            kept_ids: Sequence[str] | None = None, kept_fallback: str | None = None) -> AtPResult:
    """AtP estimates of the patching grid of `pairs`: table in `PatchResult.table`'s format, summary.

    `kept_ids` / `kept_fallback`: the pairs an exact patching run kept (and its fallback note), so
    both estimate the same pairs without running the correctness filter again."""
    opts = options or AtPOptions()
    for d in opts.directions:
        if d not in ("denoise", "noise"):
            raise InputError(f"--direction must be denoise, noise or both (got '{d}')")
    if not pairs:
        raise InputError("no pairs to patch")
    t0 = time.perf_counter()
    popts = PatchOptions(sites=opts.sites, layers=opts.layers, directions=opts.directions, filter=opts.filter,
                         k_samples=opts.k_samples, batch_size=opts.batch_size, seed=opts.seed, template=opts.template)
    enc, kept, _, fallback = select_pairs(handle, pairs, popts, "estimated", log, kept_ids)
    fallback = kept_fallback if kept_ids is not None else fallback
    configs = sweep_configs(handle, opts.sites, opts.layers)
    order = sorted(range(len(kept.ids)), key=lambda i: len(kept.low[i]))   # exact patching's batches
    n_sites = len({c.module_site for c in configs})
    per_pair = pair_bytes(handle, max(len(kept.low[i]) for i in order), n_sites)
    bs = max(1, min(opts.batch_size, opts.memory_budget // per_pair))     # the budget, not the batch size, binds
    frames, batches = [], 0
    for direction in opts.directions:
        for i0 in range(0, len(order), bs):
            idx = order[i0:i0 + bs]
            base, src, starts, hi, lo = _batch_tensors(kept, idx, direction, handle.device)
            W = base["input_ids"].shape[1]
            wanted = None
            if opts.positions == "named":
                positions, wanted = resolve_named(kept, idx, W)
            else:
                positions = resolve_positions(opts.positions, W, starts)
            ld_b, ld_s, est = estimate_batch(handle, base, src, hi, lo, configs)
            frames.append(_tidy(kept, idx, W, positions, configs, direction, ld_b, ld_s, est, starts, wanted))
            batches += 1
            if progress:
                progress(len(idx))
    table = pd.concat(frames, ignore_index=True)
    summary = {"method": "atp", "total_pairs": len(pairs), "dropped_misaligned": enc.dropped_misaligned,
               "kept_pairs": len(kept.ids), "filter": opts.filter if fallback is None else "none",
               "filter_requested": opts.filter, "filter_fallback": fallback, "sites": list(opts.sites),
               "positions": opts.positions, "directions": list(opts.directions), "batches": batches,
               "forwards": 2 * batches, "backwards": batches, "pairs_per_batch": bs, "seconds": time.perf_counter() - t0,
               "per_layer": _per_layer(table, opts),
               "top_cells": choose_cells(table, opts.top_k).to_dict("records")}
    return AtPResult(table=table, summary=summary | {"options": opts.model_dump(mode="json")})


def _per_layer(table: pd.DataFrame, opts: AtPOptions) -> list[dict]:
    """Residual stream at the answer position: mean estimated normalised effect per layer with a CI."""
    direction = "denoise" if "denoise" in opts.directions else opts.directions[0]
    t = table[(table.site == "resid") & (table.position == -1) & (table.metric == "normalized")
              & (table.direction == direction)]
    out = []
    for layer in sorted(t.layer.unique(), key=lambda s: -1 if s == "emb" else int(s)):
        mean, lo, hi = bootstrap_ci(t[t.layer == layer].value.to_numpy(), opts.n_boot, opts.seed)
        out.append({"layer": "emb" if layer == "emb" else int(layer), "mean": mean, "ci_low": lo, "ci_high": hi})
    return out


def _direction(table: pd.DataFrame, direction: str | None) -> str:
    if direction is not None:
        return direction
    have = list(dict.fromkeys(table.direction))
    return "denoise" if "denoise" in have else have[0]


def choose_cells(atp: AtPResult | pd.DataFrame, k: int, metric: str = "delta_ld",
                 direction: str | None = None) -> pd.DataFrame:
    """The k cells (site, layer, head, position) most worth patching exactly: largest mean |estimate|
    over pairs (per pair, so cells whose effect changes sign between pairs are not averaged away).
    Columns: the cell, atp_abs_mean, atp_mean, n_pairs, rank (1 = first)."""
    table = atp.table if isinstance(atp, AtPResult) else atp
    t = table[(table.metric == metric) & (table.direction == _direction(table, direction))]
    g = t.assign(abs_value=t.value.abs()).groupby(CELL, sort=False)
    cells = pd.DataFrame({"atp_abs_mean": g.abs_value.mean(), "atp_mean": g.value.mean(),
                          "n_pairs": g.value.size()}).reset_index()
    cells = cells.sort_values(["atp_abs_mean", "site", "layer", "head", "position"], ascending=[False, True, True,
                                                                                                True, True])
    cells = cells.head(k).reset_index(drop=True)
    cells["rank"] = np.arange(1, len(cells) + 1)
    return cells


def _merged(atp_table: pd.DataFrame, exact_table: pd.DataFrame, metric: str, direction: str | None) -> pd.DataFrame:
    """Per (pair, cell) rows of both tables: value_atp, value_exact."""
    direction = _direction(exact_table, direction)
    key = ["pair", *CELL]
    a = atp_table[(atp_table.metric == metric) & (atp_table.direction == direction)][[*key, "value"]]
    e = exact_table[(exact_table.metric == metric) & (exact_table.direction == direction)][[*key, "value"]]
    m = a.merge(e, on=key, suffixes=("_atp", "_exact"))
    if m.empty:
        raise ValueError(f"the AtP and exact tables share no (pair, cell) for metric {metric!r}, direction {direction!r}")
    return m


def _no_op(a: pd.Series, b: pd.Series) -> pd.Series:
    """Structural no-ops: exactly 0 in both tables (a position before the pair's changed token, a site
    nothing downstream reads); they say nothing about AtP and would inflate a rank correlation."""
    return (a == 0) & (b == 0)


def _ranks(cells: pd.DataFrame, by: pd.Series | None) -> pd.DataFrame:
    """|value| ranks (1 = largest) of the atp and exact columns, within `by` groups (None: overall)."""
    def rank(col: str) -> pd.Series:
        s = cells[col].abs()
        return s.rank(ascending=False, method="min") if by is None else \
            s.groupby(by).rank(ascending=False, method="min")
    return cells.assign(rank_atp=rank("atp"), rank_exact=rank("exact"))


def cell_table(atp_table: pd.DataFrame, exact_table: pd.DataFrame, metric: str = "normalized",
               direction: str | None = None) -> pd.DataFrame:
    """Per cell: the mean AtP estimate and the mean exact effect over the pairs both tables hold there
    (merged per pair), n_pairs, and the |value| ranks within the site kind; cells that are a
    structural no-op for every pair are left out."""
    m = _merged(atp_table, exact_table, metric, direction)
    cells = m.groupby(CELL, sort=False).agg(atp=("value_atp", "mean"), exact=("value_exact", "mean"),
                                            n_pairs=("value_atp", "size")).reset_index()
    cells = cells[~_no_op(cells.atp, cells.exact)].reset_index(drop=True)
    return _ranks(cells, cells.site)


def _corr(x: pd.Series, y: pd.Series, method: str) -> float:
    if len(x) < 3 or x.nunique() < 2 or y.nunique() < 2:
        return math.nan
    return float(x.corr(y, method=method))


def compare(atp_table: pd.DataFrame, exact_table: pd.DataFrame, metric: str = "normalized",
            direction: str | None = None, top: int = 10) -> pd.DataFrame:
    """How well AtP reproduces exact patching: one row per site kind, and "all".

    pearson / spearman: over the (pair, cell) rows, each one patch experiment, the structural
    no-ops (0 in both tables) left out. pearson_cells / spearman_cells: over the cells' means
    (`cell_table`). recall_at_top: the share of exact patching's `top` cells (by |mean|) that are
    among AtP's `top`. misranked: the `top` cells with the largest gap between their AtP and exact
    ranks, among the cells in either top `top` (list of dicts; exact rank far above the AtP rank =
    a cell AtP would miss)."""
    pairs = _merged(atp_table, exact_table, metric, direction)
    pairs = pairs[~_no_op(pairs.value_atp, pairs.value_exact)]
    cells = cell_table(atp_table, exact_table, metric, direction)
    rows = []
    for site in [*dict.fromkeys(cells.site), "all"]:
        c = _ranks(cells, None) if site == "all" else cells[cells.site == site]
        p = pairs if site == "all" else pairs[pairs.site == site]
        top_a, top_e = c.rank_atp <= top, c.rank_exact <= top
        cand = c[top_a | top_e]
        cand = cand.assign(gap=(cand.rank_atp - cand.rank_exact).abs()).sort_values("gap", ascending=False).head(top)
        rows.append({"site": site, "n_cells": len(c), "n_rows": len(p),
                     "pearson": _corr(p.value_atp, p.value_exact, "pearson"),
                     "spearman": _corr(p.value_atp, p.value_exact, "spearman"),
                     "pearson_cells": _corr(c.atp, c.exact, "pearson"),
                     "spearman_cells": _corr(c.atp, c.exact, "spearman"),
                     "recall_at_top": float((top_a & top_e).sum() / max(1, top_e.sum())),
                     "misranked": [{"cell": f"{r.site}.{r.layer}" + ("" if r.head < 0 else f".{r.head}") + f"@{r.position}",
                                    "atp": float(r.atp), "exact": float(r.exact), "rank_atp": int(r.rank_atp),
                                    "rank_exact": int(r.rank_exact)} for r in cand.itertuples()]})
    return pd.DataFrame(rows)
