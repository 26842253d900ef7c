"""The web page: GET / serves ``service/static/index.html``; /static/* its script and styles.

A plain HTML/JS/CSS page with no build step. It talks to the same HTTP API as every other
client (/models, /translate, /chat with SSE), so it needs no routes of its own beyond the files.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

# Browsers revalidate on every load (a cheap 304 thanks to ETag), so a redeploy is seen at once.
NO_CACHE = "no-cache"
# The page loads only its own script and styles and talks only to this server; nobody may frame it.
PAGE_HEADERS = {
    "Cache-Control": NO_CACHE,
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class _RevalidatedStaticFiles(StaticFiles):
    def file_response(
        self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = NO_CACHE
        return response


router = APIRouter(tags=["ui"])
router.mount("/static", _RevalidatedStaticFiles(directory=STATIC_DIR), name="static")


@router.get("/", response_class=FileResponse, include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)
