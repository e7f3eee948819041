"""Direct logit attribution at the answer position: which heads and MLPs write the count's logit?

The metric is "logit of the true count minus the mean of the other count logits" (count tokens
0..K). The residual at the answer position after the last block is a sum: the embedding plus, per
block, what its attention and its MLP add. With the final norm's scale frozen at its value on the
clean run (the standard DLA approximation: a component's real effect also moves that scale), the
norm is linear, so the metric splits exactly over the components:

  emb              the residual entering block 0 (token + position embeddings, Gemma's sqrt(d) scale)
  head.L.H         head H's output through the output projection: head_H @ W_O[:, H-slice]
  attn bias.L      the output projection's bias (GPT-2, GPT-NeoX): it belongs to no head
  mlp.L            the MLP's output (its own biases included)
  final norm bias  a LayerNorm's bias b . (W_U[true] - mean W_U[other]) (GPT-2, GPT-NeoX)
  unembed bias     the unembedding's bias, where it has one

A LayerNorm's mean-centring is linear, so it is folded into every component (each is centred),
not a term of its own. Remainders are reported, never dropped:

  remainder: attn.L   the attention sub-layer's output minus its heads and bias. On sandwich-norm
                      models (Gemma 2/3: a norm after the attention) the sub-layer output is that
                      post-norm's output; its split over heads is not linear, so heads go through
                      the post-norm with its scale frozen too (exact up to rounding with that
                      freeze; the term measures what is left)
  remainder: block.L  the block's residual increment minus its attention and MLP sub-layer outputs
                      (zero up to rounding on every architecture we know; large on one we do not)
  remainder: final logit soft-cap   Gemma 2's cap * tanh(logit / cap): the components add up to the
                      pre-cap metric, this is the capped metric minus the pre-cap one

so emb + heads + biases + MLPs + remainders == the model's own metric, row by row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from countlens.options import DLAOptions  # noqa: F401  (the options live with the others)
from countlens.errors import InputError
from countlens.results import DLAResult
from countlens.interp.acts import PromptRow, forward
from countlens.interp.lens import FrozenNorm, Readout, count_token_ids, describe_norm, num
from countlens.models import devices, hooks
from countlens.models.encoding import encode_prompt
from countlens.models.handle import ModelHandle, pad_left
from countlens.sites import Site, layer_key
from countlens.stats import bootstrap_cells

TABLE_COLUMNS = ["component", "kind", "layer", "head", "mean", "ci_low", "ci_high", "n"]
METRIC = "logit(true count) - mean logit(other counts 0..K) at the answer position"


# ----------------------------------------------------------------------------------- architecture

@dataclass
class _Block:
    """How one decoder block writes to the residual, read off its modules."""

    W_O: torch.Tensor                      # [n_heads, head_dim, d]: head h's slice of the output projection
    attn_bias: torch.Tensor | None         # [d]
    post_attn: torch.nn.Module | None      # sandwich norms (Gemma 2/3): the norm after the attention
    post_mlp: torch.nn.Module | None       # ... and after the MLP
    post_attn_frozen: FrozenNorm | None


def _block(block: torch.nn.Module, n_heads: int) -> _Block:
    proj = hooks.out_proj_module(block)
    W = devices.weight(proj)
    # nn.Linear stores [out, in]; GPT-2's Conv1D stores [in, out] (and has `nf`, its out size)
    W_in_out = W if hasattr(proj, "nf") else W.T
    sandwich = hasattr(block, "post_feedforward_layernorm")
    post_attn = block.post_attention_layernorm if sandwich else None
    return _Block(W_O=W_in_out.reshape(n_heads, -1, W_in_out.shape[-1]),
                  attn_bias=devices.weight(proj, "bias"),
                  post_attn=post_attn, post_mlp=block.post_feedforward_layernorm if sandwich else None,
                  post_attn_frozen=describe_norm(post_attn) if sandwich else None)


def _components(n_heads: int, blocks: list[_Block], readout: Readout) -> list[tuple[str, str, str, int]]:
    """(component, kind, layer, head) in the order of `_attribute`'s columns."""
    out = [("emb", "emb", "emb", -1)]
    for layer, b in enumerate(blocks):
        out += [(f"head.{layer}.{h}", "head", str(layer), h) for h in range(n_heads)]
        if b.attn_bias is not None:
            out.append((f"attn bias.{layer}", "attn bias", str(layer), -1))
        out.append((f"remainder: attn.{layer}", "remainder", str(layer), -1))
        out.append((f"mlp.{layer}", "mlp", str(layer), -1))
        out.append((f"remainder: block.{layer}", "remainder", str(layer), -1))
    if readout.frozen.bias is not None:
        out.append(("final norm bias", "final norm bias", "final", -1))
    if readout.bias is not None:
        out.append(("unembed bias", "unembed bias", "final", -1))
    if readout.softcap is not None:
        out.append(("remainder: final logit soft-cap", "remainder", "final", -1))
    return out


def _metric(logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """logit[true] - mean of the other count logits, per row (logits [B, K+1])."""
    k1 = logits.shape[-1]
    true = logits.gather(-1, answers[:, None])[:, 0]
    return true - (logits.sum(-1) - true) / (k1 - 1)


def _attribute(got: dict[Site, torch.Tensor], blocks: list[_Block], readout: Readout, W_count: torch.Tensor,
               b_count: torch.Tensor | None, answers: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, C] attribution of every component (columns as `_components`) for one batch."""
    resid = [got[Site("resid", layer)][:, 0].to(dtype) for layer in ["emb", *range(len(blocks))]]
    k1 = W_count.shape[1]
    onehot = torch.nn.functional.one_hot(answers, k1).to(dtype)
    coef = onehot - (1 - onehot) / (k1 - 1)                                      # metric = logits @ coef
    u = torch.einsum("bk,bkd->bd", coef, W_count.to(dtype))                      # [B, d]
    fn = readout.frozen
    scale = fn.scale(resid[-1])                                                  # frozen at the clean run
    w = fn.fold(u, scale)                                                        # c . w == N_lin(c) . u
    cols = [(resid[0] * w).sum(-1, keepdim=True)]
    for layer, b in enumerate(blocks):
        head = got[Site("head", layer)][:, 0].to(dtype)                          # [B, H, head_dim]
        attn = got[Site("attn", layer)][:, 0]
        mlp = got[Site("mlp", layer)][:, 0]
        if b.post_attn is not None:
            attn_out = b.post_attn(attn).to(dtype)
            w_heads = b.post_attn_frozen.fold(w, b.post_attn_frozen.scale(attn.to(dtype)))
        else:
            attn_out, w_heads = attn.to(dtype), w
        mlp_out = (b.post_mlp(mlp) if b.post_mlp is not None else mlp).to(dtype)
        heads = torch.einsum("bhk,hkd,bd->bh", head, b.W_O.to(head.device, dtype), w_heads)
        attn_m = (attn_out * w).sum(-1, keepdim=True)
        parts = [heads]
        explained = heads.sum(-1, keepdim=True)
        if b.attn_bias is not None:
            bias = (b.attn_bias.to(head.device, dtype) * w_heads).sum(-1, keepdim=True)
            parts.append(bias)
            explained = explained + bias
        delta = resid[layer + 1] - resid[layer]
        parts += [attn_m - explained, (mlp_out * w).sum(-1, keepdim=True),
                  ((delta - attn_out - mlp_out) * w).sum(-1, keepdim=True)]
        cols += parts
    if fn.bias is not None:
        cols.append((fn.bias.to(u) * u).sum(-1, keepdim=True))
    if readout.bias is not None:
        cols.append((b_count.to(dtype) * coef).sum(-1, keepdim=True))
    if readout.softcap is not None:
        z = torch.einsum("bd,bkd->bk", fn(resid[-1]), W_count.to(dtype))
        if b_count is not None:
            z = z + b_count.to(dtype)
        cols.append((_metric(readout.cap(z), answers) - _metric(z, answers))[:, None])
    return torch.cat(cols, -1)


# ----------------------------------------------------------------------------------------------- run

class Attribution:
    """Direct logit attribution accumulated batch by batch from captured forwards: `sites` are what a
    forward must capture (the answer position first), `consume` attributes one batch, `result` the
    table and summary. `run_dla` drives it with forwards of its own; the study lets the logit lens's
    forwards feed it (`lens.run_lens(..., also=...)`)."""

    def __init__(self, handle: ModelHandle, rows: Sequence[PromptRow], options: DLAOptions | None = None):
        self.opts = opts = options or DLAOptions()
        if not rows:
            raise InputError("no rows for direct logit attribution")
        self.k_max = k_max = max(r.answer for r in rows) if opts.k_max is None else opts.k_max
        if k_max < 1 or max(r.answer for r in rows) > k_max:
            raise InputError(f"k_max {k_max}: need 1 <= k_max and every answer <= k_max")
        self.handle, self.rows = handle, list(rows)
        H = hooks.n_heads(handle.model)
        self.readout = Readout.of(handle)
        self.blocks = [_block(b, H) for b in handle.blocks]
        self.comps = _components(H, self.blocks, self.readout)
        self.count_ids = count_token_ids(handle, [r.template.answer_prefix for r in rows], k_max)
        self.sites = [Site("resid", "emb"), *[Site(kind, layer) for layer in range(handle.n_layers)
                                              for kind in ("resid", "attn", "mlp", "head")]]
        self.dtype = torch.float32 if handle.device.type == "mps" else torch.float64
        self.values = np.zeros((len(rows), len(self.comps)))
        self.own = np.zeros(len(rows))

    @torch.inference_mode()
    def consume(self, got: dict[Site, torch.Tensor], output: Any, idx: list[int]) -> None:
        """Attribute one batch: `got` holds every site at the answer position first ([B, P, ...]),
        `output` the forward's output (logits at the answer position), rows `idx` of `rows`."""
        readout, device = self.readout, self.handle.device
        answers = torch.tensor([self.rows[j].answer for j in idx], device=device)
        cid = self.count_ids[idx].to(readout.weight.device)
        W_count = readout.weight[cid].to(device)
        b_count = None if readout.bias is None else readout.bias[cid].to(device)
        self.values[idx] = _attribute(got, self.blocks, readout, W_count, b_count, answers, self.dtype).cpu().numpy()
        logits = output.logits[:, -1].gather(1, cid.to(output.logits.device)).to(self.dtype)
        self.own[idx] = _metric(logits, answers.to(logits.device)).cpu().numpy()

    def result(self) -> DLAResult:
        comps, opts = self.comps, self.opts
        mean, lo, hi = bootstrap_cells(self.values, opts.n_boot, opts.seed)
        table = pd.DataFrame({"component": [c[0] for c in comps], "kind": [c[1] for c in comps],
                              "layer": [c[2] for c in comps], "head": np.array([c[3] for c in comps], dtype=np.int64),
                              "mean": mean, "ci_low": lo, "ci_high": hi,
                              "n": np.full(len(comps), len(self.rows), dtype=np.int64)}, columns=TABLE_COLUMNS)
        return DLAResult(table=table, summary=_summary(table, self.values, self.own, self.handle, self.k_max, opts))


@torch.inference_mode()
def run_dla(handle: ModelHandle, rows: Sequence[PromptRow], options: DLAOptions | None = None) -> DLAResult:
    """Direct logit attribution of the count metric at the answer position (no file I/O): every
    head, MLP, the embedding and the bias and remainder terms, which sum to the model's own metric."""
    acc = Attribution(handle, rows, options)
    ids = [encode_prompt(handle, r.template, r.category, r.words).ids for r in rows]
    order = sorted(range(len(rows)), key=lambda i: len(ids[i]))
    for i in range(0, len(order), acc.opts.batch_size):
        idx = order[i:i + acc.opts.batch_size]
        batch = pad_left([ids[j] for j in idx], handle.pad_id, handle.device)
        with hooks.capture(handle, acc.sites, positions=-1, to_cpu=False) as got:   # the answer is the last token
            out = forward(handle, batch)
        acc.consume(got, out, idx)
    return acc.result()


def _summary(table: pd.DataFrame, values: np.ndarray, own: np.ndarray, handle: ModelHandle, k_max: int,
             opts: DLAOptions) -> dict:
    mean, lo, hi = bootstrap_cells(own[:, None], opts.n_boot, opts.seed)

    def top(kind: str) -> list[dict]:
        t = table[table.kind == kind].sort_values("mean", ascending=False).head(opts.top)
        return [{"component": r.component, "layer": int(r.layer), "head": int(r.head) if r.head >= 0 else None,
                 "mean": num(r.mean), "ci_low": num(r.ci_low), "ci_high": num(r.ci_high)} for r in t.itertuples()]

    rem = table.kind == "remainder"
    blocks = table[table.layer.isin([str(x) for x in range(handle.n_layers)])]
    per_layer = []
    for layer in sorted(set(blocks.layer), key=layer_key):
        t = blocks[blocks.layer == layer]
        per_layer.append({"layer": int(layer),
                          "heads": num(t[t.kind == "head"]["mean"].sum()),
                          "attn": num(t[t.kind.isin(["head", "attn bias"])]["mean"].sum()),
                          "mlp": num(t[t.kind == "mlp"]["mean"].sum())})
    return {
        "stage": "dla", "model": handle.name, "n_rows": len(own), "k_max": k_max, "metric": METRIC,
        "total": {"mean": num(mean[0]), "ci_low": num(lo[0]), "ci_high": num(hi[0]),
                  "what": "the model's own metric from its logits"},
        "sum_of_components": num(values.sum(1).mean()),
        "max_abs_sum_error": num(np.abs(values.sum(1) - own).max()),
        "remainder_share": num(table[rem]["mean"].abs().sum() / max(table["mean"].abs().sum(), 1e-30)),
        "remainder_share_definition": "sum of |mean| of the remainder terms / sum of |mean| of every term",
        "top_heads": top("head"), "top_mlps": top("mlp"), "per_layer": per_layer,
        "intervals": f"percentile bootstrap 95% over rows ({opts.n_boot})",
        "note": "the final norm's scale (and a sandwich post-norm's) is frozen at its clean-run value: direct "
                "effects only, not what removing a component would do",
        "options": opts.model_dump(mode="json"),
    }
