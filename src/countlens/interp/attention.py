"""Attention to the items: which heads look at the list words that match the category.

Counting "fruit" in "apple chair pear" needs, somewhere, a read of which words are fruit; the
obvious candidates are heads that attend from the answer position (the token that predicts the
digit) to the matching words and not to the others. Per layer and query head this module
measures, from two kinds of query position:

  answer   the answer position, to every list word
  items    each list word's last token, to the words before it (a running count would read
           its predecessors there); averaged over the example's words 2..K

how much attention goes to MATCHING and to NON-MATCHING list words. A word's weight is the sum
over its tokens (`match_sum`, `nonmatch_sum`; `other_sum` is everything else: BOS, the
instruction, the word itself; `total` is the sum over every source token, 1 for raw attention).
Sums grow with the number of words of each kind, so a head that attends uniformly would look
"matching" in lists with many matches; the per-word means (`match_mean = match_sum / #matching
words`, likewise `nonmatch_mean`) and their difference `diff_mean` (the ranking measure) do not
have that confound. `diff_sum` is the difference of the sums. The per-word means are taken over
the examples (and item queries) that have words of both kinds, so that in the table diff_mean =
match_mean - nonmatch_mean.

Raw attention says where a head looks, not what it moves: a head can attend to a word whose value
vector it then writes with ~zero norm. The value-weighted version (Kobayashi et al. 2020,
"Attention is not only a weight") weights each source token j by ||v_j W_O^h||, the norm of what
head h writes from j; `weighting` is "attention" or "value" in the table. Value vectors are not
visible in any hooked tensor (the output projection's input is sum_j a_ij v_j), so each attention
module is called again, on its own, with the call it had in the forward and a self-only mask
(`hooks.record_attention_calls`): then softmax puts weight 1 on the diagonal and the output
projection's input is v_j itself, the model's own value path (biases, GQA sharing, partial rotary
and soft-capping leave v untouched), generic over architectures. ||v_j W_O^h|| uses head h's rows
of the output projection's matrix (read by calling it on the identity, minus its bias). On Gemma
the norm is before the post-attention norm.

Attention weights need eager attention (SDPA does not return them): the model is switched to
eager for this stage only and switched back afterwards, also when the stage raises. Weights are
[batch, query heads, T, T] also on GQA models. Every statistic is a mean over examples with a
bootstrap 95 % CI (`cellstats.bootstrap_cells`); differences are bootstrapped per example
(paired), not from the two separate intervals.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from countlens.options import AttentionOptions  # noqa: F401  (the options live with the others)
from countlens.interp.acts import PromptRow
from countlens.results import AttentionResult
from countlens.interp.cellstats import bootstrap_cells
from countlens.models import devices, hooks
from countlens.models.encoding import PromptEncoding, encode_prompt
from countlens.models.handle import ModelHandle, pad_left
from countlens.sites import Site

QUERIES = ("answer", "items")
WEIGHTINGS = ("attention", "value")
MEASURES = ("match_sum", "nonmatch_sum", "other_sum", "total", "match_mean", "nonmatch_mean", "diff_sum",
            "diff_mean")
RANK_MEASURE = "diff_mean"


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """The model with eager attention inside the block, its previous implementation restored after
    (also on an exception)."""
    previous = model.config._attn_implementation
    if previous != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if model.config._attn_implementation != previous:
            model.set_attn_implementation(previous)


def _self_only(mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """An attention mask in the format of `mask` under which each position sees only itself."""
    B, T = x.shape[:2]
    if mask is not None and mask.shape[-1] != T:
        raise ValueError(f"value vectors need a forward without a cache (mask over {mask.shape[-1]} keys, {T} queries)")
    eye = torch.eye(T, dtype=torch.bool, device=x.device)
    if mask is not None and mask.dtype == torch.bool:
        return eye.expand(B, 1, T, T)
    dtype = mask.dtype if mask is not None else x.dtype
    out = torch.full((B, 1, T, T), torch.finfo(dtype).min, dtype=dtype, device=x.device)
    return out.masked_fill(eye, 0.0)


def out_matrix(out_proj: torch.nn.Module) -> torch.Tensor:
    """The output projection as a matrix [H*d, D] (its bias removed), read by calling it on the identity,
    so Linear and GPT-2's Conv1D take the same path."""
    p = next(out_proj.parameters())
    eye = torch.eye(_in_features(out_proj), dtype=p.dtype, device=devices.execution_device(out_proj))
    return out_proj(eye) - out_proj(torch.zeros_like(eye[:1]))


def _in_features(out_proj: torch.nn.Module) -> int:
    if hasattr(out_proj, "in_features"):
        return out_proj.in_features
    return out_proj.weight.shape[0]  # GPT-2's Conv1D keeps [in, out]


def _head_write_norms(W: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """||v_j W_O^h|| for v [B, T, H, d] and W [H*d, D] -> [B, H, T]: head h's slice of W alone."""
    H, d = v.shape[2], v.shape[3]
    written = torch.einsum("bthd,hdo->btho", v.to(W.dtype), W.view(H, d, -1))
    return written.norm(dim=-1).permute(0, 2, 1)


@torch.no_grad()
def forward_attention(handle: ModelHandle, batch: dict[str, torch.Tensor], value_vectors: bool = True
                      ) -> tuple[torch.Tensor, dict[int, torch.Tensor] | None]:
    """Attention weights [L, B, H, T, T] of one batch (eager attention must be on) and, with
    `value_vectors`, each layer's value vectors {layer: [B, T, H, d]} (query heads; GQA repeated).

    The values come from calling each attention module again, on its own, with the call it had in
    the forward (`hooks.record_attention_calls`) and a self-only mask: softmax over one key is 1, so
    the output projection's input at position j is v_j. Only the attention modules run twice."""
    layers = list(range(handle.n_layers))
    with contextlib.ExitStack() as stack:
        calls = stack.enter_context(hooks.record_attention_calls(handle, layers)) if value_vectors else {}
        out = handle.model(**batch, output_attentions=True, use_cache=False)
    if out.attentions is None or len(out.attentions) != handle.n_layers or out.attentions[0] is None:
        raise RuntimeError("the model returned no attention weights under eager attention")
    weights = torch.stack([a.float() for a in out.attentions])
    del out
    if not value_vectors:
        return weights, None
    sites = [Site("head", layer) for layer in layers]
    with hooks.capture(handle, sites, to_cpu=False) as values:
        for layer in layers:
            args, kwargs = calls.pop(layer)
            x = args[0] if args else kwargs["hidden_states"]
            hooks.attention_module(handle.blocks[layer])(
                *args, **{**kwargs, "attention_mask": _self_only(kwargs.get("attention_mask"), x)})
    return weights, {s.layer: values[s] for s in sites}


@torch.no_grad()
def write_norms(handle: ModelHandle, values: dict[int, torch.Tensor],
                matrices: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """||v_j W_O^h|| [L, B, H, T] from `forward_attention`'s value vectors (`matrices`: each layer's
    `out_matrix`, computed here when not given)."""
    mats = matrices or {layer: out_matrix(hooks.out_proj_module(handle.blocks[layer])) for layer in values}
    return torch.stack([_head_write_norms(mats[layer], values[layer]).float() for layer in range(handle.n_layers)])


def _groups(enc: PromptEncoding, match: Sequence[int], pad: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[K, T] masks: tokens of word k (padded coordinates), split by match flag -> (matching, non-matching)."""
    K = len(enc.words)
    tok = torch.zeros(K, T, dtype=torch.bool)
    for k, (s, e) in enumerate(enc.words):
        tok[k, pad + s:pad + e] = True
    m = torch.tensor([bool(x) for x in match])
    return tok & m[:, None], tok & ~m[:, None]


def _measures(w: torch.Tensor, gm: torch.Tensor, gn: torch.Tensor, n_m: torch.Tensor, n_n: torch.Tensor
              ) -> torch.Tensor:
    """w [L, H, Q, T] weights of Q queries; gm/gn [Q, T] matching / non-matching source tokens of each
    query; n_m/n_n [Q] their word counts -> [L, H, Q, len(MEASURES)]."""
    ms = (w * gm).sum(-1)
    ns = (w * gn).sum(-1)
    total = w.sum(-1)
    nan = torch.tensor(float("nan"))
    both = (n_m > 0) & (n_n > 0)  # per-word means only where both kinds exist, so diff_mean = their difference
    mm = torch.where(both, ms / n_m.clamp(min=1), nan)
    nm = torch.where(both, ns / n_n.clamp(min=1), nan)
    return torch.stack([ms, ns, total - ms - ns, total, mm, nm, ms - ns, mm - nm], -1)


def example_measures(weights: torch.Tensor, norms: torch.Tensor | None, enc: PromptEncoding,
                     match: Sequence[int], pad: int) -> np.ndarray:
    """One example's measures [len(QUERIES), len(WEIGHTINGS), L, H, len(MEASURES)] (value: NaN without
    norms) from its weights [L, H, T, T] and norms [L, H, T] in padded coordinates (`pad` tokens left)."""
    L, H, T, _ = weights.shape
    gm_w, gn_w = _groups(enc, match, pad, T)            # [K, T] per word
    m = torch.tensor([bool(x) for x in match])
    K = len(enc.words)
    out = np.full((len(QUERIES), len(WEIGHTINGS), L, H, len(MEASURES)), np.nan)
    # answer: one query, every list word
    q_answer = torch.tensor([pad + enc.answer])
    gm_a, gn_a = gm_w.any(0, keepdim=True), gn_w.any(0, keepdim=True)
    n_a = (m.sum().view(1).float(), (~m).sum().view(1).float())
    # items: the last token of words 1..K-1, each to the words before it
    q_items = torch.tensor([pad + e - 1 for _, e in enc.words[1:]], dtype=torch.long)
    before = torch.tril(torch.ones(K, K, dtype=torch.bool), diagonal=-1)[1:]          # [K-1, K]: words < k
    gm_i = (before.float() @ gm_w.float()) > 0
    gn_i = (before.float() @ gn_w.float()) > 0
    n_i = ((before & m).sum(-1).float(), (before & ~m).sum(-1).float())
    for qi, (q, gm, gn, (n_m, n_n)) in enumerate(((q_answer, gm_a, gn_a, n_a), (q_items, gm_i, gn_i, n_i))):
        if len(q) == 0:
            continue
        for wi, w in enumerate((weights[:, :, q, :], None if norms is None else weights[:, :, q, :] * norms[:, :, None, :])):
            if w is None:
                continue
            vals = _measures(w, gm, gn, n_m, n_n)                       # [L, H, Q, M]
            out[qi, wi] = torch.nanmean(vals, dim=2).numpy() if len(q) > 1 else vals[:, :, 0].numpy()
    return out


def run_attention(handle: ModelHandle, rows: Sequence[PromptRow], options: AttentionOptions | None = None,
                  progress: Callable[[int], None] | None = None) -> AttentionResult:
    """Attention (and value-weighted attention) to matching vs non-matching words per layer and head.

    `rows` come from `acts.read_rows` (their templates and match flags); no file is read or written.
    """
    opts = options or AttentionOptions()
    if not rows:
        raise ValueError("no examples")
    encs = [encode_prompt(handle, r.template, r.category, r.words) for r in rows]
    per_example: list[np.ndarray] = []
    mats = {layer: out_matrix(hooks.out_proj_module(handle.blocks[layer])) for layer in range(handle.n_layers)} \
        if opts.value_weighted else None
    with eager_attention(handle.model), torch.no_grad():
        for i0 in range(0, len(rows), opts.batch_size):
            idx = list(range(i0, min(len(rows), i0 + opts.batch_size)))
            batch = pad_left([encs[i].ids for i in idx], handle.pad_id, handle.device)
            W = batch["input_ids"].shape[1]
            weights, values = forward_attention(handle, batch, opts.value_weighted)
            weights, norms = weights.cpu(), None if values is None else write_norms(handle, values, mats).cpu()
            for j, i in enumerate(idx):
                per_example.append(example_measures(weights[:, j], None if norms is None else norms[:, j], encs[i],
                                                    rows[i].match, W - len(encs[i].ids)))
            if progress:
                progress(len(idx))
    values = np.stack(per_example)                                         # [N, Q, W, L, H, M]
    table = _table(values, opts)
    return AttentionResult(table=table, summary=summarize(table, len(rows), opts) | {"options": opts.model_dump()})


def _table(values: np.ndarray, opts: AttentionOptions) -> pd.DataFrame:
    N, Q, Wt, L, H, M = values.shape
    flat = values.reshape(N, -1)
    keep = np.isfinite(flat).any(0)
    mean, lo, hi = np.full(flat.shape[1], np.nan), np.full(flat.shape[1], np.nan), np.full(flat.shape[1], np.nan)
    mean[keep], lo[keep], hi[keep] = bootstrap_cells(flat[:, keep], opts.n_boot, opts.seed)
    qi, wi, li, hi_, mi = np.meshgrid(np.arange(Q), np.arange(Wt), np.arange(L), np.arange(H), np.arange(M),
                                      indexing="ij")
    table = pd.DataFrame({
        "query": np.array(QUERIES, dtype=object)[qi.ravel()],
        "weighting": np.array(WEIGHTINGS, dtype=object)[wi.ravel()],
        "layer": li.ravel(), "head": hi_.ravel(),
        "measure": np.array(MEASURES, dtype=object)[mi.ravel()],
        "mean": mean, "ci_low": lo, "ci_high": hi, "n": np.isfinite(flat).sum(0)})
    return table[keep].reset_index(drop=True)


def summarize(table: pd.DataFrame, n_examples: int, opts: AttentionOptions) -> dict:
    """Top heads by matching-minus-non-matching per-word attention from the answer position, with CIs,
    raw and value-weighted."""
    def top(weighting: str) -> list[dict]:
        t = table[(table["query"] == "answer") & (table.weighting == weighting) & (table.measure == RANK_MEASURE)]
        t = t.sort_values("mean", ascending=False).head(opts.top_k)
        side = table[(table["query"] == "answer") & (table.weighting == weighting)].set_index(
            ["layer", "head", "measure"])["mean"]
        return [{"layer": int(r.layer), "head": int(r.head), "diff": float(r.mean), "ci_low": float(r.ci_low),
                 "ci_high": float(r.ci_high), "match_mean": float(side.get((r.layer, r.head, "match_mean"), np.nan)),
                 "nonmatch_mean": float(side.get((r.layer, r.head, "nonmatch_mean"), np.nan)),
                 "n": int(r.n)} for r in t.itertuples()]

    return {"n_examples": n_examples, "measure": RANK_MEASURE, "query": "answer",
            "interval": "bootstrap 95% over examples (paired for differences)",
            "top_heads": top("attention"),
            "top_heads_value": top("value") if opts.value_weighted else []}
