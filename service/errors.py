"""The one error hierarchy of the service, and the one way it is rendered.

::

    ServiceError
     ├── InvalidRequest         422  invalid_request
     ├── PayloadTooLarge        413  payload_too_large
     ├── Unauthorized           401  unauthorized        (+ WWW-Authenticate: Bearer; missing or unknown API key)
     ├── Forbidden              403  forbidden           (the API key lacks the route's scope)
     ├── KeysFileInvalid        422  invalid_keys_file   (a reload found the API keys file invalid)
     ├── NotFound               404  not_found
     │    └── ModelNotFound     404  model_not_found
     ├── Conflict               409  conflict            (an admin action the server's state forbids)
     ├── ModelLoadFailed        422  model_load_failed   (an admin load refused: the version does not verify or load)
     ├── Overloaded             429  overloaded          (+ Retry-After; the model's queue is full)
     ├── RateLimited            429  rate_limited        (+ Retry-After, RateLimit-*; the API key's limit)
     ├── DeadlineExceeded       504  deadline_exceeded
     ├── EngineUnavailable      503  unavailable         (loading, draining, dead worker)
     ├── ClientClosedRequest    499  client_closed       (only logged: nobody is left to read it)
     └── InternalError          500  internal_error

Every error body is ``{"error": {"code": ..., "message": ...}}``, for JSON replies and SSE
``error`` events alike; the Python client maps ``code`` back to these classes.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by state, not by constructor arguments (subclasses take other ones): errors
        cross from an engine process to the HTTP process."""
        return _rebuild, (type(self), self.message, self.__dict__)

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"error": error}


class InvalidRequest(ServiceError):
    status_code = 422
    code = "invalid_request"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class Unauthorized(ServiceError):
    """No API key, or one the server does not know. ``error`` is RFC 6750's code for the header
    (``invalid_token`` for an unknown key; none when the request carried no key at all)."""

    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str, error: str | None = None, **kwargs: Any) -> None:
        challenge = 'Bearer realm="seq2seq-serve"' + (f', error="{error}"' if error else "")
        super().__init__(message, headers={"WWW-Authenticate": challenge}, **kwargs)


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"

    def __init__(self, message: str, scope: str, **kwargs: Any) -> None:
        challenge = f'Bearer realm="seq2seq-serve", error="insufficient_scope", scope="{scope}"'
        super().__init__(message, headers={"WWW-Authenticate": challenge}, **kwargs)


class KeysFileInvalid(ServiceError):
    """The API keys file does not parse; the keys in force stay as they were."""

    status_code = 422
    code = "invalid_keys_file"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class ModelLoadFailed(ServiceError):
    """A version that an admin action asked for does not verify or load; what served goes on serving."""

    status_code = 422
    code = "model_load_failed"


class Overloaded(ServiceError):
    status_code = 429
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int, **kwargs: Any) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_s))}, **kwargs)
        self.retry_after_s = max(1, retry_after_s)


class RateLimited(ServiceError):
    """The API key used up its requests or generated tokens for now (its token bucket is empty);
    unlike :class:`Overloaded`, other keys are still served."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: int, headers: dict[str, str], **kwargs: Any) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_s)), **headers}, **kwargs)
        self.retry_after_s = max(1, retry_after_s)


class DeadlineExceeded(ServiceError):
    status_code = 504
    code = "deadline_exceeded"


class EngineUnavailable(ServiceError):
    status_code = 503
    code = "unavailable"

    def __init__(self, message: str, retry_after_s: int | None = 1, **kwargs: Any) -> None:
        """``retry_after_s`` None: no ``Retry-After``, for what retrying cannot fix (a model that failed to load)."""
        headers = {} if retry_after_s is None else {"Retry-After": str(retry_after_s)}
        super().__init__(message, headers=headers, **kwargs)


class ClientClosedRequest(ServiceError):
    status_code = 499
    code = "client_closed"


class InternalError(ServiceError):
    status_code = 500
    code = "internal_error"


def _rebuild(cls: type[ServiceError], message: str, state: dict[str, Any]) -> ServiceError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error
