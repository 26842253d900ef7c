"""The web page is served: GET / and /static/*, with the ids its script relies on present."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.api.ui import STATIC_DIR
from service.app import create_app
from service.settings import Settings


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(model_store=tmp_path, threads=1), load_in_background=False)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            yield client


async def test_index_is_served_at_root(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-cache"
    assert "x-request-id" in r.headers
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in r.text


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/static/app.js", "javascript"), ("/static/style.css", "text/css"), ("/static/index.html", "text/html")],
)
async def test_static_files(client: httpx.AsyncClient, path: str, content_type: str) -> None:
    r = await client.get(path)
    assert r.status_code == 200
    assert content_type in r.headers["content-type"]
    assert r.headers["cache-control"] == "no-cache"
    etag = r.headers["etag"]
    again = await client.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304


@pytest.mark.parametrize("path", ["/static/nope.js", "/static/../app.py", "/static/%2e%2e/app.py"])
async def test_missing_or_outside_files_are_404(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 404
    assert "error" in r.json()


async def test_page_is_not_in_the_openapi_schema(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/" not in paths
    assert not any(p.startswith("/static") for p in paths)


def test_every_id_the_script_uses_is_in_the_page() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    script = (STATIC_DIR / "app.js").read_text()
    ids = set(re.findall(r'\bid="([^"]+)"', html))
    used = set(re.findall(r'\$\("#([\w-]+)', script)) | set(re.findall(r'getElementById\("([\w-]+)"\)', script))
    assert used, "the pattern found no ids: update this test"
    assert used <= ids, f"ids used by app.js but missing from index.html: {sorted(used - ids)}"


def test_every_form_control_in_the_page_has_a_label() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    controls = re.findall(r"<(?:input|select|textarea)\b[^>]*\bid=\"([^\"]+)\"", html)
    labelled = set(re.findall(r'<label for="([^"]+)"', html))
    assert controls
    assert set(controls) <= labelled, f"controls without a <label for>: {sorted(set(controls) - labelled)}"
