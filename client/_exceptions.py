"""Every error the client raises, under one base class, so callers catch at the level they care about.

::

    Seq2SeqError
     ├── TransportError                 no usable HTTP response
     │    ├── ConnectError              could not connect, or the connection dropped   (retried)
     │    └── Timeout                   the server took longer than the client timeout
     ├── ProtocolError                  the reply does not follow the API (not JSON, stream cut short)
     └── APIError                       the server answered with an error body
          ├── InvalidRequest        422 invalid_request
          ├── PayloadTooLarge       413 payload_too_large
          ├── Unauthorized          401 unauthorized        (no API key, or one the server does not know)
          ├── Forbidden             403 forbidden           (the API key lacks the route's scope)
          ├── NotFound              404 not_found
          │    └── ModelNotFound    404 model_not_found
          ├── Overloaded            429 overloaded          (retried; .retry_after)
          ├── RateLimited           429 rate_limited        (retried; .retry_after: the API key's rate limit)
          ├── InternalServerError   500 internal_error
          ├── Unavailable           503 unavailable         (retried; .retry_after)
          └── DeadlineExceeded      504 deadline_exceeded

A server ``{"error": {"code", "message"}}`` body maps to a class by ``code``; a reply
without one (a proxy's HTML 502, say) maps by status, else to plain :class:`APIError`.
SSE ``error`` events raise the same classes, so a streamed and a whole reply fail alike.
Every error carries ``status``, ``code``, ``message`` and ``request_id`` (the
``X-Request-ID`` the client sent), which is what the server's log lines are keyed by.
"""

from __future__ import annotations

from typing import Any


class Seq2SeqError(Exception):
    """Base of every client error.

    ``status`` is the HTTP status (``None`` when no response arrived); ``code`` is the
    API's machine-readable error code, or a client-side one such as ``connection_error``.
    """

    status: int | None = None
    code: str = "error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.message} (code={self.code}, status={self.status}, request_id={self.request_id})"


class TransportError(Seq2SeqError):
    """The request did not get an HTTP response."""

    code = "transport_error"


class ConnectError(TransportError):
    """Connecting failed or the connection dropped before a reply; safe to retry, as no endpoint has side effects."""

    code = "connection_error"


class Timeout(TransportError):
    """No reply within the client's timeout. Not retried: the server is probably still working on it."""

    code = "timeout"


class ProtocolError(Seq2SeqError):
    """The server's reply is not what the API promises: not JSON, missing fields, or a stream without ``done``."""

    code = "protocol_error"


class APIError(Seq2SeqError):
    """The server answered with an error.

    ``details`` holds the body's optional ``details`` (e.g. ``available`` for an unknown
    language pair); ``retry_after`` is the ``Retry-After`` header in seconds, when sent.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, request_id=request_id)
        self.details = details or {}
        self.retry_after = retry_after


class InvalidRequest(APIError):
    """Malformed JSON, unknown field, option out of range, empty or too long text."""

    status = 422
    code = "invalid_request"


class PayloadTooLarge(APIError):
    status = 413
    code = "payload_too_large"


class Unauthorized(APIError):
    """The server wants an API key (``api_key=``, ``$SEQ2SEQ_API_KEY``) and got none, or one it does not know."""

    status = 401
    code = "unauthorized"


class Forbidden(APIError):
    """The API key is valid but lacks the scope of the route (``infer`` or ``admin``)."""

    status = 403
    code = "forbidden"


class NotFound(APIError):
    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    """Unknown model name or language pair; ``details["available"]`` lists what exists, when the server says."""

    code = "model_not_found"


class Overloaded(APIError):
    """The model's queue is full; ``retry_after`` says when the server expects room."""

    status = 429
    code = "overloaded"


class RateLimited(APIError):
    """This API key is over its rate limit (requests or generated tokens); other keys are served.
    ``retry_after`` says when it has budget again."""

    status = 429
    code = "rate_limited"


class InternalServerError(APIError):
    status = 500
    code = "internal_error"


class Unavailable(APIError):
    """Model still loading, server draining, or its worker dead."""

    status = 503
    code = "unavailable"


class DeadlineExceeded(APIError):
    """The request's deadline (the ``timeout`` decoding option) passed in the queue or during generation."""

    status = 504
    code = "deadline_exceeded"


_API_ERRORS: tuple[type[APIError], ...] = (
    InvalidRequest,
    PayloadTooLarge,
    Unauthorized,
    Forbidden,
    NotFound,
    ModelNotFound,
    Overloaded,
    RateLimited,
    InternalServerError,
    Unavailable,
    DeadlineExceeded,
)
_BY_CODE = {cls.code: cls for cls in _API_ERRORS}
# ModelNotFound comes after NotFound (RateLimited after Overloaded) above, so the status fallback
# keeps the general class of the status.
_BY_STATUS = {cls.status: cls for cls in reversed(_API_ERRORS)}


def api_error_class(code: str | None, status: int | None) -> type[APIError]:
    """The class for an error ``code``; for codes this client does not know, the class of the status."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    return _BY_STATUS.get(status, APIError)
