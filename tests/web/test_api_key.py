"""The page against a server that asks for API keys (tiny test models), in headless Chromium with
the page's Content-Security-Policy in force: it asks for a key on 401, keeps it for the tab's
session only and sends it as the Bearer header."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server_process import ServiceProcess
from tests.tiny_models import make_tiny_store

pytestmark = pytest.mark.slow

KEY = "page-infer-key-0123456789"
STORAGE = "seq2seq-api-key"


@pytest.fixture(scope="module")
def keyed_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("keyed-page")
    args = ["--engine-process", "false", "--shutdown-grace-s", "2"]
    env = {"SEQ2SEQ_API_KEYS": KEY}
    with ServiceProcess(root / "server.log", *args, store=make_tiny_store(root / "store"), env=env) as server:
        server.wait_ready(60)
        yield server.url


def new_page(browser: Any, problems: list[str]) -> tuple[Any, Any]:
    """A page in a context of its own (own sessionStorage), with the page's CSP in force."""
    context = browser.new_context(viewport={"width": 1100, "height": 900}, locale="en-US")
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None)
    return context, page


def models_loaded(page: Any) -> None:
    page.wait_for_selector("#translate-model option[value^='pair:']", state="attached")


def test_the_page_asks_for_a_key_and_keeps_it_for_the_session(browser: Any, keyed_url: str, artifacts: Path) -> None:
    problems: list[str] = []
    context, page = new_page(browser, problems)
    sent: list[tuple[str, str | None]] = []
    page.on(
        "request",
        lambda r: (
            sent.append((r.url.removeprefix(keyed_url), r.headers.get("authorization")))
            if r.url.removeprefix(keyed_url).startswith(("/models", "/translate"))
            else None
        ),
    )
    try:
        page.goto(f"{keyed_url}/#translate")
        page.wait_for_selector("#key-dialog[open]")
        assert page.get_attribute("#key-input", "type") == "password"
        assert page.evaluate("document.activeElement.id") == "key-input"  # focus goes to the question
        page.fill("#key-input", "not-the-key-0123456789")
        page.click("#key-use")
        page.wait_for_selector("#key-dialog-message:has-text('did not accept')")
        page.wait_for_selector("#key-dialog[open]")
        page.screenshot(path=str(artifacts / "api-key.png"), full_page=True)
        page.fill("#key-input", KEY)
        page.press("#key-input", "Enter")
        models_loaded(page)
        assert not page.is_visible("#key-dialog")
        assert page.evaluate(f"sessionStorage.getItem('{STORAGE}')") == KEY
        assert page.evaluate("localStorage.length") == 0  # never kept beyond the session

        page.select_option("#translate-model", "model:translate-de-en")
        page.fill("#translate-text", "Ein Mann spielt im Park.")
        page.click("#translate-submit")
        page.wait_for_selector("#translate-result .translation .output")
        assert page.is_hidden("#translate-error")
        asked = [auth for path, auth in sent if path == "/models"]
        assert asked == [None, "Bearer not-the-key-0123456789", f"Bearer {KEY}"]  # no key, the wrong one, the key
        assert [auth for path, auth in sent if path == "/translate"] == [f"Bearer {KEY}"]

        sent.clear()
        page.reload()  # same tab: the key is still there, nothing is asked
        models_loaded(page)
        assert not page.is_visible("#key-dialog") and sent[0] == ("/models", f"Bearer {KEY}")
    finally:
        context.close()

    context, page = new_page(browser, problems)  # another session asks again
    try:
        page.goto(f"{keyed_url}/#translate")
        page.wait_for_selector("#key-dialog[open]")
        page.click("#key-cancel")  # turned down: the page says why and does not ask again by itself
        page.wait_for_selector("#key-button:not([hidden])")
        assert "asks for an API key" in page.inner_text("#server-status")
        assert not page.is_visible("#key-dialog")
        page.click("#key-button")
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#key-input", KEY)
        page.click("#key-use")
        models_loaded(page)
        assert page.is_hidden("#key-button")
    finally:
        context.close()
    assert not problems, problems
