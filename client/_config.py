"""Client configuration: small immutable objects with named defaults."""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
# Where the client finds its API key when none is given (a server with keys answers 401 without one).
API_KEY_ENV = "SEQ2SEQ_API_KEY"

# Generation can legitimately take a while (the server's own deadline defaults to 30 s and a
# request may ask for up to 600 s), so reads get a generous limit; connecting should be quick.
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """When and how long to wait before sending a request again.

    Retried: 429 ``overloaded`` and ``rate_limited``, 503 ``unavailable`` and connection failures, which are
    all transient and, since no endpoint has side effects, safe to repeat. Never retried:
    other 4xx (the same request fails the same way), 500, 504 and client timeouts (the
    server did the work and may be busy; repeating it piles on load).

    Attempt ``n`` (1-based) that failed waits ``backoff * 2 ** (n - 1)`` seconds, capped at
    ``max_backoff``, minus a random share of up to ``jitter`` of it so that clients turned
    away together do not come back together. A ``Retry-After`` header replaces that delay,
    also capped at ``max_backoff`` so one server hint cannot stall the caller for minutes.
    """

    max_attempts: int = 4  # including the first; 1 disables retries
    backoff: float = 0.5  # seconds before the first retry
    max_backoff: float = 8.0  # cap for every single wait, Retry-After included
    jitter: float = 0.5  # 0: exact delays; 1: anywhere between 0 and the full delay

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must not be negative")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_backoff)
        delay = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
        return delay * (1 - self.jitter * random.random())


DEFAULT_RETRY = Retry()
NO_RETRY = Retry(max_attempts=1)
