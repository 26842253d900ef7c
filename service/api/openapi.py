"""The OpenAPI document with this server's own limits, so that what the schema allows the server takes.

The request schemas are classes and know nothing of the settings; the limits that the
settings set (text length, texts per request, beam size, output length) are written into
the generated document once, when it is first asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from service.settings import Settings


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
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
