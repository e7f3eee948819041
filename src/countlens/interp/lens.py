"""Logit lens on the count tokens: at which layer can the model's own readout already name the count?

Probes say where the count is *decodable* by a classifier fitted for it; the logit lens asks whether
it is *read out*: each layer's residual (emb, 0..L-1) goes through the model's own final norm and
unembedding, restricted to the count tokens 0..K (the tokens that follow the answer prefix "(").
At the answer position the truth is the final count, at each list word's last token the running
count so far. Per layer x position:

  accuracy    argmax over the count tokens == the truth (Wilson 95 % interval)
  p_correct   P(truth) under a softmax over the count tokens only (not the full vocabulary), mean
              with a percentile bootstrap interval over rows
  rank        rank of the truth among the count tokens (1 = top; ties count for the truth), mean
              with a bootstrap interval

The last layer's lens logits are the model's own logits restricted to the count tokens (final
logit soft-capping, Gemma 2, is applied too); `summary["last_layer_max_abs_diff"]` measures it.
The logit lens is biased at early layers (their basis is not yet the unembedding's), so early
layers read low even where a probe decodes the count; a tuned lens (Belrose et al. 2023) is the
fix, and none has been trained for our models.

`direction_alignment` compares the probes stage's count directions with the digits' readout
directions (the unembedding rows with the final norm's gain folded in). The helpers for the final
norm and unembedding here (`Readout`, `FrozenNorm`) are shared with direct logit attribution.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from countlens.options import LensOptions  # noqa: F401  (the options live with the others)
from countlens.errors import InputError
from countlens.results import LensResult
from countlens.interp.acts import PromptRow, batches, encode_batch, forward, locate
from countlens.interp.directions import Directions
from countlens.models import devices
from countlens.models.handle import ModelHandle
from countlens.models.hooks import capture
from countlens.sites import Site, every_layer, layer_key, parse_layer
from countlens.stats import bootstrap_cells, interval_label, wilson_ci

TABLE_COLUMNS = ["layer", "position", "metric", "value", "ci_low", "ci_high", "n"]
ALIGNMENT_COLUMNS = ["layer", "direction", "readout", "cosine"]
BIAS_NOTE = ("The logit lens reads every layer in the final layer's basis, so it is biased at early layers: "
             "a low early-layer lens accuracy does not mean the count is absent (compare the probes). A tuned "
             "lens (Belrose et al. 2023, a learned affine map per layer) is the fix; none exists for our models.")


# ------------------------------------------------------------------------------------- the readout

@dataclass(frozen=True)
class FrozenNorm:
    """A final (or sandwich) norm written as (x - [mean x]) * scale(x) * gain + bias.

    With `scale` frozen at its value on the clean run the norm is linear in x, which is what lets
    direct logit attribution split the logits exactly over the components of the residual.
    `center` is LayerNorm's mean subtraction (RMS norms have none).
    """

    center: bool
    gain: torch.Tensor            # [d]: w, 1 + w (Gemma's convention) or ones
    bias: torch.Tensor | None     # [d] (LayerNorm) or None
    eps: float

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """[..., 1]: the factor the norm multiplies (centred) x by."""
        xc = x - x.mean(-1, keepdim=True) if self.center else x
        return torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + self.eps)

    def linear(self, c: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The norm's linear part with `scale` frozen: (c - [mean c]) * scale * gain (no bias)."""
        cc = c - c.mean(-1, keepdim=True) if self.center else c
        return cc * scale * self.gain.to(c)

    def fold(self, u: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """w with c . w == linear(c, scale) . u for every c (u [..., d], scale [..., 1])."""
        w = u * scale * self.gain.to(u)
        return w - w.mean(-1, keepdim=True) if self.center else w

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x, self.scale(x))
        return out if self.bias is None else out + self.bias.to(out)


def describe_norm(norm: torch.nn.Module) -> FrozenNorm:
    """Read a norm module as a `FrozenNorm`: nn.LayerNorm by its type; an RMS norm by its weight and
    eps, with the gain convention (w, or 1 + w as in Gemma) that reproduces the module's own output
    on a fixed random input. InputError when neither does (a norm of another kind)."""
    weight = devices.weight(norm)
    d = weight.shape[-1] if weight is not None else int(getattr(norm, "normalized_shape", [0])[-1])
    p = next(norm.parameters(), None)
    device, dtype = devices.execution_device(norm), (p.dtype if p is not None else torch.float32)
    x = torch.randn(4, d, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    with torch.no_grad():
        want = norm(x).double()
    w = torch.ones(d, dtype=torch.float64, device=device) if weight is None else weight.double().to(device)
    bias = devices.weight(norm, "bias")
    bias = None if bias is None else bias.double()
    eps = next((float(getattr(norm, a)) for a in ("eps", "variance_epsilon", "epsilon") if hasattr(norm, a)), 1e-6)
    if isinstance(norm, torch.nn.LayerNorm):
        candidates = [FrozenNorm(True, w, bias, eps)]
    else:
        candidates = [FrozenNorm(False, w, bias, eps), FrozenNorm(False, 1.0 + w, bias, eps)]
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for cand in candidates:
        err = float((cand(x.double()) - want).abs().max())
        if err <= tol * (1.0 + float(want.abs().max())):
            return cand
    raise InputError(f"cannot read {type(norm).__name__} as a LayerNorm or an RMS norm (x * rsqrt(mean x^2 + eps) "
                     "* w or * (1 + w)); the lens and direct logit attribution need one")


def final_norm(handle: ModelHandle) -> torch.nn.Module:
    """The norm the model applies after its last block: the first norm module registered after the
    decoder blocks' ModuleList in the same parent (Llama/Qwen/Mistral/Phi-3/Gemma `model.norm`, GPT-2
    `transformer.ln_f`, GPT-NeoX `gpt_neox.final_layer_norm`)."""
    first = handle.blocks[0]
    for parent in handle.model.modules():
        children = list(parent.named_children())
        at = next((i for i, (_, c) in enumerate(children)
                   if isinstance(c, torch.nn.ModuleList) and len(c) and c[0] is first), None)
        if at is None:
            continue
        for _, child in children[at + 1:]:
            if isinstance(child, torch.nn.LayerNorm) or "norm" in type(child).__name__.lower():
                return child
        break
    raise InputError(f"cannot find the final norm of {type(handle.model).__name__} (no norm module after the "
                     "decoder blocks)")


@dataclass
class Readout:
    """The model's final norm, unembedding and final logit soft-cap: residual -> logits."""

    norm: torch.nn.Module
    frozen: FrozenNorm
    weight: torch.Tensor            # [V, d] unembedding
    bias: torch.Tensor | None       # [V]
    softcap: float | None           # logits = cap * tanh(logits / cap) (Gemma 2's final_logit_softcapping)

    @classmethod
    def of(cls, handle: ModelHandle) -> Readout:
        norm = final_norm(handle)
        head = handle.model.get_output_embeddings()
        cap = getattr(handle.model.config, "final_logit_softcapping", None)
        return cls(norm=norm, frozen=describe_norm(norm), weight=devices.weight(head), bias=devices.weight(head, "bias"),
                   softcap=float(cap) if cap else None)

    def cap(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.softcap is None else torch.tanh(logits / self.softcap) * self.softcap

    def count_logits(self, resid: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Float32 logits [B, P, K+1] of the count tokens `ids` [B, K+1] (per row) for residuals
        [B, P, d]: the final norm module itself, then the unembedding rows, then the soft-cap."""
        h = self.norm(resid.to(devices.execution_device(self.norm))).float()
        W = self.weight[ids.to(self.weight.device)].to(h.device).float()          # [B, K+1, d]
        logits = torch.einsum("bpd,bkd->bpk", h, W)
        if self.bias is not None:
            logits = logits + self.bias[ids.to(self.bias.device)].to(h.device).float()[:, None, :]
        return self.cap(logits)


@dataclass
class TraceReadout:
    """The readout where the weights are not here (NDIF, --remote): the final norm and unembedding
    as nnsight envoys, applied inside the trace to each captured residual (`reducer`), so a request
    returns count logits [B, P, K+1] per layer instead of residuals [B, P, d]."""

    norm: Any                       # envoys: called in a trace, they run where the model is
    head: Any
    softcap: float | None

    @classmethod
    def of(cls, handle: ModelHandle) -> TraceReadout:
        cap = getattr(handle.model.config, "final_logit_softcapping", None)
        return cls(norm=handle.model.envoy(final_norm(handle)), head=handle.model.envoy(
            handle.model.get_output_embeddings()), softcap=float(cap) if cap else None)

    def reducer(self, ids: torch.Tensor) -> Any:
        import functools

        return functools.partial(_trace_count_logits, norm=self.norm, head=self.head, ids=ids, softcap=self.softcap)


def _trace_count_logits(resid: torch.Tensor, norm: Any, head: Any, ids: torch.Tensor,
                        softcap: float | None) -> torch.Tensor:
    """Inside a trace: `Readout.count_logits` with the model's own modules (same operations)."""
    h = norm(resid).float()
    W = head.weight[ids.to(h.device)].float()                                   # [B, K+1, d]
    logits = torch.einsum("bpd,bkd->bpk", h, W)
    bias = getattr(head, "bias", None)
    if bias is not None:
        logits = logits + bias[ids.to(h.device)].float()[:, None, :]
    return logits if softcap is None else torch.tanh(logits / softcap) * softcap


def count_token_ids(handle: ModelHandle, prefixes: Sequence[str], k_max: int) -> torch.Tensor:
    """[n, k_max + 1] token id of each count 0..k_max after each row's answer prefix.

    The lens and attribution read one token per count: a count that tokenises into several tokens
    (10+ on byte-level vocabularies) is an InputError naming it."""
    by_prefix: dict[str, list[int]] = {}
    for prefix in dict.fromkeys(prefixes):
        toks = handle.answer_tokens(k_max, prefix)
        multi = [n for n, t in enumerate(toks) if len(t) != 1]
        if multi:
            raise InputError(f"counts {multi} are several tokens after '{prefix}' for {handle.name}; "
                             "the lens reads single-token counts (use a smaller k_max)")
        ids = [t[0] for t in toks]
        if len(set(ids)) != len(ids):
            raise InputError(f"two counts share a first token after '{prefix}' for {handle.name}")
        by_prefix[prefix] = ids
    return torch.tensor([by_prefix[p] for p in prefixes], dtype=torch.long)


def max_count(rows: Sequence[PromptRow]) -> int:
    """The largest count any row needs: its answer or its number of matches (running counts)."""
    return max(max(r.answer, sum(r.match)) for r in rows)


# --------------------------------------------------------------------------------------- statistics

def num(x: Any) -> float | None:
    """A JSON-safe float: None for NaN/inf."""
    return None if x is None or not np.isfinite(float(x)) else round(float(x), 6)


# ------------------------------------------------------------------------------------------ results

# ------------------------------------------------------------------------------------------ the lens

def _scores(logits: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """[..., 3]: correct (argmax, first on ties, == truth), P(truth) under a softmax over the count tokens,
    rank of the truth (1 = top; ties share the mean of their ranks)."""
    t = logits.gather(-1, truth[..., None])
    correct = (logits.argmax(-1) == truth).float()
    p_true = torch.softmax(logits, -1).gather(-1, truth[..., None])[..., 0]
    ties = (logits == t).sum(-1).float() - 1
    rank = 1 + (logits > t).sum(-1).float() + ties / 2        # mid-rank: all tied reads (K+2)/2, not 1
    return torch.stack([correct, p_true, rank], -1).numpy()


def _position_label(kind: str, item: int) -> str:
    return "answer" if kind == "last" else f"item {item + 1}"


def _position_key(label: str) -> tuple[int, int]:
    return (1, 0) if label == "answer" else (0, int(label.split()[1]))


class BatchConsumer(Protocol):
    """Another analysis that reads the lens's forwards instead of running its own."""

    sites: Sequence[Site]

    def consume(self, got: dict[Site, torch.Tensor], output: Any, rows: list[int]) -> None: ...


@dataclass
class LensLogits:
    """The lens's count logits, row by row in the order given (what `run_lens` scores)."""

    layers: list[Any]                 # ["emb", 0, ..., L-1]
    k_max: int
    rows: list[PromptRow]             # located copies: .positions = [(kind, item, token)], "last" first
    logits: list[np.ndarray]          # per row [n_layers + 1, P, K+1] float32
    truth: list[np.ndarray]           # per row [P]: the final count at "last", the running count at a word
    own: np.ndarray                   # [n, K+1]: the model's own count logits at the answer position
    softcap: float | None             # the final logit soft-cap the lens applied (None: none)

    def labels(self, i: int) -> list[str]:
        return [_position_label(kind, item) for kind, item, _ in self.rows[i].positions]


@torch.inference_mode()
def lens_logits(handle: ModelHandle, rows: Sequence[PromptRow], k_max: int | None = None,
                positions: Sequence[str] = ("answer", "items"), batch_size: int = 32,
                also: BatchConsumer | None = None) -> LensLogits:
    """Each residual layer at the answer position ("answer") and at each list word's last token
    ("items") through the final norm and unembedding, restricted to the count tokens 0..k_max
    (None: the largest count in the rows). Batches of similar length, left-padded; one forward each.

    `also` shares those forwards: its `sites` are captured at the same positions (the answer
    position first) and `also.consume(got, output, row indices)` sees every batch (how the study
    runs direct logit attribution without a forward of its own)."""
    if not rows:
        raise InputError("no rows for the logit lens")
    if not positions or set(positions) - {"answer", "items"}:
        raise InputError(f"lens positions {list(positions)}: choose from answer, items", field="positions")
    kinds = [k for p, k in (("answer", "last"), ("items", "items")) if p in positions]  # "last" first
    located = [dataclasses.replace(r) for r in rows]  # locate fills tokens and positions: not the caller's rows
    for r in located:
        locate(handle, r, kinds)
    k_max = max_count(located) if k_max is None else k_max
    if max_count(located) > k_max:
        raise InputError(f"k_max {k_max} is below the largest count in the rows ({max_count(located)})")
    in_trace = getattr(handle.model, "readout_in_trace", False)
    if in_trace and also is not None:
        raise InputError("direct logit attribution reads the model's weights here: it does not run with --remote")
    readout = TraceReadout.of(handle) if in_trace else Readout.of(handle)
    count_ids = count_token_ids(handle, [r.template.answer_prefix for r in located], k_max)
    at = {id(r): i for i, r in enumerate(located)}
    layers = every_layer(handle.n_layers)
    sites = [Site("resid", layer) for layer in layers]
    extra = [x for x in (also.sites if also else ()) if x not in set(sites)]
    logits: list[np.ndarray] = [np.empty(0)] * len(located)
    truth: list[np.ndarray] = [np.empty(0)] * len(located)
    own = np.zeros((len(located), k_max + 1), dtype=np.float32)
    for group in batches(located, batch_size):
        idx = [at[id(r)] for r in group]
        batch, pos = encode_batch(handle, group)
        ids = count_ids[idx]
        with capture(handle, sites + extra, positions=pos, to_cpu=False,
                     reduce=readout.reducer(ids) if in_trace else None) as got:
            out = forward(handle, batch)
        if also is not None:
            also.consume(got, out, idx)
        own[idx] = out.logits[:, -1].float().gather(1, ids.to(out.logits.device)).cpu().numpy()  # soft-capped
        lg = torch.stack([(got[site] if in_trace else readout.count_logits(got[site], ids)).cpu()
                          for site in sites], 1).numpy()                                      # [B, L+1, P, K+1]
        for j, r in enumerate(group):
            running = np.cumsum(r.match)
            truth[idx[j]] = np.array([r.answer if kind == "last" else int(running[item])
                                      for kind, item, _ in r.positions])
            logits[idx[j]] = lg[j, :, :len(r.positions)]
    return LensLogits(layers=layers, k_max=k_max, rows=located, logits=logits, truth=truth, own=own,
                      softcap=readout.softcap)


def run_lens(handle: ModelHandle, rows: Sequence[PromptRow], options: LensOptions | None = None,
             directions: Directions | None = None, also: BatchConsumer | None = None) -> LensResult:
    """The logit lens of every residual layer at the answer position and at each list word (no file
    I/O); with `directions` (the probes stage's, `Directions.load`) also their alignment; `also`
    shares the forwards (`lens_logits`)."""
    opts = options or LensOptions()
    ll = lens_logits(handle, rows, opts.k_max, opts.positions, opts.batch_size, also)
    by_position: dict[str, list[np.ndarray]] = {}   # position -> per row [n_layers + 1, 3] (correct, p, rank)
    for i in range(len(ll.rows)):
        truth = torch.from_numpy(ll.truth[i])[None].expand(len(ll.layers), -1)
        scores = _scores(torch.from_numpy(ll.logits[i]), truth)                  # [n_layers + 1, P, 3]
        for p, label in enumerate(ll.labels(i)):
            by_position.setdefault(label, []).append(scores[:, p])
    answers = torch.tensor([r.answer for r in ll.rows])
    own = _scores(torch.from_numpy(ll.own)[:, None], answers[:, None])[:, 0, :2]
    answer_first = ll.rows[0].positions[0][0] == "last"
    last_diff = float(max(np.abs(x[-1, 0] - o).max() for x, o in zip(ll.logits, ll.own))) if answer_first else None
    table = _lens_table({k: np.stack(v) for k, v in by_position.items()}, ll.layers, opts)
    summary = _lens_summary(table, own, ll, last_diff, opts, handle)
    alignment = None
    if directions is not None and not getattr(handle.model, "readout_in_trace", False):  # needs W_U here
        alignment = direction_alignment(handle, directions)
        summary["alignment"] = alignment_summary(alignment, handle.model.config.hidden_size)
    return LensResult(table=table, summary=summary, alignment=alignment)


def _lens_table(by_position: dict[str, np.ndarray], layers: list, opts: LensOptions) -> pd.DataFrame:
    """Tidy rows from per-position scores [n, n_layers + 1, 3]: Wilson for accuracy, one bootstrap
    (the same resamples for every layer) for the means."""
    out: list[dict] = []
    for label, v in by_position.items():
        n = len(v)
        mean, lo, hi = bootstrap_cells(v[:, :, 1:].reshape(n, -1), opts.n_boot, opts.seed)
        for li, layer in enumerate(layers):
            k = int(v[:, li, 0].sum())
            wlo, whi = wilson_ci(k, n)
            out.append({"layer": str(layer), "position": label, "metric": "accuracy", "value": k / n,
                        "ci_low": wlo, "ci_high": whi, "n": n})
            for m, metric in enumerate(("p_correct", "rank")):
                c = 2 * li + m
                out.append({"layer": str(layer), "position": label, "metric": metric, "value": float(mean[c]),
                            "ci_low": float(lo[c]), "ci_high": float(hi[c]), "n": n})
    out.sort(key=lambda r: (layer_key(r["layer"]), _position_key(r["position"])))
    return pd.DataFrame(out, columns=TABLE_COLUMNS).astype({"n": "int64"})


def _lens_summary(table: pd.DataFrame, own: np.ndarray, ll: LensLogits, last_diff: float | None, opts: LensOptions,
                  handle: ModelHandle) -> dict:
    layers, rows, k_max = ll.layers, ll.rows, ll.k_max
    ans = table[table.position == "answer"]
    per_layer = []
    for layer in layers:
        cell = ans[ans.layer == str(layer)].set_index("metric")
        if cell.empty:
            continue
        g = lambda m, c="value": num(cell.loc[m, c])  # noqa: E731
        per_layer.append({"layer": layer, "accuracy": g("accuracy"), "ci_low": g("accuracy", "ci_low"),
                          "ci_high": g("accuracy", "ci_high"), "p_correct": g("p_correct"),
                          "p_correct_ci_low": g("p_correct", "ci_low"), "p_correct_ci_high": g("p_correct", "ci_high"),
                          "rank": g("rank"), "n": int(cell.loc["accuracy", "n"])})
    answers = np.array([r.answer for r in rows])
    k = int(own[:, 0].sum())
    lo, hi = wilson_ci(k, len(own))
    model = {"accuracy": num(k / len(own)), "ci_low": num(lo), "ci_high": num(hi),
             "p_correct": num(own[:, 1].mean()), "n": len(own),
             "definition": "the model's own logits at the answer position, argmax over the count tokens"}
    first = next((e["layer"] for e in per_layer if e["accuracy"] >= 0.9 * model["accuracy"]), None)
    return {
        "stage": "lens", "model": handle.name, "n_rows": len(rows), "k_max": k_max,
        "positions": list(opts.positions), "layers": [parse_layer(x) for x in layers],
        "metrics": {"accuracy": "argmax over the count tokens 0..K == the truth (final count at the answer, "
                                "running count at a list word)",
                    "p_correct": "P(truth) under a softmax over the count tokens 0..K only",
                    "rank": "rank of the truth among the count tokens (1 = top, ties share their mean rank)"},
        "intervals": {"accuracy": interval_label(), "means": f"percentile bootstrap 95% over rows ({opts.n_boot})"},
        "per_layer": per_layer,
        "own": model,
        "first_layer_90": first,
        "chance": {"uniform": num(1.0 / (k_max + 1)),
                   "majority": num(np.bincount(answers).max() / len(answers))},
        "final_logit_softcapping": ll.softcap,
        "last_layer_max_abs_diff": num(last_diff),
        "note": BIAS_NOTE,
        "options": opts.model_dump(mode="json"),
    }


# ------------------------------------------------------------------------------ direction alignment

def readout_directions(handle: ModelHandle, k_max: int, answer_prefix: str | None = None) -> torch.Tensor:
    """[K+1, d] float64: the direction in the residual that raises each count token's logit.

    W_U[d] * gain of the final norm (w; 1 + w on Gemma). For a LayerNorm the row is also centred,
    because the norm subtracts the mean of x (x - mean x) . v == x . (v - mean v); its bias adds
    b . W_U[d] to the logit whatever the residual is, so it is no direction and is left out."""
    readout = Readout.of(handle)
    prefix = handle.template().answer_prefix if answer_prefix is None else answer_prefix
    ids = count_token_ids(handle, [prefix], k_max)[0]
    W = readout.weight[ids.to(readout.weight.device)].double().cpu()
    return readout.frozen.fold(W, torch.ones(len(ids), 1, dtype=torch.float64)).cpu()


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine; NaN when either vector is zero (at "emb" the answer token is the same in every row, so
    its class means coincide and their differences are zero)."""
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norm if norm > 1e-30 else float("nan")


def direction_alignment(handle: ModelHandle, directions: Directions, layers: Sequence[Any] | None = None,
                        answer_prefix: str | None = None) -> pd.DataFrame:
    """Cosine of each layer's count directions with the digits' readout directions.

    Directions (from `directions`, the residual stream's class means): "one-more" (the per +1
    slope) and "mean-diff N->N+1" per consecutive pair of counts; readouts (`readout_directions`):
    "digit d" for every count d and "digit N+1 - digit N", the direction that moves the answer from
    N to N+1. A direction that the unembedding reads as "one more" has a high cosine with the
    step readouts; in d dimensions unrelated directions have |cos| ~ sqrt(2 / (pi d))."""
    classes = [int(c) for c in directions.arrays["classes"]]
    k = max(classes)
    U = readout_directions(handle, k, answer_prefix).numpy()
    steps = [(n, n + 1) for n in classes if n + 1 in classes]
    out: list[dict] = []
    for layer in directions.layers if layers is None else layers:
        layer = parse_layer(layer)
        dirs = {"one-more": directions.one_more(layer)}
        dirs.update({f"mean-diff {a}->{b}": directions.mean_diff(layer, a, b) for a, b in steps})
        for name, v in dirs.items():
            v = np.asarray(v, dtype=np.float64)
            for d in range(k + 1):
                out.append({"layer": str(layer), "direction": name, "readout": f"digit {d}", "cosine": _cos(v, U[d])})
            for a, b in steps:
                out.append({"layer": str(layer), "direction": name, "readout": f"digit {b} - digit {a}",
                            "cosine": _cos(v, U[b] - U[a])})
    return pd.DataFrame(out, columns=ALIGNMENT_COLUMNS)


def alignment_summary(alignment: pd.DataFrame, d_model: int) -> dict:
    """Per layer, averaged over N: the one-more direction's cosine with the step readouts (digit N+1 -
    digit N), each N->N+1 mean difference's with its own step and with its target digit N+1."""
    per_layer = []
    for layer in sorted(set(alignment.layer), key=layer_key):
        one_more, step, target = [], [], []
        for r in alignment[alignment.layer == layer].itertuples():
            if r.direction == "one-more":
                if " - " in r.readout:
                    one_more.append(r.cosine)
                continue
            a, b = r.direction.split()[1].split("->")
            if r.readout == f"digit {b} - digit {a}":
                step.append(r.cosine)
            elif r.readout == f"digit {b}":
                target.append(r.cosine)
        per_layer.append({"layer": parse_layer(layer), "one_more_vs_step": _mean(one_more),
                          "mean_diff_vs_step": _mean(step), "mean_diff_vs_target": _mean(target)})
    return {"per_layer": per_layer, "random_abs_cosine": num(math.sqrt(2 / (math.pi * d_model))),
            "readout": "W_U[digit] * final-norm gain (centred for a LayerNorm; its bias is no direction)"}


def _mean(v: list[float]) -> float | None:
    return num(np.mean(v)) if v else None  # NaN (a zero direction) -> None
