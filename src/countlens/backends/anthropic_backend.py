"""Anthropic's Messages API via `anthropic` (base URL and key from ANTHROPIC_BASE_URL / ANTHROPIC_API_KEY)."""

from __future__ import annotations

import inspect
import os
from typing import Any

from countlens.backends.base import ApiBackend, ApiOptions, Completion, GenSettings, register_secret
from countlens.backends.retry import Failure, sdk_failure
from countlens.backends.spec import ModelSpec
from countlens.errors import InputError


class AnthropicBackend(ApiBackend):
    supports_prefill = True  # a trailing assistant message starts the reply

    def __init__(self, spec: ModelSpec, options: ApiOptions | None = None, prompt_format: str = "auto",
                 client: Any = None) -> None:
        import anthropic

        super().__init__(spec, options, prompt_format)
        key = os.environ.get("ANTHROPIC_API_KEY")
        if client is None and not (key or os.environ.get("ANTHROPIC_AUTH_TOKEN")):
            raise InputError(f"{spec.label}: set ANTHROPIC_API_KEY")
        register_secret(key)
        self.client = client or anthropic.Anthropic(max_retries=0, timeout=self.options.retry.timeout)
        # Recent SDKs (and models) dropped sampling parameters; send temperature only where it exists.
        self._temperature = "temperature" in inspect.signature(self.client.messages.create).parameters

    def identity(self) -> dict[str, Any]:
        return {"backend": "anthropic", "model": self.spec.name, "prompt_format": self.prompt_format}

    def _request(self, prompt: str, settings: GenSettings) -> Completion:
        messages: list[dict] = [{"role": "user", "content": prompt}]
        if settings.prefill:
            messages.append({"role": "assistant", "content": settings.answer_prefix})
        kwargs: dict[str, Any] = {"system": settings.system} if settings.system else {}
        if self._temperature:
            kwargs["temperature"] = settings.temperature
        resp = self.client.messages.create(model=self.spec.name, max_tokens=settings.max_new_tokens,
                                           messages=messages, **kwargs)
        text = "".join(getattr(b, "text", "") for b in resp.content if getattr(b, "type", "") == "text")
        prefix = settings.answer_prefix if settings.prefill else ""
        return Completion(text=prefix + text, input_tokens=resp.usage.input_tokens or 0,
                          output_tokens=resp.usage.output_tokens or 0, prefilled=settings.prefill,
                          stop_reason=resp.stop_reason, served_model=resp.model)

    def _classify(self, exc: BaseException) -> Failure | None:
        import anthropic

        return sdk_failure(exc, anthropic, anthropic.AnthropicError)
