"""A thin layer over transformers' KV cache, whose argument name and methods change across 5.x.

Only `DynamicCache(config=...)`, `.update(k, v, layer)` and the per-layer `keys`/`values`
tensors are used: caches are rebuilt from tensors we slice ourselves, so no `crop` or
`batch_repeat_interleave` semantics (which changed in 5.x) are relied on.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

import torch

from countlens.models.handle import keep_logits


@lru_cache(maxsize=None)
def _cache_kwarg(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def forward(model: Any, cache: Any | None = None, last_logits: bool = False, **kwargs: Any) -> Any:
    """model(**kwargs) with `cache` passed under this transformers version's name, use_cache on.

    last_logits: project onto the vocabulary at the last position only (`keep_logits`).
    """
    if cache is not None:
        kwargs[_cache_kwarg(type(model))] = cache
    if last_logits:
        kwargs |= keep_logits(model)
    kwargs.setdefault("use_cache", True)
    return model(**kwargs)


def output_cache(out: Any) -> Any:
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


def kv_tensors(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(keys, values)] per layer, each [batch, kv_heads, seq, head_dim]."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return [(k, v) for k, v in cache]  # older iterable caches


def build_cache(kvs: list[tuple[torch.Tensor, torch.Tensor]], config: Any, length: int | None = None,
                rows: torch.Tensor | None = None) -> Any | None:
    """A fresh DynamicCache holding kvs[:, :, :length] for the batch `rows` (None when length is 0)."""
    from transformers import DynamicCache

    if length == 0:
        return None
    cache = DynamicCache(config=config)
    for i, (k, v) in enumerate(kvs):
        if length is not None:
            k, v = k[:, :, :length], v[:, :, :length]
        if rows is not None:
            k, v = k.index_select(0, rows.to(k.device)), v.index_select(0, rows.to(v.device))
        cache.update(k, v, i)
    return cache
