"""Rendering of every error as ``{"error": {"code", "message"}}``, and its OpenAPI description."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import InvalidRequest, NotFound, ServiceError
from service.schemas import ErrorBody

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "unknown model or language pair (lists what is available)"},
    413: {"model": ErrorBody, "description": "request body too large"},
    422: {"model": ErrorBody, "description": "invalid input: the message says what to fix"},
    429: {"model": ErrorBody, "description": "queue full; retry after the Retry-After header"},
    503: {"model": ErrorBody, "description": "model loading, server draining, or worker dead"},
    504: {"model": ErrorBody, "description": "deadline exceeded"},
}


def error_response(error: ServiceError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


def describe_validation(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors:
        if e.get("type") == "json_invalid":
            return f"malformed JSON: {e.get('ctx', {}).get('error', e.get('msg'))}"
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if e.get("type") == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(InvalidRequest(describe_validation(list(exc.errors()))))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error: ServiceError | None = None
        if exc.status_code == 404:
            error = NotFound(f"no route {request.method} {request.url.path}")
        elif exc.status_code == 400 and exc.detail == "There was an error parsing the body":  # FastAPI's words
            error = InvalidRequest("malformed JSON: the body could not be decoded (it must be UTF-8)")
        if error is None:
            error = ServiceError(str(exc.detail), headers=dict(exc.headers or {}))  # 405 carries Allow
            error.status_code, error.code = exc.status_code, "http_error"
            if exc.status_code == 405:
                error.code = "method_not_allowed"
        return error_response(error)
