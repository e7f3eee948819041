"""A thin layer over transformers' KV cache, whose argument name and methods change across 5.x.

Only `DynamicCache()` / `DynamicCache(config=...)`, `.update(k, v, layer)` and the per-layer
`keys`/`values` tensors are used: caches are rebuilt from tensors we slice ourselves, so no
`crop` or `batch_repeat_interleave` semantics (which changed in 5.x) are relied on.

Sliding-window layers (Gemma 2/3, Mistral, Phi-3 with `sliding_window`, chunked attention): a
model's own `DynamicCache(config=...)` keeps only the last `window - 1` positions of those layers
(`DynamicSlidingWindowLayer`), so its tensors cannot give back an arbitrary prefix. Forwards whose
KV we slice later therefore run with `full_cache()` (plain `DynamicLayer`s that keep every
position; the model's masks still apply the window, since they come from the config and the
cache's mask sizes: kv offset 0, full length). `build_cache` then feeds a prefix of `length`
positions to `DynamicCache(config=...)` in one `update`, which leaves every layer exactly as the
model's own cache would be after a prefill of those positions (sliding layers: the last
`window - 1` keys, `cumulative_length = length`, hence the same mask offset).

Sharing a prefix between rows: `DynamicLayer.update` concatenates (`torch.cat`) the stored keys
with the new ones, so whatever strides the tensors given to `build_cache` have (an `expand()`ed
view included), every row owns a materialised copy of its prefix, and during a forward every
layer holds a [rows, kv_heads, prefix + suffix, head_dim] copy until the forward returns. That
copy is unavoidable through the cache API; callers bound it by chunking rows (`row_bytes`).
`build_cache` only avoids the extra gather copy when all rows are the same sequence.
"""

from __future__ import annotations

import inspect
import weakref
from functools import lru_cache
from typing import Any

import torch

from countlens.models import devices
from countlens.models.handle import keep_logits


@lru_cache(maxsize=None)
def cache_kwarg(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def full_cache() -> Any:
    """An empty cache that keeps every position of every layer (sliding-window layers included)."""
    from transformers import DynamicCache

    return DynamicCache()


def forward(model: Any, cache: Any | None = None, last_logits: bool = False, **kwargs: Any) -> Any:
    """model(**kwargs) with `cache` passed under this transformers version's name, use_cache on.

    Without a cache, a `full_cache()` is used, so `kv_tensors` of the output cache hold every
    position even on sliding-window layers. last_logits: project onto the vocabulary at the last
    position only (`keep_logits`).
    """
    kwargs.setdefault("use_cache", True)
    if cache is None and kwargs["use_cache"]:
        cache = full_cache()
    if cache is not None:
        inner = devices.hf_model(model)                                 # the nnsight engine's stand-in
        inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # a peft wrapper
        kwargs[cache_kwarg(type(inner))] = cache
    if last_logits:
        kwargs |= keep_logits(model)
    return model(**kwargs)


def output_cache(out: Any) -> Any:
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


def kv_tensors(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(keys, values)] per layer, each [batch, kv_heads, seq, head_dim], every position seen.

    Raises if a layer dropped positions (a sliding-window layer of a `DynamicCache(config=...)`):
    its keys could not be sliced into prefixes; run the forward with `full_cache()`.
    """
    if not hasattr(cache, "layers"):
        return [(k, v) for k, v, *_ in cache]  # older iterable caches
    out = []
    for i, layer in enumerate(cache.layers):
        seen = layer.get_seq_length()
        if layer.keys.shape[-2] != seen:
            raise ValueError(f"cache layer {i} ({type(layer).__name__}) keeps {layer.keys.shape[-2]} of {seen} "
                             "positions; run the forward with kvcache.full_cache()")
        out.append((layer.keys, layer.values))
    return out


def sliding_windows(config: Any) -> list[int | None]:
    """Per layer, the sliding window the model's own cache applies (None: keeps every position)."""
    from transformers import DynamicCache

    return [getattr(layer, "sliding_window", None) if getattr(layer, "is_sliding", False) else None
            for layer in DynamicCache(config=config).layers] or [None]


def row_bytes(kvs: list[tuple[torch.Tensor, torch.Tensor]], config: Any, prefix: int, suffix: int) -> int:
    """Bytes of KV one row holds at the end of a forward of `suffix` positions after a `prefix` cache.

    Per layer 2 x kv_heads x head_dim x dtype bytes per position, for prefix + suffix positions.
    A sliding-window layer keeps at most window - 1 prefix positions after its update, but as a
    view of the concatenation, and holds the whole prefix copy before it: max of the two.
    """
    windows = sliding_windows(config)
    windows = windows + [None] * (len(kvs) - len(windows))
    total = 0
    for (k, v), w in zip(kvs, windows):
        held = prefix + suffix if w is None else max(prefix, min(prefix, w - 1) + suffix)
        per_pos = k[0, :, 0].numel() * k.element_size() + v[0, :, 0].numel() * v.element_size()
        total += per_pos * held
    return total


def build_cache(kvs: list[tuple[torch.Tensor, torch.Tensor]], config: Any, length: int | None = None,
                rows: torch.Tensor | None = None) -> Any | None:
    """A fresh DynamicCache(config=...) holding kvs[:, :, :length] for the batch `rows` (None when length is 0).

    It is the cache the model itself would hold after a prefill of those `length` positions.
    """
    from transformers import DynamicCache

    if length == 0:
        return None
    same = rows is not None and len(rows) > 0 and bool((rows == rows[0]).all())
    cache = DynamicCache(config=config)
    for i, (k, v) in enumerate(kvs):
        if length is not None:
            k, v = k[:, :, :length], v[:, :, :length]
        if same:  # one sequence for every row: a stride-0 view, copied once by update's cat
            r = int(rows[0])
            k, v = k[r:r + 1].expand(len(rows), -1, -1, -1), v[r:r + 1].expand(len(rows), -1, -1, -1)
        elif rows is not None:
            k, v = k.index_select(0, rows.to(k.device)), v.index_select(0, rows.to(v.device))
        cache.update(k, v, i)
    return cache


def shared_prefix_forward(model: Any, kvs: list[tuple[torch.Tensor, torch.Tensor]], prefix: int,
                          token: torch.Tensor, position: torch.Tensor, mask2d: torch.Tensor, queries: int) -> Any:
    """`queries` independent copies of each row's next token over one shared prefix cache: [B, Q] logits.

    Row b's prefix KV (the first `prefix` positions) is stored once; its Q query tokens (the same
    token id at the same position) each attend to the prefix and to themselves only, through a
    4D additive mask, so a hook can treat query q as an independent run (a patch or a steering
    vector per q) without a KV copy per run. Returns the model output (logits of all Q positions).
    The caller checks `shared_prefix_ok` once per model: attention implementations that ignore
    a custom 4D mask, or sliding windows shorter than the prompt, must use per-row caches.
    """
    B = token.shape[0]
    dtype = kvs[0][0].dtype
    neg = torch.finfo(dtype).min
    pre = torch.where(mask2d[:, :prefix].bool(), 0.0, neg).to(dtype)          # [B, prefix]
    eye = torch.full((queries, queries), neg, dtype=dtype, device=pre.device).fill_diagonal_(0.0)
    mask = torch.cat([pre[:, None, None, :].expand(B, 1, queries, prefix),
                      eye[None, None].expand(B, 1, queries, queries)], -1)
    kwargs = {"logits_to_keep": queries} if keep_logits(model) else {}
    return forward(model, cache=build_cache(kvs, model.config, prefix), input_ids=token[:, None].expand(B, queries),
                   position_ids=position[:, None].expand(B, queries), attention_mask=mask, **kwargs)


_SHARED_OK: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


def shared_prefix_ok(model: Any, kvs: list[tuple[torch.Tensor, torch.Tensor]], prefix: int, token: torch.Tensor,
                     position: torch.Tensor, mask2d: torch.Tensor, reference_logits: torch.Tensor) -> bool:
    """Whether shared_prefix_forward reproduces the plain next-token logits (to 1e-4) for this model;
    checked on the batch's first row, once per model object."""
    if model not in _SHARED_OK:
        one = [(k[:1, :, :prefix], v[:1, :, :prefix]) for k, v in kvs]
        _SHARED_OK[model] = _check_shared(model, one, prefix, token, position, mask2d, reference_logits)
    return _SHARED_OK[model]


def _check_shared(model: Any, kvs, prefix: int, token, position, mask2d, reference_logits) -> bool:
    windows = [w for w in sliding_windows(model.config) if w is not None]
    if windows and min(windows) <= prefix + 1:
        return False
    try:
        out = shared_prefix_forward(model, kvs, prefix, token[:1], position[:1], mask2d[:1], 2)
    except Exception:  # noqa: BLE001  (an attention implementation that rejects a 4D mask)
        return False
    got = out.logits[0, -2:].float()
    want = reference_logits[:1].float().expand_as(got)
    return bool((got - want).abs().max() < 1e-4)
