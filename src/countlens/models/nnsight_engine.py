"""The nnsight backend of the hook layer: the same four calls, run as nnsight traces (here or on NDIF).

`--engine nnsight` swaps two things in a handle and nothing in a stage:

  handle.hooks   NNsightHooks: capture / edit / replace / add *register* an intervention for the
                 forwards inside their context instead of a PyTorch hook
  handle.model   NNsightModel: calling it runs one `model.trace(...)` that applies the registered
                 interventions in execution order and saves only the model output and what the
                 captures asked for; `.generate` runs `model.generate` with the edits on every step
                 (`tracer.iter`); every other attribute is the Hugging Face model's

so the stages' own code (patching, capture, steering, the logit lens) runs through nnsight unchanged.
The replace / add edits are the PyTorch backend's own functions (`hooks.TorchHooks`), so both engines
compute the same numbers by construction and the tests check it to 1e-4.

Locally nnsight executes the trace in-process on the loaded model. With `remote=True` the same trace
runs on NDIF: the model is built on the meta device (no weights downloaded), the request carries the
intervention code (countlens's hook functions travel by value), and only saved tensors come back, on
the CPU. Each forward is one request; `RequestCache` keeps finished ones on disk so an interrupted
remote run resumes without redoing them. The API key is read from NDIF_API_KEY into memory only
(nnsight's `CONFIG.set_default_api_key` would write it to its config file: never called).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import io
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from countlens.errors import InputError
from countlens.models import devices
from countlens.models.hooks import Positions, TorchHooks, _first, _index, _with_first, n_heads, site_module
from countlens.sites import Site, layer_key

# Where a site's tensor is read inside one block, in execution order: the block's input (emb), the
# attention output projection's input (heads), the attention output, the MLP output, the block output.
_ORDER = {"emb": 0, "head": 1, "attn": 2, "mlp": 3, "resid": 4}


def _order(site: Site) -> tuple[int, int]:
    return (0, 0) if site.layer == "emb" else (layer_key(site.layer), _ORDER[site.kind])


class _Intervention:
    """One registered edit (fn returns a replacement or None) or capture (fn returns the value to keep
    in save[key], key the site asked for; `site` is the hooked tensor's). `calls` counts the forwards
    it has been part of (a prompt_only edit is off after the first)."""

    def __init__(self, site: Site, fn: Callable, save: dict | None = None, to_cpu: bool = True,
                 prompt_only: bool = False):
        self.site, self.fn, self.save, self.to_cpu, self.prompt_only = site.module_site, fn, save, to_cpu, prompt_only
        self.key = site
        self.calls = 0

    @property
    def active(self) -> bool:
        return not (self.prompt_only and self.calls > 0)


class NNsightHooks(TorchHooks):
    """Hooks whose contexts register interventions on an NNsightModel; replace/add are inherited."""

    @contextlib.contextmanager
    def edit(self, handle: Any, site: Site, fn: Callable[[torch.Tensor], torch.Tensor | None],
             prompt_only: bool = False) -> Iterator[None]:
        with handle.model.registered(_Intervention(site, fn, prompt_only=prompt_only)):
            yield

    @contextlib.contextmanager
    def capture(self, handle: Any, sites: Sequence[Site], positions: Positions = None,
                to_cpu: bool = True, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
                ) -> Iterator[dict[Site, torch.Tensor]]:
        store: dict[Site, torch.Tensor] = {}
        with contextlib.ExitStack() as stack:
            for site in sites:
                def pick(x: torch.Tensor, site: Site = site) -> torch.Tensor:
                    v = x.detach()
                    if positions is not None:
                        b, p = _index(v, None, positions)
                        v = v[b, p]
                    v = v[..., site.head, :] if site.head is not None else v
                    return reduce(v) if reduce is not None else v
                stack.enter_context(handle.model.registered(_Intervention(site, pick, save=store, to_cpu=to_cpu)))
            yield store


NNSIGHT = NNsightHooks()


class NNsightModel:
    """Stands in for a handle's Hugging Face model: a call is one nnsight trace (see the module doc)."""

    def __init__(self, lm: Any, hf_model: torch.nn.Module, blocks: Sequence[torch.nn.Module], remote: bool = False,
                 cache_dir: str | Path | None = None):
        self.lm, self.hf_model, self.blocks, self.remote = lm, hf_model, list(blocks), remote
        self.pending: list[_Intervention] = []
        self.names = {m: n for n, m in self.hf_model.named_modules()}
        self.cache = RequestCache(cache_dir) if cache_dir else None
        self.requests = 0            # traces run (remote: requests sent)
        # the logit lens reads the final norm and unembedding inside the trace (their weights are on
        # NDIF under --remote; the tests turn it on locally to check it against the native lens)
        self.readout_in_trace = remote

    def __getattr__(self, name: str) -> Any:       # config, generation_config, parameters(), ...
        return getattr(self.__dict__["hf_model"], name)

    @contextlib.contextmanager
    def registered(self, iv: _Intervention) -> Iterator[None]:
        self.pending.append(iv)
        try:
            yield
        finally:
            self.pending.remove(iv)

    def envoy(self, module: torch.nn.Module) -> Any:
        """nnsight's envoy of one of the model's modules: what a trace reads and writes, and, called
        inside a trace, the module run where the model is (on NDIF under --remote)."""
        env = self.lm
        for part in self.names[module].split("."):
            env = env[int(part)] if part.isdigit() else getattr(env, part)
        return env

    def _plan(self) -> list[tuple[Any, bool, Site, list[_Intervention]]]:
        """Interventions grouped by module, in the order the forward reaches the modules (nnsight
        reads a module's value only while the model is at it)."""
        groups: dict[tuple, list[_Intervention]] = {}
        for iv in (iv for iv in self.pending if iv.active):
            groups.setdefault((_order(iv.site), str(iv.site)), []).append(iv)
        plan = []
        for (_, _), ivs in sorted(groups.items()):
            module, is_input = site_module(self.blocks, ivs[0].site)
            plan.append((self.envoy(module), is_input, ivs[0].site, ivs))
        return plan

    reduces = True       # handle.forward_reduced: the caller's reduction of the logits runs in the trace

    def __call__(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, **kwargs: Any) -> Any:
        """One forward as one trace. Without a cache argument, no KV cache is built and only the logits
        come back (a 70B model's KV cache of a batch is hundreds of MB; logits_to_keep=1 logits are
        batch x vocab), or with `reduce` only reduce(last-position logits)."""
        if not any(k in kwargs for k in ("past_key_values", "cache")):
            kwargs["use_cache"] = False
        plan = self._plan()
        active = [iv for _, _, _, ivs in plan for iv in ivs]
        key = self.cache.key({**kwargs, "reduce": _closure_values(reduce) if reduce else None}, active) \
            if self.cache is not None else None
        if key is not None and (hit := self.cache.get(key)) is not None:
            out, saves = hit
        else:
            out, saves = self._trace(plan, kwargs, reduce)
            if key is not None:
                self.cache.put(key, (out, saves))
        for iv in active:        # counted here, not in the trace (whose objects are the server's copies)
            iv.calls += 1
        for (_, _, _, ivs), got in zip(plan, saves):
            for iv, v in zip(ivs, got):
                if iv.save is not None:
                    iv.save[iv.key] = v.cpu() if iv.to_cpu else v.to(self.device)
        return out

    @property
    def device(self) -> torch.device:
        return devices.input_device(self.hf_model)

    def _trace(self, plan: list, kwargs: dict, reduce: Callable | None = None) -> tuple[Any, list[list]]:
        import nnsight

        heads = n_heads(self.hf_model)
        with _remote_errors(self.remote), self.lm.trace(**kwargs, remote=self.remote):
            saves = nnsight.save(_intervene(plan, heads, count=False))
            if reduce is not None:
                out = nnsight.save(reduce(self.lm.output.logits[:, -1]))
            elif kwargs.get("use_cache") is not False:
                out = nnsight.save(self.lm.output)
            else:
                out = nnsight.save(self.lm.output.logits)
        self.requests += 1
        if reduce is None and isinstance(out, torch.Tensor):
            from transformers.modeling_outputs import CausalLMOutputWithPast

            out = CausalLMOutputWithPast(logits=out)
        return out, saves

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                 **kwargs: Any) -> torch.Tensor:
        """Greedy generation through nnsight, the registered edits applied at every step (a
        prompt_only edit at the first only; an add's new_tokens logic decides what the later get)."""
        import nnsight

        plan = self._plan()
        if any(iv.save is not None for _, _, _, ivs in plan for iv in ivs):
            raise ValueError("captures during generation are not supported by the nnsight engine")
        kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "cache")}
        # every row runs all max_new_tokens steps (a bounded step loop: code after an open-ended one
        # never runs), then tokens after a row's first end-of-turn become padding, as generate() leaves them
        stop = kwargs.get("eos_token_id") or []
        stop = [stop] if isinstance(stop, int) else list(stop)
        kwargs["eos_token_id"] = []
        heads = n_heads(self.hf_model)
        start = {id(iv): iv.calls for _, _, _, ivs in plan for iv in ivs}
        with _remote_errors(self.remote), self.lm.generate(input_ids=input_ids, attention_mask=attention_mask,
                                                           max_new_tokens=max_new_tokens, remote=self.remote,
                                                           **kwargs) as tracer:
            for _step in tracer.iter[:max_new_tokens]:
                _intervene(plan, heads, count=True)
            out = nnsight.save(tracer.result)
        self.requests += 1
        for _, _, _, ivs in plan:                  # one call per step, here as in the trace
            for iv in ivs:
                iv.calls = start[id(iv)] + max_new_tokens
        W = input_ids.shape[1]
        new = out[:, W:].clone()
        done = torch.zeros(len(new), dtype=torch.bool)
        for t in range(new.shape[1]):
            new[done, t] = kwargs.get("pad_token_id", 0)
            done |= torch.isin(new[:, t], torch.tensor(stop, dtype=new.dtype))
        return torch.cat([out[:, :W], new], 1)


def _intervene(plan: list, heads: int, count: bool) -> list[list[torch.Tensor]]:
    """Inside a trace: each planned module's value read once, its edits applied in registration order
    and written back once; the captures' values returned (per module, in plan order). `count`: count
    each intervention's call here (generation steps; a prompt_only edit is skipped after its first)."""
    saves = []
    for envoy, is_input, site, ivs in plan:
        raw = envoy.input if is_input else envoy.output
        x = _first(raw)
        x = x.unflatten(-1, (heads, -1)) if site.kind == "head" else x
        got, changed = [], False
        for iv in ivs:
            if iv.save is not None:
                got.append(iv.fn(x))
            elif iv.active and (r := iv.fn(x)) is not None:
                x, changed = r, True
            iv.calls += count
        if changed:
            new = x.flatten(-2) if site.kind == "head" else x
            if is_input:
                envoy.input = new
            else:
                envoy.output = _with_first(raw, new)
        saves.append(got)
    return saves


@contextlib.contextmanager
def _remote_errors(remote: bool) -> Iterator[None]:
    """A failed NDIF request as one InputError line (no traceback, no key)."""
    if not remote:
        yield
        return
    try:
        yield
    except InputError:
        raise
    except Exception as e:  # connection refused, DNS, HTTP 401/404 from NDIF
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"NDIF request failed ({type(e).__name__}: {msg[:200]}); check NDIF_API_KEY, "
                         f"NDIF_HOST and that the model is hosted (https://nnsight.net/status)") from None


class RequestCache:
    """Finished remote forwards on disk, keyed by their inputs and interventions, so that a remote run
    interrupted after k requests resumes at request k + 1 (a re-run asks the same questions)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(kwargs: dict, pending: Sequence[_Intervention]) -> str:
        h = hashlib.sha256()
        for k in sorted(kwargs):
            _digest(h, k, kwargs[k])
        for iv in pending:
            h.update(f"{iv.site}|{iv.save is not None}".encode())
            for cell in _closure_values(iv.fn):
                _digest(h, "cell", cell)
        return h.hexdigest()[:32]

    def get(self, key: str) -> Any:
        f = self.root / f"{key}.pt"
        return torch.load(f, weights_only=False) if f.exists() else None

    def put(self, key: str, value: Any) -> None:
        f = self.root / f"{key}.pt"
        tmp = f.with_suffix(".tmp")
        torch.save(value, tmp)
        tmp.replace(f)


def _closure_values(fn: Callable, depth: int = 0) -> list:
    """Values an intervention function closes over (its tensors, positions, flags), nested closures
    included: what makes two requests with the same inputs different."""
    if isinstance(fn, functools.partial):      # a reduction: its bound arguments (token ids, ...)
        vals = [*fn.args, *fn.keywords.values()]
        return [v for v in vals if not callable(v)] + _closure_values(fn.func, depth + 1)
    out = []
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            v = cell.cell_contents
        except ValueError:
            continue
        if callable(v) and depth < 3 and hasattr(v, "__closure__"):
            out += _closure_values(v, depth + 1)
        elif isinstance(v, (torch.Tensor, int, float, bool, str, tuple, type(None))):
            out.append(v)
    return out


def _digest(h: Any, name: str, v: Any) -> None:
    h.update(name.encode())
    if isinstance(v, torch.Tensor):
        buf = io.BytesIO()
        torch.save(v.detach().cpu(), buf)
        h.update(buf.getvalue())
    elif isinstance(v, (int, float, bool, str, type(None))):
        h.update(repr(v).encode())
    elif isinstance(v, (tuple, list)):
        for x in v:
            _digest(h, "", x)
    else:
        h.update(type(v).__name__.encode())


def api_key() -> str:
    """NDIF_API_KEY from the environment (memory only), or one InputError line."""
    key = os.environ.get("NDIF_API_KEY", "").strip()
    if not key:
        raise InputError("--remote needs an NDIF API key in NDIF_API_KEY (get one at https://login.ndif.us); "
                         "it is read from the environment only and never written anywhere")
    return key


def reachable(host: str, timeout: float = 5.0) -> None:
    """NDIF's /status answers, or one InputError line: before a model is built or a request sent."""
    import httpx

    try:
        httpx.get(f"{host}/status", timeout=timeout).raise_for_status()
    except httpx.HTTPError as e:
        raise InputError(f"NDIF at {host} is unreachable ({type(e).__name__}: {str(e)[:120]}); check the network, "
                         "NDIF_HOST and https://nnsight.net/status") from None


def check_remote() -> str:
    """Before anything is read or written: nnsight installed, a key, NDIF answering. Returns the key."""
    _require()
    key = api_key()
    from nnsight import CONFIG

    reachable(CONFIG.API.HOST)
    return key


def _require() -> None:
    try:
        import nnsight  # noqa: F401
    except ImportError:
        raise InputError("--engine nnsight needs nnsight: pip install 'countlens[nnsight]' (nnsight 0.8)") from None


def local(hf_model: torch.nn.Module, tokenizer: Any, blocks: Sequence[torch.nn.Module]) -> NNsightModel:
    """nnsight around a model loaded here (in-process traces: what the equivalence tests run)."""
    _require()
    from nnsight import TransformersModel

    # nnsight sets the tokenizer's pad token and padding side: it gets a copy, not the handle's
    return NNsightModel(TransformersModel(hf_model, tokenizer=copy.deepcopy(tokenizer)), hf_model, blocks)


def remote(repo_id: str, find_blocks: Callable[[torch.nn.Module], list], cache_dir: str | Path | None = None
           ) -> tuple[NNsightModel, Any]:
    """nnsight's meta-device model of a hub name hosted on NDIF (no weights downloaded), and its
    tokenizer; the key goes into nnsight's in-memory config only."""
    key = check_remote()
    import cloudpickle
    from nnsight import CONFIG, TransformersModel

    CONFIG.API.APIKEY = key            # memory only: CONFIG.set_default_api_key would save it to disk
    # NDIF has no countlens: the edits and reductions (functions in its modules) travel as code. The
    # package is already loaded (we run inside it); nothing is imported here.
    cloudpickle.register_pickle_by_value(sys.modules[__name__.split(".")[0]])
    from countlens.models.hub import load_tokenizer

    try:
        tokenizer = load_tokenizer(repo_id)
        lm = TransformersModel(repo_id, task="text-generation", tokenizer=copy.deepcopy(tokenizer))
    except Exception as e:
        raise InputError(f"cannot build {repo_id} for NDIF ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                         "--remote takes a hub name that NDIF hosts") from None
    hf = lm._module
    return NNsightModel(lm, hf, find_blocks(hf), remote=True, cache_dir=cache_dir), tokenizer
