"""Hook sites on a handle's decoder blocks, as context managers over plain PyTorch hooks.

Layer L always means the *output* of decoder block L (0-based); layer "emb" is the input of
block 0 (token embeddings plus whatever the architecture adds before the first block:
position embeddings for GPT-2, the sqrt(d) scale for Gemma). HF's `hidden_states[L+1]` is
our layer L except for the last one, which transformers returns after the final norm.

Site kinds:
  resid  residual stream after block L (or "emb")
  attn   attention output of block L (before it is added to the residual; for Gemma, before the
         post-attention norm; for GPT-NeoX's parallel residual, the attention branch)
  mlp    MLP output of block L (likewise before Gemma's post-feedforward norm)
  head   input of the attention output projection of block L, shape [..., n_heads, head_dim]
         (head_dim need not be hidden / n_heads: Gemma's is set on its own)

Modules are found by name (`self_attn` / `attn` / `attention`, `o_proj` / `c_proj` / `dense`), so
Llama, Qwen2, Mistral, Phi-3 (fused qkv and gate_up, same `o_proj`), Gemma 2/3, GPT-2 and GPT-NeoX
take the same code path (`tests/test_architectures.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch

Layer = Union[int, str]  # 0..L-1 or "emb"
KINDS = ("resid", "attn", "mlp", "head")
ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
OUT_PROJ_NAMES = ("o_proj", "c_proj", "dense", "out_proj")


@dataclass(frozen=True)
class Site:
    kind: str
    layer: Layer

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"site kind must be one of {KINDS}, got {self.kind!r}")
        if self.layer == "emb" and self.kind != "resid":
            raise ValueError("layer 'emb' exists only for the residual stream")

    def __str__(self) -> str:
        return f"{self.kind}.{self.layer}"


def _child(module: torch.nn.Module, names: Sequence[str], what: str) -> torch.nn.Module:
    for n in names:
        m = getattr(module, n, None)
        if isinstance(m, torch.nn.Module):
            return m
    raise ValueError(f"cannot find the {what} of {type(module).__name__} (looked for {', '.join(names)})")


def attention_module(block: torch.nn.Module) -> torch.nn.Module:
    return _child(block, ATTN_NAMES, "attention module")


def out_proj_module(block: torch.nn.Module) -> torch.nn.Module:
    return _child(attention_module(block), OUT_PROJ_NAMES, "attention output projection")


def n_heads(model: Any) -> int:
    cfg = model.config
    return getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head")


def layers_of(handle: Any) -> list[Layer]:
    """["emb", 0, 1, ..., L-1]: every residual layer of a handle."""
    return ["emb", *range(handle.n_layers)]


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, tuple) else x


def _with_first(x: Any, new: torch.Tensor) -> Any:
    return (new, *x[1:]) if isinstance(x, tuple) else new


@contextlib.contextmanager
def hook(handle: Any, site: Site, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
    """Call fn(x) on the site's tensor x [batch, seq, ...] in every forward; a returned tensor replaces x.

    For `head` sites x is [batch, seq, n_heads, head_dim] (a view of the o_proj input).
    """
    blocks = handle.blocks
    if site.layer == "emb" or site.kind == "head":
        if site.layer == "emb":
            module = blocks[0]
            reshape = None
        else:
            module = out_proj_module(blocks[site.layer])
            h = n_heads(handle.model)
            reshape = h

        def pre(mod, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            view = x.unflatten(-1, (reshape, -1)) if reshape else x
            new = fn(view)
            if new is None:
                return None
            new = new.flatten(-2) if reshape else new
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        handles = [module.register_forward_pre_hook(pre, with_kwargs=True)]
    else:
        block = blocks[site.layer]
        module = {"resid": block, "attn": attention_module(block) if site.kind == "attn" else None,
                  "mlp": getattr(block, "mlp", None)}[site.kind]
        if module is None:
            raise ValueError(f"{type(block).__name__} has no {site.kind} module")

        def post(mod, args, output):
            new = fn(_first(output))
            return None if new is None else _with_first(output, new)

        handles = [module.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def gather_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x[b, positions[b, p]] for a [B, P] index (or [B] for one position each) -> [B, P, ...]."""
    if positions.dim() == 1:
        positions = positions[:, None]
    idx = positions.to(x.device)
    batch = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(idx)
    return x[batch, idx]


@contextlib.contextmanager
def capture(handle: Any, sites: Sequence[Site], positions: torch.Tensor | None = None,
            to_cpu: bool = True) -> Iterator[dict[Site, torch.Tensor]]:
    """Record each site's tensor (at `positions` [B, P] if given) into the yielded dict."""
    store: dict[Site, torch.Tensor] = {}
    with contextlib.ExitStack() as stack:
        for site in sites:
            def fn(x, site=site):
                v = x.detach() if positions is None else gather_positions(x.detach(), positions)
                store[site] = v.cpu() if to_cpu else v
                return None
            stack.enter_context(hook(handle, site, fn))
        yield store


@contextlib.contextmanager
def replace(handle: Any, site: Site, positions: torch.Tensor, values: torch.Tensor,
            head: int | None = None) -> Iterator[None]:
    """Overwrite the site at positions [B, P] with values [B, P, ...] (one head's slice if `head`)."""
    def fn(x):
        x = x.clone()
        pos = positions if positions.dim() == 2 else positions[:, None]
        pos = pos.to(x.device)
        b = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(pos)
        v = values.to(x.device, x.dtype)
        if head is None:
            x[b, pos] = v
        else:
            x[b, pos, head] = v
        return x
    with hook(handle, site, fn):
        yield


@contextlib.contextmanager
def add(handle: Any, site: Site, vector: torch.Tensor, scale: float = 1.0,
        positions: torch.Tensor | None = None) -> Iterator[None]:
    """Add scale * vector at positions [B, P] (every position when None)."""
    def fn(x):
        v = (scale * vector).to(x.device, x.dtype)
        if positions is None:
            return x + v
        x = x.clone()
        pos = positions if positions.dim() == 2 else positions[:, None]
        pos = pos.to(x.device)
        b = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(pos)
        x[b, pos] = x[b, pos] + v
        return x
    with hook(handle, site, fn):
        yield
