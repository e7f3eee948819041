"""Steering: add count directions to the residual stream and measure where the answer goes.

Vectors per layer, from activations of *training* examples at the answer position (`last`):
  mean-diff  means[M] - means[N] (class means of the residual stream); for N -> N+1 each
             example gets the vector of its own true N (CAA-style, Rimsky et al. 2023)
  one-more   one direction per layer for "+1 count": the least-squares slope of the activations on
             the count (`probe_fit.mean_slope`, the probes' difference-of-means direction), fitted
             on every example; the average of consecutive class-mean differences would telescope
             to (mu_last - mu_first) / (K - 1) and use only the two end classes
  probe      the logistic probe's weight difference coef[N+1] - coef[N], rescaled to the norm of
             the matching mean-diff vector so that scales compare
  random     a seeded Gaussian direction rescaled to the mean-diff vector's norm (the control)
Scale s adds s x vector (s = 1: the full class-mean difference). Evaluation is on held-out
examples (never those the vectors came from): the distribution over the count tokens at the
answer position (score mode), and at the chosen settings greedy generation, parsed.

Fast path (positions "last", method "fast"): steering there changes only the answer position,
so each held-out batch runs one unsteered forward, keeps the KV cache of every position but
the last, and recomputes only the last token for every (layer, vector, scale) at once, as rows
of single-token forwards over copies of that cache (`count_logprobs_last`). The reference
(`method="reference"`, and always for positions from-list / all) runs a full forward per setting.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from countlens.data.answers import parse_lenient
from countlens.data.templates import Template
from countlens.errors import InputError
from countlens.models import kvcache
from countlens.models import hooks
from countlens.models.hooks import capture
from countlens.results import SteerResult
from countlens.summaries import SteerSummary
from countlens.sites import Site, every_layer, parse_layer
from countlens.interp.directions import Directions
from countlens.interp.probe_fit import FitConfig, full_fit_directions
from countlens.models.generation import generate_batch, prefix_kv
from countlens.models.handle import ModelHandle, forward_reduced, keep_logits, pad_left
from countlens.options import DEFAULT_SCALES, MEMORY_BUDGET, VECTORS, SteerOptions
from countlens.stats import interval_label, wilson_ci


@dataclass
class Encoded:
    """Held-out or training examples, tokenised, with the positions steering can use."""
    ids: list[list[int]]
    answers: np.ndarray
    list_start: list[int]   # first token of the first list word (unpadded index)
    rows: list[dict] = field(default_factory=list)


def encode_rows(handle: ModelHandle, rows: list[dict], template: Template) -> Encoded:
    """Token ids and the first list token of each row (models.encoding: one prompt encoding)."""
    from countlens.models.encoding import encode_prompt

    encs = [encode_prompt(handle, template, r["category"], r["word_list"]) for r in rows]
    return Encoded(ids=[e.ids for e in encs], answers=np.array([r["answer"] for r in rows]),
                   list_start=[e.words[0][0] for e in encs], rows=rows)


@torch.no_grad()
def collect_last(handle: ModelHandle, enc: Encoded, layers: list, batch_size: int) -> dict[Any, np.ndarray]:
    """Residual stream at the answer position for every layer: {layer: [n, d] float32}."""
    sites = [Site("resid", layer) for layer in layers]
    out: dict[Any, list[np.ndarray]] = {layer: [] for layer in layers}
    for i in range(0, len(enc.ids), batch_size):
        batch = pad_left(enc.ids[i:i + batch_size], handle.pad_id, handle.device)
        last = torch.full((batch["input_ids"].shape[0], 1), batch["input_ids"].shape[1] - 1)
        with capture(handle, sites, positions=last) as st:
            handle.model(**batch)
        for layer, site in zip(layers, sites):
            out[layer].append(st[site][:, 0].float().numpy())
    return {layer: np.concatenate(v) for layer, v in out.items()}


@dataclass
class LayerVectors:
    classes: np.ndarray
    means: np.ndarray            # [K, d]
    slope: np.ndarray            # [d]
    probe_coef: np.ndarray       # [K, d] in raw units
    rng_dirs: np.ndarray         # [K, d] unit random directions (seeded)

    def vector(self, kind: str, n_from: int, m_to: int) -> np.ndarray:
        k = list(self.classes)
        md = self.means[k.index(m_to)] - self.means[k.index(n_from)]
        if kind == "mean-diff":
            return md
        norm = float(np.linalg.norm(md))
        if kind == "one-more":
            return self.slope * (m_to - n_from)
        if kind == "probe":
            d = self.probe_coef[k.index(m_to)] - self.probe_coef[k.index(n_from)]
            return d / max(float(np.linalg.norm(d)), 1e-12) * norm
        if kind == "random":
            return self.rng_dirs[k.index(n_from)] * norm
        raise InputError(f"unknown vector '{kind}' (choose from {', '.join(VECTORS)})")


def fit_vectors(X: np.ndarray, y: np.ndarray, seed: int, layer_index: int) -> LayerVectors:
    """The probes' estimator (probe_fit.full_fit_directions: class means, the one-more least-squares
    slope, a standardised logistic probe in raw units) on the steering training half."""
    return vectors_from(full_fit_directions(X, y, FitConfig(max_iter=500)), seed, layer_index, X.shape[1])


def vectors_from(arrays: dict[str, np.ndarray], seed: int, layer_index: int, d: int) -> LayerVectors:
    """One layer's steering vectors from direction arrays (fitted here or saved by the probes stage)."""
    classes = np.asarray(arrays["classes"])
    rng = np.random.default_rng([seed, layer_index])
    r = rng.standard_normal((len(classes), d))
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    coef = arrays.get("probe_coef")
    return LayerVectors(classes, np.asarray(arrays["means"]), np.asarray(arrays["slope"]),
                        np.zeros((len(classes), d), np.float32) if coef is None else np.asarray(coef), r)


def load_vectors(root: str, layers: list, seed: int) -> dict[Any, LayerVectors]:
    """Steering vectors from the directions a probes run saved (OUT/directions, resid at `last`)."""
    d = Directions.load(root, "resid", "last")
    out = {}
    for i, layer in enumerate(layers):
        li = d.layer_index(layer)
        arrays = {k: (v if k in ("classes", "counts") else v[li]) for k, v in d.arrays.items()}
        out[layer] = vectors_from(arrays, seed, i, arrays["means"].shape[-1])
    return out


@torch.no_grad()
def count_logprobs(handle: ModelHandle, enc: Encoded, idx: list[int], count_tokens: list[int],
                   site: Site | None = None, vectors: np.ndarray | None = None, scale: float = 0.0,
                   positions: str = "last") -> torch.Tensor:
    """log P over the count tokens at the answer position, steered by per-example vectors [B, d]."""
    batch = pad_left([enc.ids[i] for i in idx], handle.pad_id, handle.device)
    W = batch["input_ids"].shape[1]
    reduce = functools.partial(_count_logprobs, count_tokens=torch.tensor(count_tokens))
    if site is None or scale == 0.0 or vectors is None:
        return forward_reduced(handle, reduce, **batch)
    v = torch.as_tensor(vectors, dtype=torch.float32)
    with _add_rows(handle, site, v * scale, enc, idx, W, positions):
        return forward_reduced(handle, reduce, **batch)


def _count_logprobs(logits: torch.Tensor, count_tokens: torch.Tensor) -> torch.Tensor:
    """[B, V] last-position logits -> [B, K+1] log P of the count tokens (on the CPU)."""
    return torch.log_softmax(logits.float(), -1)[:, count_tokens.to(logits.device)].cpu()


def _row_bytes(kv: list[tuple[torch.Tensor, torch.Tensor]], length: int, vocab: int) -> int:
    """Bytes one row of a single-token forward after a `length` cache holds: its KV copies, its logits.

    Two copies of the row's KV: the tiled source the rows share across forwards, and the cache's own
    (`DynamicLayer.update` concatenates; during the forward it grows by the new position). An upper
    bound for sliding-window layers, which keep fewer positions.
    """
    per_pos = sum(k[0, :, 0].numel() * k.element_size() + v[0, :, 0].numel() * v.element_size() for k, v in kv)
    return 2 * per_pos * (length + 1) + 3 * 4 * vocab


def _forward_plan(todo: list[int], B: int, max_rows: int) -> tuple[int, list[list[tuple[int, int, int]]]]:
    """Forwards as lists of (setting, first example, end example) segments, config-major.

    max_rows >= B: whole settings, n = max_rows // B of them per forward, so every forward's rows are
    the batch tiled (up to) n times (one shared tiled copy of the prompt KV, sliced as views).
    max_rows < B: slices of one setting's examples (contiguous, hence views of the prompt KV).
    """
    if max_rows >= B:
        n = min(len(todo), max_rows // B)
        return n, [[(r, 0, B) for r in todo[c:c + n]] for c in range(0, len(todo), n)]
    return 1, [[(r, a, min(a + max_rows, B))] for r in todo for a in range(0, B, max_rows)]


@torch.no_grad()
def count_logprobs_last(handle: ModelHandle, enc: Encoded, idx: list[int], count_tokens: list[int],
                        configs: list[tuple[Site, Any, float]], memory_budget: int = MEMORY_BUDGET
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-position steering of many settings from one prompt forward: (base [B, C], steered [R, B, C]).

    configs: (site, per-example vectors [B, d], scale) per setting; scale s adds s x vector at the
    answer position only, as `count_logprobs(..., positions="last")` does. One unsteered forward of
    the left-padded batch gives the base log-probs and the KV cache of every position; every
    setting with a non-zero scale then recomputes only the last token (input_ids [rows, 1], its own
    position id, the attention mask over the whole width), the settings stacked as rows
    (config-major) of single-token forwards, each over a fresh cache built from the prompt KV
    without its last position, repeated per row; rows are chunked so that their KV copies (and
    logits) stay under `memory_budget` bytes (`_row_bytes`). Scale 0 returns the base log-probs
    themselves (exactly). CUDA out of memory halves the rows per forward.
    """
    model, cfg = handle.model, handle.model.config
    batch = pad_left([enc.ids[i] for i in idx], handle.pad_id, handle.device)
    ids, mask, pos = batch["input_ids"], batch["attention_mask"], batch["position_ids"]
    B, W = ids.shape
    out = kvcache.forward(model, input_ids=ids, attention_mask=mask, position_ids=pos, last_logits=True)
    last_logits = out.logits[:, -1]
    base = torch.log_softmax(last_logits.float(), -1)[:, count_tokens].cpu()
    kv = kvcache.kv_tensors(kvcache.output_cache(out))
    del out
    steered = base[None].repeat(len(configs), 1, 1)
    todo = [r for r, (_, _, scale) in enumerate(configs) if scale != 0.0]
    if not todo:
        return base, steered
    if W > 1 and kvcache.shared_prefix_ok(model, kv, W - 1, ids[:, -1], pos[:, -1], mask, last_logits):
        _steer_shared(handle, configs, todo, kv, ids, mask, pos, count_tokens, memory_budget, steered)
        return base, steered
    prefix = [(k[:, :, :W - 1], v[:, :, :W - 1]) for k, v in kv]
    del kv
    vocab = int(getattr(cfg, "vocab_size", None) or model.get_output_embeddings().weight.shape[0])
    max_rows = max(1, int(memory_budget) // _row_bytes(prefix, W - 1, vocab))
    while True:
        try:
            _steer_rows(handle, configs, todo, prefix, ids, mask, pos, count_tokens, max_rows, steered)
            return base, steered
        except torch.cuda.OutOfMemoryError:
            if max_rows == 1:
                raise
            torch.cuda.empty_cache()
            max_rows = max(1, max_rows // 2)


def _steer_shared(handle, configs, todo, kv, ids, mask, pos, count_tokens, memory_budget, steered) -> None:
    """Every setting as its own query token over the batch's one prompt cache (no KV copy per setting).

    Query q of example b is setting todo[q]: the hook adds scale x vector[b] at query q of the
    setting's site; the queries see the prompt and themselves only (kvcache.shared_prefix_forward).
    """
    model = handle.model
    B, W = ids.shape
    vocab = int(getattr(model.config, "vocab_size", None) or model.get_output_embeddings().weight.shape[0])
    hidden = int(getattr(model.config, "hidden_size", None) or getattr(model.config, "n_embd"))
    per_query = B * (vocab * 12 + hidden * 64 + 8 * W * 32)   # logits (3 float32 copies), activations, scores
    per_pos = sum(k[0, :, 0].numel() * k.element_size() + v[0, :, 0].numel() * v.element_size() for k, v in kv)
    fixed = 3 * B * per_pos * W  # the batch's KV, the cache's copy of it and the concatenation with the queries
    Q = max(1, min(len(todo), (int(memory_budget) - fixed) // max(1, per_query)))
    prefix = [(k[:, :, :W - 1], v[:, :, :W - 1]) for k, v in kv]
    for q0 in range(0, len(todo), Q):
        chunk = todo[q0:q0 + Q]
        by_site: dict[Site, torch.Tensor] = {}
        for q, r in enumerate(chunk):
            site, vectors, scale = configs[r]
            d = by_site.setdefault(site, torch.zeros(B, len(chunk), hidden))
            d[:, q] = torch.as_tensor(vectors, dtype=torch.float32) * scale
        with contextlib.ExitStack() as stack:  # x [B, Q, hidden]: query q is setting chunk[q]
            for site, d in by_site.items():
                stack.enter_context(hooks.add(handle, site, d))
            o = kvcache.shared_prefix_forward(model, prefix, W - 1, ids[:, -1], pos[:, -1], mask, len(chunk))
        lp = torch.log_softmax(o.logits[:, -len(chunk):].float(), -1)[..., count_tokens].cpu()  # [B, Q, C]
        del o
        for q, r in enumerate(chunk):
            steered[r] = lp[:, q]


def _steer_rows(handle, configs, todo, prefix, ids, mask, pos, count_tokens, max_rows, steered) -> None:
    """The single-token forwards of `count_logprobs_last`, written into steered[setting, example]."""
    model, cfg = handle.model, handle.model.config
    B, W = ids.shape
    n, plan = _forward_plan(todo, B, max_rows)
    tiled = [(k.repeat(n, 1, 1, 1), v.repeat(n, 1, 1, 1)) for k, v in prefix] if n > 1 else prefix
    for segs in plan:
        ex = torch.cat([torch.arange(a, e) for _, a, e in segs]).to(ids.device)
        if len(segs) > 1 or (segs[0][1], segs[0][2]) == (0, B):   # whole settings: the tiled rows
            rows_kv = [(k[:len(ex)], v[:len(ex)]) for k, v in tiled]
        else:                                                      # a slice of one setting's examples
            a, e = segs[0][1], segs[0][2]
            rows_kv = [(k[a:e], v[a:e]) for k, v in prefix]
        # per site: the rows it steers and by how much (the answer position is the only one)
        by_site: dict[Site, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        at = 0
        for r, a, e in segs:
            site, vectors, scale = configs[r]
            rows, deltas = by_site.setdefault(site, ([], []))
            rows.append(torch.arange(at, at + e - a))
            deltas.append(torch.as_tensor(vectors, dtype=torch.float32)[a:e] * scale)
            at += e - a
        with contextlib.ExitStack() as stack:  # x [rows, 1, d]
            for site, (rows, deltas) in by_site.items():
                stack.enter_context(hooks.add(handle, site, torch.cat(deltas), rows=torch.cat(rows)))
            o = kvcache.forward(model, cache=kvcache.build_cache(rows_kv, cfg, W - 1),
                                input_ids=ids[ex, W - 1:], attention_mask=mask[ex],
                                position_ids=pos[ex, W - 1:], last_logits=True)
        lp = torch.log_softmax(o.logits[:, -1].float(), -1)[:, count_tokens].cpu()
        del o
        at = 0
        for r, a, e in segs:
            steered[r, a:e] = lp[at:at + e - a]
            at += e - a


def _add_rows(handle, site: Site, v: torch.Tensor, enc: Encoded, idx: list[int], W: int, positions: str):
    """Add per-row vectors v [B, d] at the chosen positions (during generation: every new token too)."""
    if positions == "last":
        at = -1
    elif positions == "from-list":
        starts = torch.tensor([W - len(enc.ids[i]) + enc.list_start[i] for i in idx])
        at = torch.arange(W)[None, :] >= starts[:, None]
    else:
        at = None
    return hooks.add(handle, site, v, positions=at, new_tokens=True)


def prompt_prefix(handle, enc: Encoded, idx: list[int]) -> tuple[dict, list]:
    """(the left-padded batch, the KV of every prompt position but the last): steering at the last
    position leaves those untouched, so every setting's generation starts from the same prefix."""
    batch = pad_left([enc.ids[i] for i in idx], handle.pad_id, handle.device)
    # (the nnsight engine's generate runs its own prefill: no prefix to share)
    return batch, prefix_kv(handle, batch) if hooks.backend(handle) is hooks.TORCH else None


@torch.no_grad()
def generate_steered(handle, enc, idx, site, vectors, scale, positions, max_new_tokens, prefix,
                     prompt: tuple[dict, list] | None = None) -> list[int | None]:
    """Greedy answers with v * scale added at `site` (`positions`; generated tokens get it too).
    `prompt` (`prompt_prefix`, positions "last" only): start from that batch's shared prompt KV."""
    if prompt is not None and positions != "last":
        raise ValueError("a shared prompt prefix serves last-position steering only")
    batch, kv = prompt if prompt is not None else (pad_left([enc.ids[i] for i in idx], handle.pad_id,
                                                            handle.device), None)
    W = batch["input_ids"].shape[1]
    ctx = _add_rows(handle, site, torch.as_tensor(vectors, dtype=torch.float32) * scale, enc, idx, W, positions) \
        if scale != 0.0 else contextlib.nullcontext()
    with ctx:
        new = generate_batch(handle, batch, max_new_tokens, prefix=kv)
    texts = handle.tokenizer.batch_decode(new, skip_special_tokens=True)
    return [parse_lenient(prefix + t) for t in texts]


@dataclass
class SweepInputs:
    """Everything the layers x vectors x scales sweep needs, fitted on the training rows."""
    template: Template
    max_count: int
    count_tokens: list[int]
    layers: list
    n_train: int
    n_test: int
    test: Encoded
    vecs: dict[Any, LayerVectors]
    eval_idx: list[int]          # held-out examples with N < K (N -> N+1 is evaluated)
    chunks: list[list[int]]      # eval_idx in batches of opts.batch_size
    per_ex: dict[tuple, np.ndarray]   # (layer, kind) -> [n_eval, d] float32: each example's N -> N+1 vector
    settings: list[tuple]        # (layer, kind, scale) in table order


def train_size(n_rows: int, opts: SteerOptions) -> int:
    """The split rule: the first int(n * train_frac) rows fit the vectors, the rest are held out (every row
    is held out when the directions come from a probes folder)."""
    return 0 if opts.directions else int(n_rows * opts.train_frac)


def prepare_sweep(handle: ModelHandle, rows: list[dict], opts: SteerOptions) -> SweepInputs:
    """Check options, split rows, fit vectors on the training part, lay out the held-out sweep."""
    for v in opts.vectors:
        if v not in VECTORS:
            raise InputError(f"--vector: unknown '{v}' (choose from mean-diff, probe, both, or {', '.join(VECTORS)})")
    if opts.positions not in ("last", "from-list", "all"):
        raise InputError(f"--positions must be last, from-list or all (got '{opts.positions}')")
    if opts.method not in ("fast", "reference"):
        raise InputError(f"steering method must be fast or reference (got '{opts.method}')")
    if opts.memory_budget <= 0:
        raise InputError(f"memory_budget must be a positive number of bytes (got {opts.memory_budget})")
    tpl = handle.template(opts.template)
    # With saved directions (fitted on a probes run's own examples) every row is held out.
    n_train = train_size(len(rows), opts)
    train_rows, test_rows = rows[:n_train], rows[n_train:]
    if len(test_rows) < 10 or (n_train < 10 and not opts.directions):
        raise InputError(f"need at least 10 training and 10 held-out examples (got {n_train} and {len(test_rows)})")
    K = int(max(r["answer"] for r in rows))
    count_tokens = [a[0] for a in handle.answer_tokens(K, tpl.answer_prefix)]
    layers = [parse_layer(x) for x in (opts.layers or every_layer(handle.n_layers))]
    bad = [x for x in layers if x != "emb" and not 0 <= x < handle.n_layers]
    if bad:
        raise InputError(f"--layers: {bad} out of range (the model has blocks 0..{handle.n_layers - 1} and emb)")
    test = encode_rows(handle, test_rows, tpl)
    if opts.directions:  # saved by a probes run (fitted on its own examples)
        vecs = load_vectors(opts.directions, layers, opts.seed)
    else:
        train = encode_rows(handle, train_rows, tpl)
        acts = collect_last(handle, train, layers, opts.batch_size)
        vecs = {layer: fit_vectors(acts[layer], train.answers, opts.seed, i) for i, layer in enumerate(layers)}
    # Evaluate N -> N+1 on held-out examples with N < K.
    eval_idx = [i for i in range(len(test.ids)) if test.answers[i] < K]
    have = {int(c) for c in next(iter(vecs.values())).classes} if vecs else set()
    missing = sorted({int(c) for i in eval_idx for c in (test.answers[i], test.answers[i] + 1)} - have)
    if missing:
        raise InputError(f"counts {missing} occur in the held-out part but not among the {n_train} training "
                         f"examples, so they have no class mean: use more examples or balanced halves")
    chunks = [eval_idx[i:i + opts.batch_size] for i in range(0, len(eval_idx), opts.batch_size)]
    per_ex = {(layer, kind): np.stack([vecs[layer].vector(kind, int(test.answers[i]), int(test.answers[i]) + 1)
                                       for i in eval_idx]).astype(np.float32)
              for layer in layers for kind in opts.vectors}
    settings = [(layer, kind, float(scale)) for layer in layers for kind in opts.vectors for scale in opts.scales]
    return SweepInputs(tpl, K, count_tokens, layers, n_train, len(test_rows), test, vecs, eval_idx, chunks,
                       per_ex, settings)


def sweep(handle: ModelHandle, inp: SweepInputs, opts: SteerOptions) -> tuple[torch.Tensor, dict]:
    """(unsteered log-probs [n_eval, K+1], {(layer, kind, scale): steered log-probs [n_eval, K+1]}).

    positions "last" with method "fast" reuses each batch's KV cache (`count_logprobs_last`);
    otherwise (method "reference", positions from-list / all) a full forward per setting and batch.
    """
    args = (handle, inp.test, inp.chunks, inp.count_tokens, inp.settings, inp.per_ex)
    if opts.method == "fast" and opts.positions == "last" and hooks.backend(handle) is hooks.TORCH:
        return _sweep_fast(*args, opts.memory_budget)
    return _sweep_reference(*args, opts.positions)


def run_steering(handle: ModelHandle, rows: list[dict], opts: SteerOptions | None = None,
                 progress: Callable[[int], None] | None = None) -> SteerResult:
    """Fit vectors on the first `train_frac` of rows, sweep layers x scales x vectors on the rest."""
    opts = opts or SteerOptions()
    inp = prepare_sweep(handle, rows, opts)
    test, eval_idx, layers, K = inp.test, inp.eval_idx, inp.layers, inp.max_count
    base_lp, lps = sweep(handle, inp, opts)
    base_ans = base_lp.argmax(-1).numpy()
    records = []
    for layer in layers:
        for kind in opts.vectors:
            for scale in opts.scales:
                lp = lps[(layer, kind, float(scale))]
                p = lp.exp()
                ans = lp.argmax(-1).numpy()
                expected = (p * torch.arange(K + 1)).sum(-1).numpy() / p.sum(-1).numpy()
                for j, i in enumerate(eval_idx):
                    n = int(test.answers[i])
                    records.append((test.rows[i].get("id", str(i)), n, kind, str(layer), float(scale), int(ans[j]),
                                    float(expected[j]), float(p[j, n + 1]), int(base_ans[j]),
                                    float(p[j].sum())))
            if progress:
                progress(1)
    table = pd.DataFrame(records, columns=["example", "n", "vector", "layer", "scale", "answer", "expected",
                                           "p_target", "base_answer", "count_mass"])
    table["target"] = table.n + 1
    table["success"] = (table.answer == table.target).astype(float)
    table["shift"] = table.answer - table.base_answer
    summary, transitions = summarize(table, layers, handle.n_layers, opts, K)
    if opts.generate:
        summary["generate"] = _generate_checks(handle, test, eval_idx, inp.vecs, summary, opts,
                                               inp.template.answer_prefix)
    summary |= {"n_train": inp.n_train, "n_test": inp.n_test, "n_eval": len(eval_idx), "max_count": K,
                "layers": [str(x) for x in layers], "options": opts.model_dump(mode="json"), "unsteered_accuracy":
                float((base_ans == test.answers[eval_idx]).mean())}
    return SteerResult(table=table, summary=summary, transitions=transitions)


def _sweep_reference(handle, test, chunks, count_tokens, settings, per_ex, positions):
    """A full forward per (setting, batch); scale 0 is the unsteered run itself."""
    base_lp = torch.cat([count_logprobs(handle, test, c, count_tokens) for c in chunks])
    starts = [sum(len(c) for c in chunks[:k]) for k in range(len(chunks))]
    lps = {}
    for layer, kind, scale in settings:
        lps[(layer, kind, scale)] = base_lp if scale == 0.0 else torch.cat([
            count_logprobs(handle, test, c, count_tokens, Site("resid", layer),
                           per_ex[(layer, kind)][j0:j0 + len(c)], scale, positions)
            for j0, c in zip(starts, chunks)])
    return base_lp, lps


def _sweep_fast(handle, test, chunks, count_tokens, settings, per_ex, memory_budget):
    """Every setting of a batch from that batch's one prompt forward (`count_logprobs_last`)."""
    bases, outs, j0 = [], [], 0
    for c in chunks:
        configs = [(Site("resid", layer), per_ex[(layer, kind)][j0:j0 + len(c)], scale)
                   for layer, kind, scale in settings]
        base, steered = count_logprobs_last(handle, test, c, count_tokens, configs, memory_budget)
        bases.append(base)
        outs.append(steered)
        j0 += len(c)
    base_lp, steered = torch.cat(bases), torch.cat(outs, 1)
    lps = {key: (base_lp if key[2] == 0.0 else steered[r]) for r, key in enumerate(settings)}
    return base_lp, lps


def _rate_ci(success: pd.Series) -> tuple[float, float]:
    """Wilson 95 % interval of a success rate (0/1 flags): honest at 0 % and 100 %."""
    flags = success.dropna().to_numpy()
    return wilson_ci(int(flags.sum()), int(flags.size))


def _best(t: pd.DataFrame, layers: list[str]) -> dict | None:
    s = t[t.layer.isin(layers) & (t.scale > 0)].groupby(["layer", "scale"]).success.mean()
    if s.empty:
        return None
    (layer, scale), rate = s.idxmax(), float(s.max())
    cur = t[(t.layer == layer) & (t.scale == scale)].success
    lo, hi = _rate_ci(cur)
    return {"layer": parse_layer(layer), "scale": float(scale), "success_rate": rate,
            "ci_low": lo, "ci_high": hi, "n": int(cur.notna().sum())}


def summarize(table: pd.DataFrame, layers: list, n_layers: int, opts: SteerOptions, K: int):
    last = str(n_layers - 1)
    before = [str(x) for x in layers if str(x) != last]
    out: dict[str, Any] = {"positions": opts.positions, "scales": list(opts.scales),
                           "interval": f"{interval_label()} (success rates)"}
    transitions: dict[str, list[list[int]]] = {}
    for kind in opts.vectors:
        if kind == "random":
            continue
        t = table[table.vector == kind]
        best = _best(t, before)
        entry: dict[str, Any] = {"best": best, "last_block": _best(t, [last]) if last in set(t.layer) else None}
        if best is not None:
            sel = (table.layer == str(best["layer"])) & (table.scale == best["scale"])
            ctrl = table[sel & (table.vector == "random")]
            cur = t[(t.layer == str(best["layer"])) & (t.scale == best["scale"])]
            c_lo, c_hi = _rate_ci(ctrl.success) if len(ctrl) else (None, None)
            best |= {"control_success_rate": float(ctrl.success.mean()) if len(ctrl) else None,
                     "control_ci_low": c_lo, "control_ci_high": c_hi,
                     "mean_shift": float(cur["shift"].mean()),
                     "wrong_way": float((cur["shift"] * np.sign(best["scale"]) < 0).mean()),
                     "by_n": {str(n): float(g.success.mean()) for n, g in cur.groupby("n")}}
            mat = np.zeros((K + 1, K + 1), dtype=int)
            for n, a in zip(cur.n, cur.answer):
                mat[n, a] += 1
            transitions[kind] = mat.tolist()
            if len(ctrl):
                cm = np.zeros((K + 1, K + 1), dtype=int)
                for n, a in zip(ctrl.n, ctrl.answer):
                    cm[n, a] += 1
                transitions[f"random@{kind}"] = cm.tolist()
        per_layer = []
        for layer in [str(x) for x in layers]:
            tl = t[(t.layer == layer) & (t.scale > 0)].groupby("scale").success.mean()
            if len(tl):
                per_layer.append({"layer": parse_layer(layer),
                                  "success_rate": float(tl.max()), "scale": float(tl.idxmax())})
        entry["per_layer"] = per_layer
        out[kind] = entry
    # the spec's headline keys: mean-diff N -> N+1 and its random control
    md = out.get("mean-diff", {}).get("best") or {}
    out["best"] = md
    return out, transitions


def _generate_checks(handle, test, eval_idx, vecs, summary, opts, prefix) -> list[dict]:
    """Greedy generation at each vector's best setting (and unsteered): parse rate and success."""
    results = []
    settings = [("none", None, 0.0)] + [(k, summary[k]["best"]["layer"], summary[k]["best"]["scale"])
                                         for k in opts.vectors if k in summary and summary[k].get("best")]
    settings += [("random", s[1], s[2]) for s in settings[1:2]]
    if opts.generate_n is not None:
        eval_idx = eval_idx[:opts.generate_n]
    answers: dict[int, list] = {k: [] for k in range(len(settings))}
    for i0 in range(0, len(eval_idx), opts.batch_size):   # batches outer: one prompt prefix per batch
        c = eval_idx[i0:i0 + opts.batch_size]
        shared = prompt_prefix(handle, test, c) if opts.positions == "last" else None
        for k, (kind, layer, scale) in enumerate(settings):
            if kind == "none":
                v, site = None, Site("resid", "emb")
            else:
                site = Site("resid", layer)
                v = np.stack([vecs[layer].vector(kind, int(test.answers[i]), int(test.answers[i]) + 1) for i in c])
            answers[k] += generate_steered(handle, test, c, site, v, scale if v is not None else 0.0, opts.positions,
                                           opts.max_new_tokens, prefix, shared)
    n = test.answers[eval_idx]
    for k, (kind, layer, scale) in enumerate(settings):
        got = answers[k]
        parsed = np.array([a is not None for a in got])
        success = np.array([a == int(x) + 1 for a, x in zip(got, n)])
        results.append({"vector": kind, "layer": layer, "scale": scale, "n": len(eval_idx),
                        "parse_rate": float(parsed.mean()),
                        "success_rate": float(success.mean()),
                        "correct_rate": float(np.mean([a == int(x) for a, x in zip(got, n)]))})
    return results


def save_steering(result: SteerResult, out: str | Path) -> dict:
    """Write table.parquet, transitions.json, figures and summary.json into `out`."""
    from countlens.io import write_json, write_parquet

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(out / "table.parquet", result.table)
    write_json(out / "transitions.json", result.transitions)
    summary = result.summary | {"figures": [str(p) for p in result.plot(out)]}
    write_json(out / "summary.json", SteerSummary.check(summary, str(out / "summary.json")))
    return summary
