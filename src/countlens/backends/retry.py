"""One retry and rate-limit policy shared by every API backend.

The SDKs' own retries are switched off (each has different defaults and caps) so that every
provider gets the same behaviour: exponential backoff with jitter on 429/5xx/timeouts, the
server's `Retry-After` respected, an optional requests-per-minute limit across all workers,
and a count of attempts per request. A request that still fails becomes an error message,
never an exception: the runner records it as an API error.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 6        # retries after the first attempt
    base: float = 1.0           # first backoff, seconds; doubles each retry
    cap: float = 60.0           # largest computed backoff
    max_retry_after: float = 300.0  # longest server-requested wait we honour
    timeout: float = 60.0       # per request, seconds

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """Exponential with 'equal jitter': half fixed, half random, so waits grow but spread out."""
        d = min(self.cap, self.base * (2 ** retry))
        return d / 2 + (rng or random).uniform(0, d / 2)


@dataclass(frozen=True)
class Failure:
    """How a backend classifies one exception of its SDK."""

    message: str
    retryable: bool
    retry_after: float | None = None


class RateLimiter:
    """Spaces request starts evenly so that at most `rpm` start in any minute, across threads."""

    def __init__(self, rpm: float | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rpm is not None and rpm <= 0:
            raise ValueError("rpm must be positive")
        self.interval = 60.0 / rpm if rpm else 0.0
        self._next = 0.0
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self._sleep(start - now)


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date; None if absent."""
    if not headers:
        return None
    get = (lambda k: headers.get(k) or headers.get(k.title())) if hasattr(headers, "get") else (lambda k: None)
    ms = get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, when.timestamp() - time.time()) if when else None


def http_failure(status: int | None, message: str, headers: Mapping[str, str] | None = None,
                 timeout: bool = False) -> Failure:
    """The shared rule: 408/409/429/5xx, timeouts and connection errors are retried."""
    retryable = timeout or status is None or status in (408, 409, 429) or status >= 500
    prefix = f"HTTP {status}: " if status else ""
    return Failure(f"{prefix}{message}"[:500], retryable, retry_after_seconds(headers) if retryable else None)


def sdk_failure(exc: BaseException, sdk: Any, base: type[BaseException]) -> Failure | None:
    """An openai or anthropic SDK exception as a Failure. Both SDKs are generated from the same
    generator (Stainless) and share their error classes' names; `base` is the SDK's own root error
    (openai.OpenAIError, anthropic.AnthropicError); anything else is None (a bug, not an API error)."""
    if isinstance(exc, sdk.APIStatusError):
        return http_failure(exc.status_code, str(getattr(exc, "message", exc)), exc.response.headers)
    if isinstance(exc, sdk.APITimeoutError):
        return http_failure(None, "request timed out", timeout=True)
    if isinstance(exc, sdk.APIConnectionError):
        return http_failure(None, f"connection error: {exc}", timeout=True)
    if isinstance(exc, base):
        return Failure(f"{type(exc).__name__}: {exc}"[:500], retryable=False)
    return None


@dataclass
class Attempted:
    value: Any | None
    attempts: int
    error: str | None = None


def call_with_retries(fn: Callable[[], T], classify: Callable[[BaseException], Failure | None],
                      policy: RetryPolicy, limiter: RateLimiter | None = None,
                      sleep: Callable[[float], None] = time.sleep) -> Attempted:
    """Call `fn` until it succeeds, fails for good, or runs out of retries.

    `classify` maps the SDK's exceptions to a Failure; an exception it does not know (None) is a
    bug, not an API error, and propagates.
    """
    for retry in range(policy.max_retries + 1):
        if limiter is not None:
            limiter.wait()
        try:
            return Attempted(fn(), retry + 1)
        except Exception as e:  # noqa: BLE001 - classified below, unknown ones re-raised
            failure = classify(e)
            if failure is None:
                raise
            if not failure.retryable or retry == policy.max_retries:
                return Attempted(None, retry + 1, failure.message)
            if failure.retry_after is not None:
                delay = min(failure.retry_after, policy.max_retry_after)
            else:
                delay = policy.backoff(retry)
            sleep(delay)
    raise AssertionError("unreachable")
