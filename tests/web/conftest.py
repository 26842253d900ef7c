"""Fixtures for the web tests (helpers in :mod:`tests.web.support`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server_process import ServiceProcess
from tests.web.support import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    PageServer,
    WebEnv,
    de_en_models,
    require_browser,
)

OTHER_ORIGIN_PAGE = "<!doctype html><html lang='en'><head><title>another origin</title></head><body></body></html>"


@pytest.fixture(scope="session")
def web_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebEnv]:
    """The service (de->en models and chat-en), with CORS allowing one of two page origins."""
    require_browser()
    pages = tmp_path_factory.mktemp("pages")
    (pages / "index.html").write_text(OTHER_ORIGIN_PAGE)
    allowed, disallowed = PageServer(pages), PageServer(pages)
    models = [*de_en_models(), "chat-en"]
    try:
        with ServiceProcess(
            tmp_path_factory.mktemp("server") / "server.log",
            "--models",
            ",".join(models),
            "--cors-origins",
            allowed.origin,
        ) as service:
            service.wait_ready(60)
            yield WebEnv(service, allowed, disallowed)
    finally:
        allowed.close()
        disallowed.close()


@pytest.fixture(scope="session")
def browser(web_env: WebEnv) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page (own context: no shared cache or storage); page errors fail the test.

    The page's Content-Security-Policy forbids evaluating strings as code, which is how
    Playwright runs the tests' ``wait_for_function`` predicates: the tests' context bypasses
    it. ``test_the_page_runs_under_its_own_csp`` loads the page with the policy in force."""
    context = browser.new_context(viewport={"width": 1100, "height": 900}, locale="en-US", bypass_csp=True)
    context.set_default_timeout(20_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
