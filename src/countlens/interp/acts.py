"""Activation collection: batched forwards with capture hooks, written in chunks to a float16 store.

Positions (per example, found with the tokenizer's offset mapping on the formatted text, so the
same code serves the word-level organism and byte-level BPE models):
  last    the last token of `handle.format(prompt) + answer_prefix`: the position that predicts
          the count digit (as in patching)
  items   the last token of every list word (the first position at which the word is complete)
  prefix  the last token of the category name: before any list word, so a count probe there
          must be at chance (a causal sanity check)

Work is done in chunks of examples in file order; after each chunk the arrays are flushed and
`progress.json` is updated, so an interrupted run resumes at the first unfinished chunk and
memory stays bounded by one batch. See `countlens.interp.store` for the layout on disk.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from countlens.data.lexicon import load_lexicon
from countlens.data.schema import Example, read_examples
from countlens.data.templates import Template, builtin_templates, load_template
from countlens.errors import InputError
from countlens.models.encoding import encode_prompt
from countlens.models.hooks import capture
from countlens.sites import KINDS, Site, every_layer, parse_layer
from countlens.interp.store import FORMAT, POSITION_KINDS, StoreWriter, site_file
from countlens.models.handle import ModelHandle, keep_logits, load, pad_left, weights_hash

F16_MAX = 65504.0


@dataclass
class PromptRow:
    """One example, resolved: its template, match flags and where its positions are."""

    example: int
    id: str
    line: int
    category: str
    words: list[str]
    match: list[int]
    answer: int
    template: Template
    tokens: list[int] = field(default_factory=list)
    positions: list[tuple[str, int, int]] = field(default_factory=list)  # (kind, item, token)


@dataclass
class ActsSummary:
    out: str
    n_examples: int
    n_rows: int
    sites: list[str]
    positions: list[str]
    resumed_from: int
    done_examples: int
    complete: bool
    seconds: float
    bytes_on_disk: int
    n_clipped: int
    label_disagreements: int  # rows whose `answer` differs from their match flags' sum (kept as is)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- rows

def _resolve_template(ex: Example, override: Template | None, native: Template | None, path: str,
                      line: int, builtins: dict[str, Template]) -> Template:
    cands = [override] if override else [builtins.get(ex.template or ""), native, builtins["seed-v1"]]
    for t in cands:
        if t is not None and t.render(ex.category, ex.word_list) == ex.prompt:
            return t
    names = ", ".join(t.name for t in cands if t is not None)
    raise InputError(f"prompt is not template {names} rendered from category and word_list; pass --template",
                     file=path, line=line, field="prompt")


def read_rows(data: str | Path | Sequence[dict], n: int | None = None, *, template: str | Template | None = None,
              native: Template | None = None, lexicon: str = "clean-v1") -> list[PromptRow]:
    """Examples of a JSONL file (or row dicts) with their template and per-word match flags.

    Match flags come from the row's `match_positions` when present, else from the lexicon. The
    final count is the row's `answer` as given (`countlens data validate --fix` relabels a file).
    """
    override = load_template(template) if template is not None else None
    if isinstance(data, (str, Path)):
        path = str(data)
        items = list(read_examples(path, n))
    else:
        path = "<rows>"
        items = [(i + 1, Example.model_validate(r)) for i, r in enumerate(list(data)[:n])]
    lex = None
    rows = []
    builtins = builtin_templates()
    for k, (line, ex) in enumerate(items):
        tpl = _resolve_template(ex, override, native, path, line, builtins)
        if ex.match_positions is not None:
            hit = set(ex.match_positions)
        else:
            lex = lex or load_lexicon(lexicon)
            if ex.category not in lex.categories:
                raise InputError(f"unknown category '{ex.category}' for lexicon '{lex.name}'", file=path,
                                 line=line, field="category")
            members = set(lex.categories[ex.category])
            hit = {i for i, w in enumerate(ex.word_list) if w in members}
        rows.append(PromptRow(example=k, id=ex.id or f"line-{line}", line=line, category=ex.category,
                              words=list(ex.word_list), match=[int(i in hit) for i in range(len(ex.word_list))],
                              answer=ex.answer, template=tpl))
    if not rows:
        raise InputError("no examples", file=path)
    return rows


def locate(handle: ModelHandle, row: PromptRow, kinds: Sequence[str]) -> None:
    """Fill row.tokens and row.positions (kind, item, token index) for the requested kinds."""
    enc = encode_prompt(handle, row.template, row.category, row.words)
    row.tokens = enc.ids
    pos: list[tuple[str, int, int]] = []
    for kind in kinds:
        if kind == "last":
            pos.append(("last", -1, enc.answer))
        elif kind == "prefix":
            pos.append(("prefix", -1, enc.category))
        elif kind == "items":
            pos += [("items", i, t) for i, t in enumerate(enc.items)]
    row.positions = pos


def tables(rows: list[PromptRow]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(index, examples) frames of the store; index rows are contiguous per example."""
    idx: dict[str, list] = {k: [] for k in ("row", "example", "position", "item", "token", "running_count",
                                             "final_count", "word", "is_match")}
    r = 0
    for row in rows:
        running = np.cumsum(row.match).tolist()
        for kind, item, token in row.positions:
            idx["row"].append(r)
            idx["example"].append(row.example)
            idx["position"].append(kind)
            idx["item"].append(item)
            idx["token"].append(token)
            idx["running_count"].append(running[item] if kind == "items" else (row.answer if kind == "last" else 0))
            idx["final_count"].append(row.answer)
            idx["word"].append(row.words[item] if kind == "items" else "")
            idx["is_match"].append(bool(row.match[item]) if kind == "items" else False)
            r += 1
    index = pd.DataFrame(idx).astype({"row": "int64", "example": "int64", "item": "int32", "token": "int32",
                                      "running_count": "int32", "final_count": "int32"})
    examples = pd.DataFrame({
        "example": [x.example for x in rows], "id": [x.id for x in rows], "line": [x.line for x in rows],
        "category": [x.category for x in rows], "words": [x.words for x in rows],
        "match": [x.match for x in rows], "answer": [x.answer for x in rows],
        "list_length": [len(x.words) for x in rows], "n_tokens": [len(x.tokens) for x in rows],
        "template": [x.template.name for x in rows]})
    return index, examples


# --------------------------------------------------------------------------------------------- sites

def parse_sites(spec: str | Sequence[str], handle: ModelHandle,
                layers: Sequence[Any] | None = None) -> list[Site]:
    """"resid,attn" -> every layer of each kind (resid includes "emb"); "resid.3" -> one site."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    want = None if layers is None else {parse_layer(x) for x in layers}
    out: list[Site] = []
    for item in items:
        kind, _, layer = item.partition(".")
        if kind not in KINDS:
            raise InputError(f"unknown site '{item}' (kinds: {', '.join(KINDS)}; e.g. resid or resid.3)",
                             field="sites")
        if layer:
            try:
                lays = [parse_layer(layer)]
            except ValueError:
                raise InputError(f"bad layer in site '{item}'", field="sites") from None
        else:
            lays = every_layer(handle.n_layers) if kind == "resid" else list(range(handle.n_layers))
        for lay in lays:
            if want is not None and lay not in want:
                continue
            if lay != "emb" and not 0 <= lay < handle.n_layers:
                raise InputError(f"layer {lay} out of range (model has {handle.n_layers} blocks)", field="sites")
            site = Site(kind, lay)
            if site not in out:
                out.append(site)
    if not out:
        raise InputError("no sites selected", field="sites")
    return out


def parse_positions(spec: str | Sequence[str]) -> list[str]:
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    bad = [p for p in items if p not in POSITION_KINDS]
    if bad or not items:
        raise InputError(f"unknown position kind(s) {bad} (choose from {', '.join(POSITION_KINDS)})",
                         field="positions")
    return [p for p in POSITION_KINDS if p in items]


# ------------------------------------------------------------------------------------------- forward

def forward(handle: ModelHandle, batch: dict[str, torch.Tensor]) -> Any:
    """One no-grad forward that skips the full-sequence logits when the model allows it."""
    with torch.inference_mode():
        return handle.model(**batch, use_cache=False, **keep_logits(handle.model))


def batches(rows: list[PromptRow], batch_size: int) -> list[list[PromptRow]]:
    """Rows sorted by length (less padding), cut into batches."""
    order = sorted(rows, key=lambda r: len(r.tokens))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def encode_batch(handle: ModelHandle, group: list[PromptRow]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Left-padded batch and the [B, P] padded-sequence positions to capture (ragged rows repeat)."""
    batch = pad_left([r.tokens for r in group], handle.pad_id, handle.device)
    width = batch["input_ids"].shape[1]
    p = max(len(r.positions) for r in group)
    pos = torch.empty((len(group), p), dtype=torch.long)
    for j, r in enumerate(group):
        shift = width - len(r.tokens)
        toks = [shift + t for _, _, t in r.positions]
        pos[j] = torch.tensor(toks + [toks[-1]] * (p - len(toks)))
    return batch, pos


def _to_f16(x: torch.Tensor) -> tuple[np.ndarray, int]:
    x = x.flatten(2) if x.dim() == 4 else x  # heads -> n_heads * head_dim
    x = x.float()
    clipped = int((x.abs() > F16_MAX).sum())
    return x.clamp(-F16_MAX, F16_MAX).to(torch.float16).numpy(), clipped


def _sha_rows(rows: list[PromptRow]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r.id, r.category, r.words, r.answer, r.match, r.template.name]).encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------- collect

def collect_activations(model: str | ModelHandle, data: str | Path | Sequence[dict], out: str | Path, *,
                        sites: str | Sequence[str] = "resid", positions: str | Sequence[str] = ("last", "items"),
                        layers: Sequence[Any] | None = None, n: int | None = None, batch_size: int = 16,
                        chunk_size: int = 256, template: str | Template | None = None,
                        lexicon: str = "clean-v1", device: str | None = None, dtype: str | None = None,
                        device_map: str | None = None, prompt_format: str = "auto", max_chunks: int | None = None,
                        progress: bool = True) -> ActsSummary:
    """Capture `sites` at `positions` for the first `n` examples of `data` into the store at `out`.

    Resumable: rerunning with the same arguments continues after the last finished chunk; a
    finished store is left as is; a store of another model/data/sites is an InputError.
    `max_chunks` stops after that many chunks (the store stays incomplete and resumable).
    """
    from tqdm.auto import tqdm

    t0 = time.time()
    handle = model if isinstance(model, ModelHandle) else load(model, device=device, dtype=dtype,
                                                                 device_map=device_map, prompt_format=prompt_format)
    kinds = parse_positions(positions)
    site_list = parse_sites(sites, handle, layers)
    rows = read_rows(data, n, template=template, native=handle.native_template, lexicon=lexicon)
    for r in rows:
        locate(handle, r, kinds)
    out = Path(out)
    fingerprint = {"model_path": str(handle.path), "weights": weights_hash(handle.path),
                   "prompt_format": handle.prompt_format, "dtype": str(next(handle.model.parameters()).dtype),
                   "data": _sha_rows(rows), "sites": [str(s) for s in site_list], "positions": kinds}
    writer, resumed = _open_or_create(out, handle, rows, site_list, kinds, fingerprint, data, chunk_size, batch_size)
    done = writer.progress()
    n_clipped = int(writer.meta.get("n_clipped", 0))
    if not writer.meta.get("complete") or done < len(rows):
        starts = np.cumsum([0] + [len(r.positions) for r in rows])
        bar = tqdm(total=len(rows), initial=done, desc="acts", unit="ex", disable=not progress, file=sys.stderr,
                   dynamic_ncols=True)
        chunks = 0
        for c0 in range(done, len(rows), chunk_size):
            if max_chunks is not None and chunks >= max_chunks:
                break
            chunk = rows[c0:c0 + chunk_size]
            for group in batches(chunk, batch_size):
                batch, pos = encode_batch(handle, group)
                with capture(handle, site_list, positions=pos) as got:
                    forward(handle, batch)
                for site in site_list:
                    vals, clipped = _to_f16(got[site])
                    n_clipped += clipped
                    for j, r in enumerate(group):
                        writer.write(str(site), int(starts[r.example]), vals[j, :len(r.positions)])
                bar.update(len(group))
            writer.flush()
            writer.set_progress(c0 + len(chunk))
            writer.meta["n_clipped"] = n_clipped
            chunks += 1
        bar.close()
        done = writer.progress()
        if done >= len(rows):
            writer.finish(n_clipped=n_clipped, seconds=round(time.time() - t0, 2))
    complete = done >= len(rows)
    size = sum(site_file(out, str(s)).stat().st_size for s in site_list)
    return ActsSummary(out=str(out), n_examples=len(rows), n_rows=int(writer.meta["n_rows"]),
                       sites=[str(s) for s in site_list], positions=kinds, resumed_from=resumed,
                       done_examples=done, complete=complete, seconds=round(time.time() - t0, 2),
                       bytes_on_disk=size, n_clipped=n_clipped,
                       label_disagreements=sum(r.answer != sum(r.match) for r in rows))


def _site_dims(handle: ModelHandle, row: PromptRow, site_list: list[Site]) -> dict[str, int]:
    """Feature size of each site, from one real forward (works for any architecture)."""
    batch, pos = encode_batch(handle, [row])
    with capture(handle, site_list, positions=pos[:, :1]) as got:
        forward(handle, batch)
    return {str(s): int(np.prod(got[s].shape[2:])) for s in site_list}


def _open_or_create(out: Path, handle: ModelHandle, rows: list[PromptRow], site_list: list[Site],
                    kinds: list[str], fingerprint: dict, data: Any, chunk_size: int,
                    batch_size: int) -> tuple[StoreWriter, int]:
    meta_path = out / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("fingerprint") != fingerprint:
            old = meta.get("fingerprint") or {}
            diff = [k for k in fingerprint if old.get(k) != fingerprint[k]] or ["format"]
            raise InputError(f"holds activations of another run (differs in: {', '.join(diff)}); "
                             "use another --out or remove it", file=str(out))
        w = StoreWriter(out, meta)
        return w, w.progress()
    dims = _site_dims(handle, rows[0], site_list)
    index, examples = tables(rows)
    meta = {"format": FORMAT, "model": handle.name, "model_path": str(handle.path),
            "prompt_format": handle.prompt_format, "data": str(data) if isinstance(data, (str, Path)) else "<rows>",
            "n_examples": len(rows), "n_rows": len(index),
            "sites": [{"name": str(s), "kind": s.kind, "layer": s.layer, "dim": dims[str(s)]} for s in site_list],
            "positions": kinds, "dtype": "float16", "chunk_size": chunk_size, "batch_size": batch_size,
            "n_layers": handle.n_layers, "fingerprint": fingerprint, "n_clipped": 0,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return StoreWriter(out, meta, index, examples), 0
