"""Any OpenAI-compatible server (vLLM, Ollama, llama.cpp, `transformers serve`, OpenAI) via `openai`.

Chat models get one user message (`--prompt-format chat`, the default); `--prompt-format raw`
sends the prompt as is to the completions endpoint, for base models. The length limit goes
under the name each endpoint wants: `max_completion_tokens` on OpenAI's chat API (reasoning
models require it), `max_tokens` elsewhere; a server that rejects one gets the other.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from countlens.backends.base import ApiBackend, ApiOptions, Completion, GenSettings, register_secret
from countlens.backends.retry import Failure, sdk_failure
from countlens.backends.spec import ModelSpec, strip_userinfo
from countlens.errors import InputError

OFFICIAL = "api.openai.com"


class OpenAIBackend(ApiBackend):
    supports_prefill = False  # the chat API has no standard way to start the assistant's reply
    prompt_formats = ("auto", "chat", "raw")

    def __init__(self, spec: ModelSpec, options: ApiOptions | None = None, prompt_format: str = "auto",
                 client: Any = None) -> None:
        import openai

        super().__init__(spec, options, prompt_format)
        self.base_url = spec.base_url or os.environ.get("OPENAI_BASE_URL") or None
        official = self.base_url is None or OFFICIAL in self.base_url
        key = os.environ.get("OPENAI_API_KEY")
        if not key and official:
            raise InputError(f"{spec.label}: set OPENAI_API_KEY (or give a local server: openai:MODEL@http://HOST/v1)")
        register_secret(key)
        self.client = client or openai.OpenAI(api_key=key or "not-needed", base_url=self.base_url,
                                              max_retries=0, timeout=self.options.retry.timeout)
        self._lock = threading.Lock()
        self._max_param = "max_completion_tokens" if official else "max_tokens"
        self._send_temperature = True
        self._adapted: set[str] = set()

    def identity(self) -> dict[str, Any]:
        return {"backend": "openai", "model": self.spec.name,
                "base_url": strip_userinfo(self.base_url) or f"https://{OFFICIAL}/v1",
                "prompt_format": self.prompt_format}

    def _request(self, prompt: str, settings: GenSettings) -> Completion:
        import openai

        for _ in range(3):  # at most two parameter adaptations, then the server's error stands
            sent = (self._max_param, self._send_temperature)
            try:
                return self._send(prompt, settings, *sent)
            except openai.BadRequestError as e:
                if not self._adapt(str(getattr(e, "message", e)), sent):
                    raise
        return self._send(prompt, settings, self._max_param, self._send_temperature)

    def _adapt(self, message: str, sent: tuple[str, bool]) -> bool:
        """Switch the length parameter or drop temperature when the server names it as unsupported.

        `sent` is what the failing request used: if another thread has adapted since, just retry.
        Each change is made at most once, so two opinions cannot flip-flop.
        """
        msg = message.lower()
        with self._lock:
            if sent != (self._max_param, self._send_temperature):
                return True
            chat = self.prompt_format == "chat"
            if chat and "max_tokens" in msg and "max_completion_tokens" in msg and sent[0] == "max_tokens" \
                    and "to-mct" not in self._adapted:
                self._max_param, change = "max_completion_tokens", "to-mct"
            elif chat and "max_completion_tokens" in msg and sent[0] == "max_completion_tokens" \
                    and "to-mt" not in self._adapted:
                self._max_param, change = "max_tokens", "to-mt"
            elif "temperature" in msg and sent[1]:
                self._send_temperature, change = False, "no-temperature"
            else:
                return False
            self._adapted.add(change)
            return True

    def _send(self, prompt: str, settings: GenSettings, max_param: str, temperature: bool) -> Completion:
        extra: dict[str, Any] = {"temperature": settings.temperature} if temperature else {}
        if self.prompt_format == "raw":
            text = (settings.system + "\n\n" + prompt) if settings.system else prompt
            resp = self.client.completions.create(model=self.spec.name, prompt=text,
                                                  max_tokens=settings.max_new_tokens, **extra)
            choice = resp.choices[0]
            out = choice.text or ""
        else:
            messages = ([{"role": "system", "content": settings.system}] if settings.system else []) + \
                       [{"role": "user", "content": prompt}]
            extra[max_param] = settings.max_new_tokens
            resp = self.client.chat.completions.create(model=self.spec.name, messages=messages, **extra)
            choice = resp.choices[0]
            out = choice.message.content or ""
        usage = resp.usage
        details = getattr(usage, "completion_tokens_details", None) if usage else None
        return Completion(text=out, input_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                          output_tokens=getattr(usage, "completion_tokens", 0) or 0,
                          reasoning_tokens=getattr(details, "reasoning_tokens", 0) or 0,
                          stop_reason=choice.finish_reason, served_model=resp.model)

    def _classify(self, exc: BaseException) -> Failure | None:
        import openai

        return sdk_failure(exc, openai, openai.OpenAIError)
