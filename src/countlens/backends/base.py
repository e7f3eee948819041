"""What every backend shares: generation settings, one completion, the Backend interface,
the thread pool that API backends run their requests in, and secret redaction.

Backends turn prompts into text (or, locally, into answer distributions). They never parse
answers or compute metrics: that is `countlens.bench`.
"""

from __future__ import annotations

import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from countlens.backends.retry import Attempted, Failure, RateLimiter, RetryPolicy, call_with_retries
from countlens.backends.spec import ModelSpec
from countlens.errors import InputError


@dataclass(frozen=True)
class GenSettings:
    """Everything besides the prompt that can change a completion (part of every record's key)."""

    max_new_tokens: int = 8
    prefill: bool = False          # start the reply with `answer_prefix` where the backend allows it
    answer_prefix: str = "("
    system: str | None = None
    temperature: float = 0.0       # greedy

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(kw_only=True)
class Usage:
    """What one request cost and how it ended: a Completion's, and the Record stored from it."""

    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    attempts: int = 1
    latency_s: float = 0.0
    prefilled: bool = False
    stop_reason: str | None = None
    served_model: str | None = None   # the model id the provider says answered

    def usage(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(Usage)}


@dataclass
class Completion(Usage):
    """One reply. `text` includes a pre-filled prefix, so parsers see the whole answer."""

    text: str | None
    error: str | None = None


@dataclass
class Scored:
    """Score mode: log P(answer k) for k = 0..K after the prompt and the answer prefix."""

    logprobs: list[float]
    input_tokens: int = 0


# Results go back in groups that finish together (one request, or one local batch), so the
# runner stores each group in one transaction the moment it is done.
OnDone = Callable[[list[tuple[int, Completion]]], None]
OnScored = Callable[[list[tuple[int, Scored]]], None]


class Backend(ABC):
    """Turns formatted-or-raw prompts into completions; subclasses say what they support."""

    spec: ModelSpec
    supports_prefill: bool = False
    supports_score: bool = False

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """What identifies the model and its prompt formatting (goes into every record's key)."""

    @abstractmethod
    def generate(self, prompts: list[str], settings: GenSettings, on_done: OnDone) -> None:
        """Complete every prompt; call `on_done([(index, completion), ...])` in the caller's thread."""

    def score(self, prompts: list[str], k_max: int, settings: GenSettings, on_scored: OnScored) -> None:
        raise InputError(f"--mode score needs a local model (organism, hf:...): '{self.spec.label}' is an API "
                         f"model whose answer distribution cannot be read; use --mode generate")

    def close(self) -> None:
        pass


# --- secrets never leave the process -------------------------------------------------------

_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.I)
_KEY_SHAPES = re.compile(r"\b(sk-[A-Za-z0-9_\-*]{6,}|AKIA[0-9A-Z]{12,}|ASIA[0-9A-Z]{12,})")
_extra_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """A key a backend uses that may not be in the environment (passed in code)."""
    if value and len(value) >= 6:
        with _lock:
            _extra_secrets.add(value)


def redact(text: str | None) -> str | None:
    """Remove every known secret (secret-looking env vars, registered keys, key shapes) from text."""
    if not text:
        return text
    secrets = {v for k, v in os.environ.items() if _SECRET_NAME.search(k) and v and len(v) >= 6} | _extra_secrets
    for s in sorted(secrets, key=len, reverse=True):
        text = text.replace(s, "***")
    return _KEY_SHAPES.sub("***", text)  # also keys the provider echoes partly masked ('sk-proj-***abcd')


# --- API backends: a thread pool, one retry policy, redaction ----------------------------


@dataclass
class ApiOptions:
    concurrency: int = 8
    rpm: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class ApiBackend(Backend):
    """Runs `_request` for every prompt in `concurrency` threads under one retry/rate policy."""

    supports_prefill = True
    prompt_formats: tuple[str, ...] = ("auto", "chat")

    def __init__(self, spec: ModelSpec, options: ApiOptions | None = None, prompt_format: str = "auto") -> None:
        self.spec = spec
        self.options = options or ApiOptions()
        if self.options.concurrency < 1:
            raise InputError("--concurrency must be at least 1")
        if self.options.rpm is not None and self.options.rpm <= 0:
            raise InputError("--rpm must be positive")
        if prompt_format not in self.prompt_formats:
            raise InputError(f"--prompt-format {prompt_format}: {spec.kind} models take "
                             f"{' or '.join(f for f in self.prompt_formats if f != 'auto')} prompts only")
        self.prompt_format = "chat" if prompt_format == "auto" else prompt_format
        self.limiter = RateLimiter(self.options.rpm)

    @abstractmethod
    def _request(self, prompt: str, settings: GenSettings) -> Completion:
        """One request, raising the SDK's exception on failure."""

    @abstractmethod
    def _classify(self, exc: BaseException) -> Failure | None:
        """Map an SDK exception to a Failure (None: not an API error, a bug: re-raise)."""

    def _one(self, prompt: str, settings: GenSettings) -> Completion:
        t0 = time.perf_counter()
        got: Attempted = call_with_retries(lambda: self._request(prompt, settings), self._classify,
                                           self.options.retry, self.limiter)
        if got.error is not None:
            comp = Completion(text=None, error=redact(got.error))
        else:
            comp = got.value
            comp.text = redact(comp.text)
        comp.attempts = got.attempts
        comp.latency_s = round(time.perf_counter() - t0, 4)
        return comp

    def generate(self, prompts: list[str], settings: GenSettings, on_done: OnDone) -> None:
        if not prompts:
            return
        pool = ThreadPoolExecutor(max_workers=min(self.options.concurrency, len(prompts)),
                                  thread_name_prefix=f"countlens-{self.spec.kind}")
        try:
            futures = {pool.submit(self._one, p, settings): i for i, p in enumerate(prompts)}
            for fut in as_completed(futures):
                on_done([(futures[fut], fut.result())])
        finally:
            # On Ctrl-C or an error: drop queued requests, let running ones finish quickly.
            pool.shutdown(wait=True, cancel_futures=True)
