"""The one hook layer: read and edit a site's tensor during a forward, hooks always removed.

Like baukit's `nethook.Trace` (`retain_output` / `edit_output`), everything is built from two
primitives on a handle's decoder blocks:

  capture(handle, sites, positions)      record each site's tensor (at positions) into a dict
  edit(handle, site, fn)                  fn(x) -> x' replaces the site's tensor in every forward

and the two edits every stage uses are written once on top of `edit`:

  replace(handle, site, values, positions, rows, heads)   overwrite (activation patching, interchange)
  add(handle, site, delta, positions, rows)               add a vector (steering)

Positions (`Positions`): None (every position), an int or a list of ints (the same indices in every
row; negative ones count from the end), a LongTensor [R] (one index per row) or [R, P] (P per row),
or (`add` only) a BoolTensor [R, T] mask. `rows` restricts an edit to some rows of the batch;
`heads` (or a head site, `Site("head", L, h)`) to one query head per row. `prompt_only` edits the
first forward inside the context only (the prefill of `generate`); `new_tokens` (add) also edits
every position of the later forwards (the tokens `generate` adds).

No other module registers a hook (`tests/test_hooks.py` greps for it). `Hooks` is the interface; the
PyTorch implementation here is its first backend, written so that another (nnsight's traces) can
implement the same four calls. Modules are found by name (`self_attn` / `attn` / `attention`,
`o_proj` / `c_proj` / `dense`), so Llama, Qwen2, Mistral, Phi-3, Gemma 2/3, GPT-2 and GPT-NeoX take
the same code path (`tests/test_architectures.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ContextManager, Protocol, Union

import torch

from countlens.sites import Site

Positions = Union[None, int, Sequence[int], torch.Tensor]
ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
OUT_PROJ_NAMES = ("o_proj", "c_proj", "dense", "out_proj")


class Hooks(Protocol):
    """What an engine backend implements; every intervention in countlens is one of these calls."""

    def capture(self, handle: Any, sites: Sequence[Site], positions: Positions = None,
                to_cpu: bool = True, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
                ) -> ContextManager[dict[Site, torch.Tensor]]: ...

    def edit(self, handle: Any, site: Site, fn: Callable[[torch.Tensor], torch.Tensor | None],
             prompt_only: bool = False) -> ContextManager[None]: ...

    def replace(self, handle: Any, site: Site, values: torch.Tensor, positions: Positions = None,
                rows: torch.Tensor | None = None, heads: torch.Tensor | None = None,
                prompt_only: bool = False) -> ContextManager[None]: ...

    def add(self, handle: Any, site: Site, delta: torch.Tensor, positions: Positions = None,
            rows: torch.Tensor | None = None, prompt_only: bool = False,
            new_tokens: bool = False) -> ContextManager[None]: ...


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


def site_module(blocks: Sequence[torch.nn.Module], site: Site) -> tuple[torch.nn.Module, bool]:
    """(module, whether the site is its input) holding a site's tensor, for every backend: "emb" is
    block 0's input, a head site the attention output projection's input, attn / mlp / resid the
    attention module's, the MLP's and the block's output."""
    if site.layer == "emb":
        return blocks[0], True
    block = blocks[site.layer]
    if site.kind == "head":
        return out_proj_module(block), True
    module = {"resid": block, "attn": attention_module(block) if site.kind == "attn" else None,
              "mlp": getattr(block, "mlp", None)}[site.kind]
    if module is None:
        raise ValueError(f"{type(block).__name__} has no {site.kind} module")
    return module, False


def n_heads(model: Any) -> int:
    """Query heads (on GQA models more than the key/value heads)."""
    cfg = model.config
    return getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head")


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, tuple) else x


def _with_first(x: Any, new: torch.Tensor) -> Any:
    return (new, *x[1:]) if isinstance(x, tuple) else new


def _index(x: torch.Tensor, rows: torch.Tensor | None, positions: Positions) -> tuple[Any, Any]:
    """(row index, position index) that select x[rows, positions] -> [R, P, ...] by broadcasting."""
    R = x.shape[0] if rows is None else len(rows)
    b = (torch.arange(x.shape[0]) if rows is None else torch.as_tensor(rows)).to(x.device)[:, None]
    if positions is None:
        p = torch.arange(x.shape[1], device=x.device)[None, :]
    elif isinstance(positions, int):
        p = torch.tensor([[positions]], device=x.device)
    elif isinstance(positions, torch.Tensor):
        p = positions.to(x.device, torch.long)
        p = p[:, None] if p.dim() == 1 else p
        if p.shape[0] not in (1, R):
            raise ValueError(f"positions for {p.shape[0]} rows, the edit has {R}")
    else:
        p = torch.tensor([list(positions)], device=x.device, dtype=torch.long)
    return b, p % x.shape[1]


def _fit(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values as [R, P, ...] for a target like [R, P, ...] (a missing P axis is one position)."""
    v = values.to(like.device, like.dtype)
    return v.unsqueeze(1) if v.dim() == like.dim() - 1 else v


class TorchHooks:
    """The PyTorch backend: forward hooks and pre-hooks on the handle's decoder blocks."""

    @contextlib.contextmanager
    def edit(self, handle: Any, site: Site, fn: Callable[[torch.Tensor], torch.Tensor | None],
             prompt_only: bool = False) -> Iterator[None]:
        """Call fn(x) on the site's tensor x [batch, seq, ...] in every forward (the first only when
        `prompt_only`); a returned tensor replaces x. Head sites see [batch, seq, n_heads, head_dim]."""
        site = site.module_site
        calls = [0]

        def apply(x: torch.Tensor) -> torch.Tensor | None:
            calls[0] += 1
            if prompt_only and calls[0] > 1:
                return None
            return fn(x)

        module, reads_input = site_module(handle.blocks, site)
        if reads_input:
            h = None if site.layer == "emb" else n_heads(handle.model)

            def pre(mod, args, kwargs):
                x = args[0] if args else kwargs["hidden_states"]
                new = apply(x.unflatten(-1, (h, -1)) if h else x)
                if new is None:
                    return None
                new = new.flatten(-2) if h else new
                return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

            handles = [module.register_forward_pre_hook(pre, with_kwargs=True)]
        else:
            def post(mod, args, output):
                new = apply(_first(output))
                return None if new is None else _with_first(output, new)

            handles = [module.register_forward_hook(post)]
        try:
            yield
        finally:
            for hd in handles:
                hd.remove()

    @contextlib.contextmanager
    def capture(self, handle: Any, sites: Sequence[Site], positions: Positions = None,
                to_cpu: bool = True, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
                ) -> Iterator[dict[Site, torch.Tensor]]:
        """Record each site's tensor (detached; at `positions`: [B, P, ...]) into the yielded dict;
        a later forward overwrites it. A head site records its one head [B, P, head_dim].
        `reduce(value)` is recorded instead when given (under nnsight it runs inside the trace)."""
        store: dict[Site, torch.Tensor] = {}
        with contextlib.ExitStack() as stack:
            for site in sites:
                def fn(x: torch.Tensor, site: Site = site) -> None:
                    v = x.detach()
                    if positions is not None:
                        b, p = _index(v, None, positions)
                        v = v[b, p]
                    if site.head is not None:
                        v = v[..., site.head, :]
                    v = reduce(v) if reduce is not None else v
                    store[site] = v.cpu() if to_cpu else v
                stack.enter_context(self.edit(handle, site, fn))
            yield store

    def replace(self, handle: Any, site: Site, values: torch.Tensor, positions: Positions = None,
                rows: torch.Tensor | None = None, heads: torch.Tensor | None = None,
                prompt_only: bool = False) -> ContextManager[None]:
        """Overwrite x[rows, positions] (one head per row with `heads` [R] or a head site) with values
        [R, P, ...] (or [R, ...] for one position each); gradients flow through the rest of x."""
        if heads is not None and site.head is not None:
            raise ValueError("give the head in the site or in `heads`, not both")

        def fn(x: torch.Tensor) -> torch.Tensor:
            x = x.clone()
            b, p = _index(x, rows, positions)
            if heads is None and site.head is None:
                x[b, p] = _fit(values, x[b, p])
            else:
                h = torch.as_tensor(site.head if heads is None else heads).to(x.device)
                h = h.view(-1, 1) if h.dim() else h
                x[b, p, h] = _fit(values, x[b, p, h])
            return x
        return self.edit(handle, site, fn, prompt_only=prompt_only)

    def add(self, handle: Any, site: Site, delta: torch.Tensor, positions: Positions = None,
            rows: torch.Tensor | None = None, prompt_only: bool = False,
            new_tokens: bool = False) -> ContextManager[None]:
        """x[rows, positions] += delta: [d] for every row, [R, d] per row or [R, T, d] per position
        (positions None). `new_tokens`: the forwards after the first (generation steps) get delta at
        every position; otherwise they get the same positions (none with `prompt_only`)."""
        if prompt_only and new_tokens:
            raise ValueError("prompt_only and new_tokens exclude each other")
        if site.head is not None:
            raise ValueError("add edits a whole site; add to a head through replace")
        calls = [0]

        def fn(x: torch.Tensor) -> torch.Tensor:
            calls[0] += 1
            d = delta.to(x.device, x.dtype)
            per_row = d if d.dim() == 3 else (d[:, None, :] if d.dim() == 2 else d[None, None, :])
            if calls[0] > 1 and new_tokens:
                return x.index_add(0, torch.as_tensor(rows).to(x.device), per_row.expand(len(rows), x.shape[1], -1)) \
                    if rows is not None else x + per_row
            if isinstance(positions, torch.Tensor) and positions.dtype == torch.bool:
                m = positions.to(x.device)[..., None].to(x.dtype)
                per_row = per_row * m
                positions_ = None
            else:
                positions_ = positions
            if positions_ is None:
                if rows is None:
                    return x + per_row
                return x.index_add(0, torch.as_tensor(rows).to(x.device), per_row.expand(len(rows), x.shape[1], -1))
            x = x.clone()
            b, p = _index(x, rows, positions_)
            x[b, p] = x[b, p] + per_row
            return x
        return self.edit(handle, site, fn, prompt_only=prompt_only)


TORCH = TorchHooks()


def backend(handle: Any) -> Hooks:
    """The handle's engine (`handle.hooks`: NNsightHooks under --engine nnsight), else PyTorch hooks."""
    return getattr(handle, "hooks", None) or TORCH


def edit(handle: Any, site: Site, fn: Callable[[torch.Tensor], torch.Tensor | None],
         prompt_only: bool = False) -> ContextManager[None]:
    return backend(handle).edit(handle, site, fn, prompt_only=prompt_only)


def capture(handle: Any, sites: Sequence[Site], positions: Positions = None, to_cpu: bool = True,
            reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ContextManager[dict[Site, torch.Tensor]]:
    return backend(handle).capture(handle, sites, positions=positions, to_cpu=to_cpu, reduce=reduce)


def replace(handle: Any, site: Site, values: torch.Tensor, positions: Positions = None,
            rows: torch.Tensor | None = None, heads: torch.Tensor | None = None,
            prompt_only: bool = False) -> ContextManager[None]:
    return backend(handle).replace(handle, site, values, positions=positions, rows=rows, heads=heads,
                                   prompt_only=prompt_only)


def add(handle: Any, site: Site, delta: torch.Tensor, positions: Positions = None,
        rows: torch.Tensor | None = None, prompt_only: bool = False,
        new_tokens: bool = False) -> ContextManager[None]:
    return backend(handle).add(handle, site, delta, positions=positions, rows=rows, prompt_only=prompt_only,
                               new_tokens=new_tokens)


@contextlib.contextmanager
def record_attention_calls(handle: Any, layers: Sequence[int]) -> Iterator[dict[int, tuple[tuple, dict]]]:
    """{layer: (args, kwargs)} of each attention module's call in the forwards inside (the last call
    wins), so that the module can be called again on its own with an edited mask: what the model
    passed (hidden states after the input norm, rotary embeddings, mask, cache position) is kept as
    it was, so this is generic over architectures. Tensors are kept, not copied."""
    calls: dict[int, tuple[tuple, dict]] = {}
    handles = []
    try:
        for layer in layers:
            def pre(mod, args, kwargs, layer: int = layer):
                calls[layer] = (args, dict(kwargs))
            handles.append(attention_module(handle.blocks[layer]).register_forward_pre_hook(pre, with_kwargs=True))
        yield calls
    finally:
        for h in handles:
            h.remove()
