"""Backends: text generation for benchmarking (local HF, OpenAI-compatible, Anthropic, Bedrock).

They turn prompts into completions (and, locally, answer distributions); they never parse
answers or compute metrics.
"""

from __future__ import annotations

from countlens.backends.base import ApiOptions, Backend, Completion, GenSettings, Scored, redact
from countlens.backends.retry import RateLimiter, RetryPolicy
from countlens.backends.spec import ModelSpec, parse_spec


def make_backend(spec: ModelSpec | str, *, prompt_format: str = "auto", api: ApiOptions | None = None,
                 batch_size: int = 64, handle=None, **load) -> Backend:
    """The backend for a SPEC; SDKs and torch are imported only for the kind in use. `load`: how a
    local model loads (models.handle.load's device, dtype, device_map, max_memory, engine, ...)."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if spec.kind == "hf":
        from countlens.backends.hf import HFBackend

        return HFBackend(spec, prompt_format=prompt_format, batch_size=batch_size, handle=handle, **load)
    if spec.kind == "openai":
        from countlens.backends.openai_compat import OpenAIBackend

        return OpenAIBackend(spec, api, prompt_format)
    if spec.kind == "anthropic":
        from countlens.backends.anthropic_backend import AnthropicBackend

        return AnthropicBackend(spec, api, prompt_format)
    from countlens.backends.bedrock import BedrockBackend

    return BedrockBackend(spec, api, prompt_format)


__all__ = ["ApiOptions", "Backend", "Completion", "GenSettings", "ModelSpec", "RateLimiter", "RetryPolicy",
           "Scored", "make_backend", "parse_spec", "redact"]
