"""Where a module runs and what its weights are, also when accelerate has offloaded them.

With `device_map` dispatch (`--device-map auto`), an offloaded module's parameters sit on the meta
device and accelerate's AlignDevicesHook brings them in for each forward. Calling the module works as
is; code that *reads* a weight (the lens's unembedding rows, DLA's output projections) or puts a
tensor next to one goes through these helpers instead of `module.weight` / `p.device`.
"""

from __future__ import annotations

from typing import Any

import torch


def hf_model(model: Any) -> torch.nn.Module:
    """The Hugging Face model behind a stand-in (the nnsight engine's `NNsightModel.hf_model`):
    what signature and cache-argument checks look at."""
    return getattr(model, "hf_model", model)


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a model's inputs go: its first parameter's device (the CPU for a meta-device model, as
    NDIF's are here, or one whose weights accelerate offloaded)."""
    d = next(model.parameters()).device
    return torch.device("cpu") if d.type == "meta" else d


def execution_device(module: torch.nn.Module) -> torch.device:
    """The device the module computes on: accelerate's execution device when it is dispatched, else
    its parameters' device (the CPU for a parameterless or meta module)."""
    d = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if d is not None:
        return torch.device(d) if not isinstance(d, int) else torch.device("cuda", d)
    p = next(module.parameters(), None)
    return torch.device("cpu") if p is None or p.device.type == "meta" else p.device


def weight(module: torch.nn.Module, name: str = "weight") -> Any:
    """A detached copy of module.<name> (None if it has none), materialized from accelerate's offload
    (CPU or disk) when the module holds only its meta placeholder."""
    t = getattr(module, name, None)
    if t is None or t.device.type != "meta":
        return None if t is None else t.detach()
    if getattr(module, "_hf_hook", None) is None:
        from countlens.errors import InputError

        raise InputError(f"the weights of {type(module).__name__} are not on this machine (a model run on NDIF "
                         "with --remote): DLA, attention and AtP read weights here, so run them without --remote "
                         "(--remote runs capture, probes, patching, steering and the logit lens)")
    from accelerate.utils import align_module_device

    with align_module_device(module):
        return getattr(module, name).detach().clone()
