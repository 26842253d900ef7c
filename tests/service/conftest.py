"""Fixtures for service tests: a tiny model store and an app served in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.settings import Settings
from tests.tiny_models import make_tiny_store


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_store(tmp_path_factory.mktemp("store") / "model_store")


AppClient = Callable[..., Any]


@pytest.fixture
def app_client(tiny_store: Path) -> AppClient:
    """``async with app_client(**settings) as (client, app)``: the app started with its lifespan."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
        # In-process engines that stay dead by default: tests reach into the engine (slow steps,
        # injected faults); tests/service/test_engine_process.py covers engine processes and restarts.
        defaults = {"model_store": tiny_store, "threads": 1, "engine_process": False, "restart_engines": False}
        settings = Settings(**{**defaults, **overrides})
        app = create_app(settings, load_in_background=False)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
                yield client, app

    return start


def translation_texts(translations: list[dict]) -> list[tuple[str, list[str]]]:
    """What a /translate reply says, without its scores (their last digits depend on the batch)."""
    return [(t["text"], [a["text"] for a in t["alternatives"] or []]) for t in translations]
