"""Per-API-key rate limits: a token bucket for requests per second and one for generated tokens per minute.

A bucket holds up to ``capacity`` units and refills at ``rate`` units per second. A request
takes one unit from its key's request bucket, or is refused (429 ``rate_limited``) when less
than one is left. Generated tokens are only known once the answer is complete, so they are
debited afterwards, and the bucket may go below zero: a request is refused while its key's
token bucket holds less than one token, until the refill brings it back. One long answer can
overdraw the key's budget, never anyone else's.

Which limits a key has comes from :class:`Limits`: the settings' defaults
(``--rate-limit-rps``, ``--rate-limit-burst``, ``--rate-limit-tokens-per-min``), overridden
per key in the keys file (see :mod:`service.auth`). A key's buckets live as long as the key
and its limits; a reload that changes a key's limits starts its buckets afresh.

Everything runs on the event loop, so there is no lock. The reply headers follow the IETF
draft ``RateLimit-Limit`` / ``RateLimit-Remaining`` / ``RateLimit-Reset`` (seconds until the
bucket is full again).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from service.errors import RateLimited

RATE_LIMIT_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


@dataclass(frozen=True, slots=True)
class Limits:
    """A key's limits; 0 means no limit (``burst`` 0: as many requests as one second's rate)."""

    rps: float = 0.0  # requests per second, sustained
    burst: int = 0  # requests at once, on top of an idle period
    tokens_per_min: int = 0  # generated tokens per minute

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) and v >= 0 for v in (self.rps, self.burst, self.tokens_per_min)):
            raise ValueError("rate limits are finite numbers of 0 or more")
        if self.burst and not self.rps:
            raise ValueError("a burst needs a rate (rps)")

    @property
    def request_capacity(self) -> int:
        return self.burst or max(1, math.ceil(self.rps))


@dataclass(slots=True)
class TokenBucket:
    capacity: float
    rate: float  # units per second
    level: float
    updated: float  # time.monotonic() of ``level``

    @classmethod
    def full(cls, capacity: float, rate: float, now: float) -> TokenBucket:
        return cls(capacity, rate, capacity, now)

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_s(self, units: float) -> float:
        """Seconds until the bucket holds ``units`` (after :meth:`refill`)."""
        return max(0.0, (units - self.level) / self.rate)

    def headers(self) -> dict[str, str]:
        """``RateLimit-Limit``, ``-Remaining`` and ``-Reset`` (:data:`RATE_LIMIT_HEADERS`)."""
        limit, remaining, reset = RATE_LIMIT_HEADERS
        return {
            limit: str(int(self.capacity)),
            remaining: str(max(0, math.floor(self.level))),
            reset: str(math.ceil(self.wait_s(self.capacity))),
        }


@dataclass(slots=True)
class _KeyBuckets:
    limits: Limits
    requests: TokenBucket | None
    tokens: TokenBucket | None


class RateLimiter:
    """The buckets of every key, by key name."""

    def __init__(self) -> None:
        self._keys: dict[str, _KeyBuckets] = {}

    def _buckets(self, name: str, limits: Limits, now: float) -> _KeyBuckets:
        buckets = self._keys.get(name)
        if buckets is None or buckets.limits != limits:
            requests = TokenBucket.full(limits.request_capacity, limits.rps, now) if limits.rps else None
            tokens = (
                TokenBucket.full(limits.tokens_per_min, limits.tokens_per_min / 60, now)
                if limits.tokens_per_min
                else None
            )
            buckets = self._keys[name] = _KeyBuckets(limits, requests, tokens)
        return buckets

    def admit(self, name: str, limits: Limits, now: float) -> dict[str, str]:
        """Take one request from key ``name``'s budget and return the ``RateLimit-*`` headers for
        its reply, or raise :class:`RateLimited` (the key's budget is spent; nothing is taken)."""
        buckets = self._buckets(name, limits, now)
        refused: tuple[str, TokenBucket] | None = None
        for what, bucket in (("requests", buckets.requests), ("generated tokens", buckets.tokens)):
            if bucket is not None:
                bucket.refill(now)
                if bucket.level < 1 and refused is None:
                    refused = (what, bucket)
        if refused is not None:
            what, bucket = refused
            wait = bucket.wait_s(1)
            raise RateLimited(
                f"API key {name!r} is over its limit of {_describe(limits, what)}; retry in {wait:.1f} s",
                retry_after_s=math.ceil(wait),
                headers=bucket.headers(),
            )
        if buckets.requests is not None:
            buckets.requests.level -= 1
        shown = buckets.requests or buckets.tokens  # the headers describe one bucket: requests, if limited
        return shown.headers() if shown is not None else {}

    def debit_tokens(self, name: str, limits: Limits, tokens: int, now: float) -> None:
        """Charge ``tokens`` generated tokens to key ``name`` (its balance may go below zero)."""
        bucket = self._buckets(name, limits, now).tokens
        if bucket is not None and tokens:
            bucket.refill(now)
            bucket.level -= tokens

    def retain(self, names: set[str]) -> None:
        """Forget the buckets of keys that no longer exist (after a reload)."""
        for name in self._keys.keys() - names:
            del self._keys[name]


def _describe(limits: Limits, what: str) -> str:
    if what == "requests":
        return f"{limits.rps:g} requests per second (bursts of {limits.request_capacity})"
    return f"{limits.tokens_per_min} generated tokens per minute"
