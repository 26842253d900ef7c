"""CORS: browsers on an allowed origin may call the API; others, or every origin with CORS off, may not.

The fast tests check the headers in-process (``SEQ2SEQ_CORS_ORIGINS`` / ``Settings.cors_origins``);
the slow one has real Chromium fetch() the service from pages on two other loopback origins.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from tests.web.support import WebEnv

ALLOWED = "http://app.example"
OTHER = "http://evil.example"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}


@pytest.fixture
async def client_for(tmp_path: Path) -> AsyncIterator[Any]:
    """``await client_for(origins)``: an httpx client of the app (lifespan run) over an empty model store."""
    async with AsyncExitStack() as stack:

        async def make(origins: list[str]) -> httpx.AsyncClient:
            settings = Settings(model_store=tmp_path, cors_origins=origins, threads=1)
            app = create_app(settings, load_in_background=False)
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            return await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://test"))

        yield make


async def test_preflight_from_allowed_origin_is_granted(client_for: Any) -> None:
    client = await client_for([ALLOWED])
    r = await client.options("/translate", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "content-type" in r.headers["access-control-allow-headers"].lower()


async def test_post_from_allowed_origin_gets_allow_origin_and_exposed_headers(client_for: Any) -> None:
    client = await client_for([ALLOWED, "http://second.example"])
    # The store is empty, so the reply is the API's 404 error body: the page must be able to read it.
    r = await client.post("/translate", json={"text": "Hallo Welt."}, headers={"Origin": ALLOWED})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    assert r.headers["access-control-allow-origin"] == ALLOWED
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert {"retry-after", "x-request-id"} <= exposed
    # A validation error (422) is readable cross-origin too.
    r = await client.post("/translate", json={"text": "Hallo", "beam_size": 0}, headers={"Origin": ALLOWED})
    assert r.status_code == 422
    assert r.headers["access-control-allow-origin"] == ALLOWED
    # And a plain GET.
    r = await client.get("/models", headers={"Origin": "http://second.example"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "http://second.example"


async def test_disallowed_origin_gets_no_allow_origin(client_for: Any) -> None:
    client = await client_for([ALLOWED])
    r = await client.options("/translate", headers={"Origin": OTHER, **PREFLIGHT})
    assert r.status_code == 400
    assert "access-control-allow-origin" not in r.headers
    r = await client.post("/translate", json={"text": "Hallo Welt."}, headers={"Origin": OTHER})
    assert "access-control-allow-origin" not in r.headers
    r = await client.get("/models", headers={"Origin": OTHER})
    assert r.status_code == 200  # the server answers; the browser withholds the body from the page
    assert "access-control-allow-origin" not in r.headers


async def test_cors_off_by_default(client_for: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEQ2SEQ_CORS_ORIGINS", raising=False)
    assert Settings(model_store=Path(".")).cors_origins == []
    client = await client_for([])
    r = await client.options("/translate", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert r.status_code == 405
    assert "access-control-allow-origin" not in r.headers
    r = await client.post("/translate", json={"text": "Hallo Welt."}, headers={"Origin": ALLOWED})
    assert r.status_code == 404
    assert "access-control-allow-origin" not in r.headers


def test_cors_origins_env_var_is_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQ2SEQ_CORS_ORIGINS", f"{ALLOWED}, http://second.example")
    assert Settings(model_store=Path(".")).cors_origins == [ALLOWED, "http://second.example"]


# ---------------------------------------------------------------------------------------------
# Real browser: fetch() from a page on another origin

FETCH = """async ([url, init]) => {
  try {
    const response = await fetch(url, init);
    return {fetched: true, status: response.status, body: await response.json()};
  } catch (error) {
    return {fetched: false, error: String(error)};
  }
}"""
TRANSLATE = {
    "method": "POST",
    "headers": {"Content-Type": "application/json"},  # not a "simple" request: preflighted
    "body": '{"text": "Zwei Hunde spielen im Schnee.", "model": "translate-de-en"}',
}


@pytest.mark.slow
def test_browser_fetch_across_origins(web_env: WebEnv, browser: Any) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        blocked: list[str] = []
        page.on("console", lambda msg: blocked.append(msg.text) if "CORS" in msg.text else None)

        page.goto(f"{web_env.allowed.origin}/index.html")
        translated = page.evaluate(FETCH, [f"{web_env.service.url}/translate", TRANSLATE])
        assert translated["fetched"], translated
        assert translated["status"] == 200
        assert translated["body"]["translations"][0]["text"].strip()
        listed = page.evaluate(FETCH, [f"{web_env.service.url}/models", {}])
        assert listed["fetched"] and listed["status"] == 200, listed
        assert not blocked

        page.goto(f"{web_env.disallowed.origin}/index.html")
        for path, init in (("/translate", TRANSLATE), ("/models", {})):
            result = page.evaluate(FETCH, [f"{web_env.service.url}{path}", init])
            assert not result["fetched"], result
            assert "Failed to fetch" in result["error"]
        assert blocked, "Chromium should log the CORS block on the console"
    finally:
        context.close()
