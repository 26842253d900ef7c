"""API keys: where they come from, how a request's key is checked, and which paths need which scope.

Off unless a key is configured (``--api-keys``, ``--admin-api-keys``, ``--api-keys-file``).
Then every request names its key as ``Authorization: Bearer <key>``:

========================================  =====================================================
path                                      needs
========================================  =====================================================
``/``, ``/static/*``, ``/health/*``       nothing (the web page, and the probes)
``/translate``, ``/chat``, ``/models*``   a key with the ``infer`` scope
``/admin``, ``/admin/*``                  a key with the ``admin`` scope, whatever routes exist
``/metrics``; ``/docs``, ``/redoc``,      nothing, or any key (``--metrics-access``,
``/openapi.json``                         ``--docs-access``)
anything else                             any key (an unknown path is 404 only for a caller
                                          with a key)
========================================  =====================================================

No key, or an unknown one: 401 with ``WWW-Authenticate: Bearer``; a key without the scope:
403. A key passes, then, through its rate limits (:mod:`service.ratelimit`).

Keys are never kept, compared or logged in clear: the store holds their SHA-256 digests, a
request's key is hashed and compared with every stored digest by ``hmac.compare_digest``,
without stopping at a match, so the time a check takes tells nothing about how much of a
guess was right or which key matched. What identifies a key in logs and metrics is its
name: the keys file's, or ``key-`` and the first 8 hex digits of its digest for keys from
the environment (``printf %s "$KEY" | sha256sum | cut -c1-8`` tells which one it is).

The keys file (``--api-keys-file``), one key per line, ``#`` starts a comment::

    # NAME       KEY                                    SCOPES        LIMITS (optional)
    web-frontend 9f1c2a7e4b6d8f0a1c3e5b7d9f2a4c6e     infer         rps=20 tokens_per_min=60000
    ops          0d2f4a6c8e1b3d5f7a9c2e4b6d8f1a3c     infer,admin

A key's limits override the settings' defaults (``--rate-limit-*``) one by one; ``0`` lifts
one. SIGHUP (or ``KeyStore.reload()``, which ``/admin/reload`` calls) re-reads the file; a
file that does not parse leaves the keys in force as they were.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import math
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
from service.errors import Forbidden, KeysFileInvalid, RateLimited, ServiceError, Unauthorized
from service.ratelimit import Limits, RateLimiter

if TYPE_CHECKING:
    from service.metrics import Metrics
    from service.settings import Settings

log = logging.getLogger("service.auth")

INFER, ADMIN = "infer", "admin"
SCOPES = (INFER, ADMIN)
ANY_KEY = "any key"  # a path that takes every valid key, whatever its scopes
# RFC 6750's b64token characters, so a key always fits in the header as it is.
KEY_PATTERN = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
LIMIT_FIELDS = {f.name: f.type for f in dataclasses.fields(Limits)}
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")  # FastAPI's defaults


def check_key(key: str) -> None:
    """Refuse a key that could not be sent as a Bearer token or is short enough to guess.
    The message never quotes the key."""
    if not KEY_PATTERN.fullmatch(key):
        raise ValueError(
            f"an API key of {len(key)} characters was refused: keys are 16 to 256 characters "
            "of A-Z, a-z, 0-9 and - . _ ~ + / ="
        )


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    scopes: frozenset[str]
    digest: bytes = dataclasses.field(repr=False)
    limits: dict[str, float] = dataclasses.field(default_factory=dict)  # overrides of the default Limits


def read_keys_file(path: Path) -> list[ApiKey]:
    """The keys of ``path``; :class:`ValueError` naming the file and line of the first problem."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the API keys file {path}: {exc}") from exc
    keys: list[ApiKey] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            keys.append(_parse_line(fields))
        except ValueError as exc:
            raise ValueError(f"{path}, line {number}: {exc}") from None
    try:
        _check_unique(keys)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return keys


def _parse_line(fields: list[str]) -> ApiKey:
    """One line's key. Messages never quote a field: a key written in the wrong place would be shown."""
    if len(fields) < 3:
        raise ValueError("expected NAME KEY SCOPES [rps=R] [burst=B] [tokens_per_min=T]")
    name, key, scopes, *options = fields
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError("the name (first field) must be 1 to 64 characters of A-Z, a-z, 0-9 and - . _")
    check_key(key)
    scope_set = frozenset(scopes.split(","))
    if not scope_set <= set(SCOPES):
        raise ValueError(f"the scopes (third field) must be a comma-separated list of {', '.join(SCOPES)}")
    limits: dict[str, float] = {}
    for position, option in enumerate(options, 4):
        field, _, value = option.partition("=")
        if field not in LIMIT_FIELDS:
            raise ValueError(f"field {position}: limits are {', '.join(f'{f}=N' for f in LIMIT_FIELDS)}")
        try:
            number = float(value) if LIMIT_FIELDS[field] == "float" else int(value)
        except ValueError:
            number = -1
        if not (math.isfinite(number) and number >= 0):
            raise ValueError(f"field {position}: {field} must be a number of 0 or more")
        limits[field] = number
    return ApiKey(name, scope_set, key_digest(key), limits)


def _check_unique(keys: list[ApiKey]) -> None:
    names: set[str] = set()
    digests: dict[bytes, str] = {}
    for key in keys:
        if key.name in names:
            raise ValueError(f"two keys are named {key.name!r}")
        if key.digest in digests:
            raise ValueError(f"keys {digests[key.digest]!r} and {key.name!r} are the same key")
        names.add(key.name)
        digests[key.digest] = key.name


def environment_keys(settings: Settings) -> list[ApiKey]:
    """``--api-keys`` (infer) and ``--admin-api-keys`` (admin); a key in both has both scopes."""
    scopes: dict[bytes, set[str]] = {}
    for scope, secrets in ((INFER, settings.api_keys), (ADMIN, settings.admin_api_keys)):
        for secret in secrets:
            scopes.setdefault(key_digest(secret.get_secret_value()), set()).add(scope)
    return [ApiKey(f"key-{digest.hex()[:8]}", frozenset(s), digest) for digest, s in scopes.items()]


class KeyStore:
    """Every valid key, hashed; ``app.state.keys``. ``enabled`` is false when no key is configured."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth_enabled
        self.path = settings.api_keys_file
        self.defaults = Limits(settings.rate_limit_rps, settings.rate_limit_burst, settings.rate_limit_tokens_per_min)
        self._environment = environment_keys(settings)
        self._keys: tuple[ApiKey, ...] = ()
        self._limits: dict[str, Limits] = {}
        self.generation = 0  # how many times the keys were loaded
        self._load()

    def _load(self) -> None:
        keys = [*self._environment, *(read_keys_file(self.path) if self.path is not None else [])]
        _check_unique(keys)
        limits = {}
        for key in keys:
            try:
                limits[key.name] = dataclasses.replace(self.defaults, **key.limits)
            except ValueError as exc:
                raise ValueError(f"key {key.name!r}: {exc}") from None
        self._keys, self._limits = tuple(keys), limits  # both at once: a check sees the old set or the new
        self.generation += 1

    def reload(self) -> None:
        """Re-read the keys file (nothing to do without one). A file that does not parse raises
        :class:`KeysFileInvalid` and the keys in force stay as they were."""
        if self.path is None:
            return
        try:
            self._load()
        except ValueError as exc:
            raise KeysFileInvalid(f"API keys not reloaded, the old ones stay in force: {exc}") from exc
        log.info("API keys reloaded from %s: %s", self.path, ", ".join(sorted(self.names())) or "none")

    def reload_logged(self) -> None:
        """:meth:`reload` for SIGHUP, where nobody is there to answer: a failure is logged."""
        try:
            self.reload()
        except KeysFileInvalid as exc:
            log.error("%s", exc.message)

    def reload_on_sighup(self) -> Callable[[], None]:
        """From now on SIGHUP reloads the keys file, on the running event loop; returns what undoes
        that. Nothing happens without a file, or off the main thread (a test's app)."""
        if self.path is None:
            return lambda: None
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload_logged)
        except (ValueError, RuntimeError, NotImplementedError):
            return lambda: None

        def remove() -> None:
            loop.remove_signal_handler(signal.SIGHUP)

        return remove

    def verify(self, key: str) -> ApiKey | None:
        """The stored key equal to ``key``, or ``None``. Every digest is compared, match or not."""
        digest = key_digest(key)
        found = None
        for candidate in self._keys:
            if hmac.compare_digest(digest, candidate.digest):
                found = candidate
        return found

    def limits(self, key: ApiKey) -> Limits:
        return self._limits[key.name]

    def names(self) -> set[str]:
        return {k.name for k in self._keys}


def required_scope(path: str, settings: Settings) -> str | None:
    """What a request for ``path`` needs: ``None`` (open), :data:`ANY_KEY`, or a scope."""
    if path == "/" or _under(path, "/static") or _under(path, "/health"):
        return None
    if _under(path, "/admin"):
        return ADMIN
    if any(_under(path, prefix) for prefix in ("/translate", "/chat", "/models")):
        return INFER
    if path == "/metrics":
        return None if settings.metrics_access == "open" else ANY_KEY
    if path in DOCS_PATHS:
        return None if settings.docs_access == "open" else ANY_KEY
    return ANY_KEY


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


class AuthMiddleware:
    """Checks the key and scope of every request that needs one, then its rate limits; after the
    reply, charges the generated tokens (``request.state.generated_tokens``) to the key.

    Sits inside :class:`~service.middleware.RequestContextMiddleware`, which logs the key's name
    (``state["api_key"]``) with the request and counts it in the metrics."""

    def __init__(self, app: ASGIApp, keys: KeyStore, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.keys = keys
        self.settings = settings
        self.metrics = metrics
        self.limiter = RateLimiter()
        self._generation = keys.generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        needed = required_scope(scope["path"], self.settings) if scope["type"] == "http" else None
        if needed is None:
            await self.app(scope, receive, send)
            return
        try:
            key = self._authenticate(scope, needed)
        except ServiceError as error:
            await error_response(error)(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        state["api_key"] = key.name
        if self._generation != self.keys.generation:  # keys were reloaded: drop the buckets of removed ones
            self.limiter.retain(self.keys.names())
            self._generation = self.keys.generation
        limits = self.keys.limits(key)
        try:
            headers = self.limiter.admit(key.name, limits, time.monotonic())
        except RateLimited as error:
            self.metrics.rate_limited.labels(key.name).inc()
            await error_response(error)(scope, receive, send)
            return
        raw_headers = [(k.encode(), v.encode()) for k, v in headers.items()]

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start" and raw_headers:
                message["headers"] = [*message.get("headers", []), *raw_headers]
            await send(message)

        try:
            await self.app(scope, receive, send_with_limits)
        finally:
            tokens = state.get("generated_tokens") or 0
            if tokens:
                self.limiter.debit_tokens(key.name, limits, tokens, time.monotonic())
                self.metrics.key_generated_tokens.labels(key.name).inc(tokens)

    def _authenticate(self, scope: Scope, needed: str) -> ApiKey:
        token = bearer_token(scope)
        if token is None:
            raise Unauthorized("an API key is required: send it as 'Authorization: Bearer <key>'")
        key = self.keys.verify(token) if token else None
        if key is None:
            raise Unauthorized("the API key is not valid", error="invalid_token")
        if needed != ANY_KEY and needed not in key.scopes:
            raise Forbidden(f"API key {key.name!r} lacks the {needed!r} scope that {scope['path']} needs", needed)
        return key


def client_name(request: HTTPConnection) -> str:
    """The name of the API key that sent ``request``; "" when keys are off."""
    return getattr(request.state, "api_key", "")
