"""The OpenAPI document with this server's own limits, so that what the schema allows the server takes.

The request schemas are classes and know nothing of the settings; the limits that the
settings set (text length, texts per request, beam size, output length) are written into
the generated document once, when it is first asked for. With API keys on, so is the
bearer scheme: each operation that needs a key says so, with its scope and its 401 and 403.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from service.auth import ANY_KEY, required_scope
from service.settings import Settings

ERROR_BODY = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


def limits(settings: Settings) -> dict[str, dict[str, dict[str, int]]]:
    """JSON-schema keywords per request schema and property."""
    text = {"maxLength": settings.max_text_chars}
    decoding = {
        "beam_size": {"maximum": settings.max_beam_size},
        "n_best": {"maximum": settings.max_beam_size},
        "max_length": {"maximum": settings.max_output_tokens},
        "min_length": {"maximum": settings.max_output_tokens},
    }
    return {
        "TranslateRequest": {"text": text, "texts": {"maxItems": settings.max_texts}, **decoding},
        "ChatRequest": {"message": text, **decoding},
    }


def document_security(document: dict[str, Any], settings: Settings) -> None:
    """The bearer scheme, and on each operation that needs a key: which, and its 401 and 403."""
    document["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "an API key: Authorization: Bearer <key>"}
    }
    for path, operations in document["paths"].items():
        scope = required_scope(path, settings)
        if scope is None:
            continue
        needs = "any API key" if scope == ANY_KEY else f"an API key with the `{scope}` scope"
        for operation in operations.values():
            operation["security"] = [{"bearer": []}]
            operation["description"] = (operation.get("description", "") + f"\n\nNeeds {needs}.").strip()
            responses = operation.setdefault("responses", {})
            responses["401"] = {"description": "no API key, or an unknown one", "content": ERROR_BODY}
            if scope != ANY_KEY:
                responses["403"] = {"description": f"the key lacks the `{scope}` scope", "content": ERROR_BODY}


def install(app: FastAPI, settings: Settings) -> None:
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            schemas = document["components"]["schemas"]
            for name, properties in limits(settings).items():
                for prop, keywords in properties.items():
                    target = schemas[name]["properties"][prop]
                    if prop == "texts":  # the list itself, not its items
                        target = next(s for s in target.get("anyOf", [target]) if s.get("type") == "array")
                        target["items"]["maxLength"] = settings.max_text_chars
                    elif "anyOf" in target:  # optional: the non-null branch
                        target = next(s for s in target["anyOf"] if s.get("type") != "null")
                    target.update(keywords)
            if settings.auth_enabled:
                document_security(document, settings)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
