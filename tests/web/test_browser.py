"""End to end in headless Chromium: the page at / against a real server with the bundled models.

One server (``python -m service --threads 1``) serves every test of the session. Screenshots
land in ``artifacts/web/`` (gitignored) for a person to look at.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.web.support import WebEnv

pytestmark = pytest.mark.slow

GERMAN = "Zwei Hunde spielen im Schnee."

# Installed before the message is sent: one (time, length) sample per mutation callback of the
# newest assistant reply. Several callbacks with growing lengths mean the text arrived in pieces.
RECORD_REPLY_LENGTHS = """() => {
  window.__replyLengths = [];
  const log = document.querySelector('#chat-log');
  new MutationObserver(() => {
    const replies = log.querySelectorAll('.msg.assistant .text');
    const last = replies[replies.length - 1];
    if (last) window.__replyLengths.push([performance.now(), last.textContent.length]);
  }).observe(log, {childList: true, subtree: true, characterData: true});
}"""


def open_page(page: Any, web_env: WebEnv, view: str = "translate") -> None:
    page.goto(f"{web_env.service.url}/#{view}")
    page.wait_for_function("document.querySelectorAll('#translate-model option').length > 0")


def api_models(web_env: WebEnv) -> list[dict[str, Any]]:
    return httpx.get(f"{web_env.service.url}/models", timeout=10).json()["models"]


def test_translate_with_keyboard_and_n_best(page: Any, web_env: WebEnv, artifacts: Path) -> None:
    open_page(page, web_env)
    assert page.get_attribute("#translate-result", "aria-live") == "polite"
    page.select_option("#translate-model", "model:translate-de-en")
    page.click("#translate-form summary")  # open the decoding options
    page.fill("#translate-beam_size", "4")
    page.fill("#translate-n_best", "3")
    page.fill("#translate-text", GERMAN)
    page.focus("#translate-text")
    page.keyboard.press("Control+Enter")

    output = page.wait_for_selector("#translate-result .translation .output")
    assert output.inner_text().strip()
    assert "score" in page.inner_text("#translate-result .translation .meta")
    alternatives = page.query_selector_all("#translate-result .alternatives li")
    assert len(alternatives) == 3
    assert page.is_hidden("#translate-error")
    page.screenshot(path=str(artifacts / "translate.png"), full_page=True)


def test_translate_errors_are_shown_from_the_api(page: Any, web_env: WebEnv, artifacts: Path) -> None:
    open_page(page, web_env)
    # Empty text: the server's 422 message, shown in the alert region.
    expected = httpx.post(f"{web_env.service.url}/translate", json={"text": ""}, timeout=10).json()["error"]
    page.fill("#translate-text", "")
    page.click("#translate-submit")
    alert = page.wait_for_selector("#translate-error:not([hidden])")
    assert alert.get_attribute("role") == "alert"
    assert expected["message"] in alert.inner_text()
    assert "422" in alert.inner_text()

    # An invalid combination of options (n_best > beam_size) is the server's to reject, too.
    page.click("#translate-form summary")
    page.fill("#translate-n_best", "3")
    page.fill("#translate-text", GERMAN)
    page.click("#translate-submit")
    page.wait_for_function(
        "document.querySelector('#translate-error').innerText.includes('n_best must not exceed beam_size')"
    )
    page.screenshot(path=str(artifacts / "error-422.png"), full_page=True)

    # 429 with Retry-After (simulated: a real full queue needs a flood of requests).
    body = {"error": {"code": "overloaded", "message": "queue of translate-de-en is full (256 waiting)"}}
    page.route(
        "**/translate",
        lambda route: route.fulfill(
            status=429, headers={"Retry-After": "3", "Content-Type": "application/json"}, body=json.dumps(body)
        ),
    )
    page.fill("#translate-n_best", "")
    page.click("#translate-submit")
    page.wait_for_function("document.querySelector('#translate-error').innerText.includes('queue of')")
    text = page.inner_text("#translate-error")
    assert "busy" in text and "Retry in 3 s" in text and "429" in text


def test_chat_reply_streams_token_by_token(page: Any, web_env: WebEnv, artifacts: Path) -> None:
    open_page(page, web_env)
    page.click("#tab-chat")
    assert page.is_visible("#chat-log")
    assert page.input_value("#chat-model") == "detect:"  # the server picks the model of the message's language
    translate_options = page.eval_on_selector_all("#translate-model option", "els => els.map(e => e.value)")
    assert "to:en" in translate_options  # "Detect → English"
    page.select_option("#chat-model", "lang:en")
    page.evaluate(RECORD_REPLY_LENGTHS)
    page.fill("#chat-message", "Hello, how are you?")
    page.keyboard.press("Enter")  # focus is in the message box after fill

    page.wait_for_selector("#chat-log .msg.assistant .meta")
    reply = page.inner_text("#chat-log .msg.assistant .text").strip()
    assert reply
    assert page.inner_text("#chat-log .msg.user .text") == "Hello, how are you?"
    assert page.get_attribute("#chat-log .msg.assistant", "aria-busy") is None
    samples = page.evaluate("window.__replyLengths")
    lengths = [n for _, n in samples]
    assert lengths == sorted(lengths), f"the reply shrank while streaming: {lengths}"
    partial = [(t, n) for t, n in samples if 0 < n < len(reply)]
    assert len({n for _, n in partial}) >= 2, f"the reply did not grow in steps: {samples}"
    # ...and at different moments: pieces that arrived together would share a timestamp.
    assert len({t for t, _ in partial}) >= 2, f"the reply arrived all at once: {samples}"
    assert page.input_value("#chat-message") == ""
    page.screenshot(path=str(artifacts / "chat.png"), full_page=True)

    # A second message carries the first exchange as history and appends to the conversation.
    page.fill("#chat-message", "What is your name?")
    page.click("#chat-send")
    page.wait_for_function("document.querySelectorAll('#chat-log .msg.assistant .meta').length === 2")
    assert len(page.query_selector_all("#chat-log .msg")) == 4


def test_chat_errors_before_and_during_the_stream(page: Any, web_env: WebEnv) -> None:
    open_page(page, web_env, "chat")
    # 422 before the stream: the exchange is taken back and the message kept for editing.
    page.click("#chat-form summary")
    page.fill("#chat-beam_size", "2")
    page.check("#chat-sample")
    page.fill("#chat-message", "Hello")
    page.press("#chat-message", "Enter")
    alert = page.wait_for_selector("#chat-error:not([hidden])")
    assert "sample=true cannot be combined with beam_size > 1" in alert.inner_text()
    assert page.query_selector("#chat-log .msg") is None
    assert page.input_value("#chat-message") == "Hello"

    # An SSE error event after some tokens: the partial reply stays, the error is shown.
    sse = 'event: token\ndata: {"text": "I am"}\n\nevent: error\ndata: {"error": {"code": "internal_error", "message": "the batch failed"}}\n\n'
    page.route(
        "**/chat", lambda route: route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=sse)
    )
    page.fill("#chat-beam_size", "")
    page.press("#chat-message", "Enter")
    page.wait_for_function("document.querySelector('#chat-error').innerText.includes('the batch failed')")
    assert page.inner_text("#chat-log .msg.assistant .text") == "I am"
    assert "failed" in (page.get_attribute("#chat-log .msg.assistant", "class") or "")

    # 503 with Retry-After (model loading).
    page.unroute("**/chat")
    body = {"error": {"code": "unavailable", "message": "model chat-en is loading"}}
    page.route(
        "**/chat",
        lambda route: route.fulfill(
            status=503, headers={"Retry-After": "5", "Content-Type": "application/json"}, body=json.dumps(body)
        ),
    )
    page.press("#chat-message", "Enter")
    page.wait_for_function("document.querySelector('#chat-error').innerText.includes('is loading')")
    assert "Retry in 5 s" in page.inner_text("#chat-error")


def test_the_mmi_weight_reaches_the_api(page: Any, web_env: WebEnv) -> None:
    """The chat view's MMI field goes into the request; the page shows what the API answers: the
    reranked reply from a model with a backward model, the API's 422 from one without."""
    open_page(page, web_env, "chat")
    page.select_option("#chat-model", "lang:en")
    page.click("#chat-form summary")
    page.fill("#chat-beam_size", "4")
    page.fill("#chat-mmi_weight", "0.6")
    page.fill("#chat-message", "How are you?")
    with page.expect_request("**/chat") as sent:
        page.press("#chat-message", "Enter")
    body = json.loads(sent.value.post_data or "{}")
    assert (body["beam_size"], body["mmi_weight"]) == (4, 0.6)
    options = {"message": "How are you?", "language": "en", "beam_size": 4, "mmi_weight": 0.6}
    expected = httpx.post(f"{web_env.service.url}/chat", json=options, timeout=30)
    if expected.status_code == 200:
        page.wait_for_selector("#chat-log .msg.assistant .meta")
        assert page.inner_text("#chat-log .msg.assistant .text").strip() == expected.json()["reply"]
    else:
        assert expected.status_code == 422
        alert = page.wait_for_selector("#chat-error:not([hidden])")
        assert expected.json()["error"]["message"] in alert.inner_text()


def test_compare_shows_every_de_en_model(page: Any, web_env: WebEnv, artifacts: Path) -> None:
    de_en = {
        m["name"]: m
        for m in api_models(web_env)
        if (m["task"], m["source_lang"], m["target_lang"]) == ("translate", "de", "en")
    }
    assert de_en
    open_page(page, web_env)
    page.focus("#tab-translate")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")  # Translate -> Chat -> Compare models, by keyboard
    assert page.get_attribute("#tab-compare", "aria-selected") == "true"
    assert page.is_visible("#panel-compare") and page.is_hidden("#panel-translate")

    rows = page.query_selector_all("#compare-rows tr[data-model]")
    assert sorted(r.get_attribute("data-model") for r in rows) == sorted(de_en)
    page.fill("#compare-text", GERMAN)
    page.press("#compare-text", "Enter")
    page.wait_for_function(
        "[...document.querySelectorAll('#compare-rows tr[data-model]')]"
        ".every(r => r.querySelector('.score').textContent.trim() && !r.hasAttribute('aria-busy'))"
    )
    assert page.is_hidden("#compare-error")
    for row in page.query_selector_all("#compare-rows tr[data-model]"):
        model = de_en[row.get_attribute("data-model")]
        assert row.query_selector(".output").inner_text().strip()
        assert model["architecture"] in row.query_selector(".architecture").inner_text()
        bleu = row.query_selector(".bleu").inner_text()
        evaluation = model["evaluation"] or {}
        if (evaluation.get("beam") or {}).get("bleu") is not None:
            assert f"{evaluation['beam']['bleu']:.1f}" in bleu
        elif (evaluation.get("greedy") or {}).get("bleu") is None:
            assert bleu == "not evaluated"
    page.screenshot(path=str(artifacts / "compare.png"), full_page=True)


def test_keyboard_focus_is_visible_and_controls_are_labelled(page: Any, web_env: WebEnv) -> None:
    open_page(page, web_env)
    page.keyboard.press("Tab")  # the skip link
    assert page.evaluate("document.activeElement.className") == "skip-link"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "tab-translate"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none")
    page.keyboard.press("Tab")  # from the tab list into the panel's first control
    assert page.evaluate("document.activeElement.id") in ("panel-translate", "translate-model")
    unlabelled = page.evaluate(
        "[...document.querySelectorAll('input, select, textarea')]"
        ".filter(e => !e.labels.length && !e.getAttribute('aria-label')).map(e => e.outerHTML)"
    )
    assert unlabelled == []


@contextlib.contextmanager
def under_csp(browser: Any, **options: Any) -> Iterator[tuple[Any, list[str]]]:
    """A page in a context of its own with the page's policy in force (the tests' shared context
    bypasses it), and the script errors and console errors (CSP violations among them) it logs."""
    context = browser.new_context(**options)
    try:
        page = context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
        yield page, problems
    finally:
        context.close()


def test_the_page_runs_under_its_own_csp(browser: Any, web_env: WebEnv) -> None:
    """With the policy in force (no bypass): the page loads its script and styles, fills its
    pickers from the API and logs no violation."""
    with under_csp(browser) as (page, problems):
        page.goto(f"{web_env.service.url}/#translate")
        page.wait_for_selector("#translate-model option[value^='pair:']", state="attached")
        page.wait_for_selector("#chat-model option[value='detect:']", state="attached")
        assert not problems, problems


def translate_requests(page: Any) -> list[dict[str, Any]]:
    """The bodies of the page's POST /translate requests, recorded from now on."""
    bodies: list[dict[str, Any]] = []
    page.on("request", lambda r: bodies.append(r.post_data_json) if r.url.endswith("/translate") else None)
    return bodies


def piece_text(piece: str) -> str:
    return piece.removeprefix("▁") or "␣"  # as the page shows a piece


def test_attention_heatmap_with_pointer_and_keyboard(page: Any, web_env: WebEnv, artifacts: Path) -> None:
    open_page(page, web_env)
    sent = translate_requests(page)
    page.select_option("#translate-model", "model:translate-de-en")
    page.fill("#translate-text", GERMAN)
    page.click("#translate-submit")
    page.wait_for_selector("#translate-result .translation .output")
    assert "return_attention" not in sent[-1] and not page.query_selector(".attention")  # only when asked

    page.check("#translate-attention")
    with page.expect_response("**/translate") as reply:
        page.click("#translate-submit")
    page.wait_for_selector("#translate-result .attention-grid")
    assert sent[-1]["return_attention"] is True
    attention = reply.value.json()["translations"][0]["attention"]
    grid = "#translate-result .attention-grid"
    assert page.eval_on_selector_all(f"{grid} th.src", "els => els.map(e => e.textContent)") == [
        piece_text(p) for p in attention["source"]
    ]
    assert page.eval_on_selector_all(f"{grid} th.tgt", "els => els.map(e => e.textContent)") == [
        piece_text(p) for p in attention["target"]
    ]
    opacities = page.eval_on_selector_all(
        f"{grid} tbody tr",
        "rows => rows.map(r => [...r.querySelectorAll('rect')].map(c => Number(c.getAttribute('fill-opacity'))))",
    )
    assert opacities == attention["weights"]

    # Pointing at an output piece lights up the source pieces it looked at, the strongest most.
    weights = attention["weights"]
    i = max(range(len(weights)), key=lambda r: max(weights[r]))  # the row with the sharpest focus
    page.hover(f"{grid} th.tgt[data-row='{i}']")
    strongest = max(range(len(weights[i])), key=lambda j: weights[i][j])
    assert "link-4" in page.get_attribute(f"{grid} th.src[data-col='{strongest}']", "class")
    assert page.eval_on_selector_all(f"{grid} th.src.link-4", "els => els.length") == sum(w >= 0.75 for w in weights[i])
    readout = page.inner_text("#translate-result .attention-readout")
    assert piece_text(attention["target"][i]) in readout and piece_text(attention["source"][strongest]) in readout

    # The keyboard: one tab stop into the grid, then the arrow keys; focus is visible and announced.
    page.mouse.move(0, 0)
    page.focus("#translate-submit")
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.closest('.attention-grid') !== null"):
            break
    assert page.evaluate("[document.activeElement.dataset.row, document.activeElement.dataset.col]") == ["0", "-1"]
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") not in ("", "none")
    page.keyboard.press("ArrowRight")
    active = page.evaluate("[document.activeElement.tagName, document.activeElement.getAttribute('aria-label')]")
    assert active[0] == "TD" and f"{math.floor(weights[0][0] * 100 + 0.5)}%" in active[1]  # as Math.round
    assert page.inner_text("#translate-result .attention-readout") == active[1]
    # the cell's source piece (column 0, in the header row) and output piece (row 0)
    assert page.eval_on_selector_all(f"{grid} th.on", "els => els.map(e => e.dataset.row + ',' + e.dataset.col)") == [
        "-1,0",
        "0,-1",
    ]
    page.keyboard.press("ArrowUp")  # a source piece: the output pieces that looked at it light up
    assert page.evaluate("document.activeElement.dataset.row") == "-1"
    column = [row[0] for row in weights]
    lit = page.eval_on_selector_all(f"{grid} th.tgt", "els => els.map(e => /link-/.test(e.className))")
    assert lit == [w >= 0.1 for w in column]
    assert page.evaluate("document.activeElement.tabIndex") == 0
    assert page.eval_on_selector_all(f"{grid} [tabindex='0']", "els => els.length") == 1  # still one tab stop
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.closest('.attention-grid')") is None
    page.evaluate("document.activeElement.blur()")
    page.hover(f"{grid} th.tgt[data-row='{i}']")
    page.screenshot(path=str(artifacts / "attention.png"), full_page=True)
    page.locator("#translate-result .translation").screenshot(path=str(artifacts / "attention-heatmap.png"))


def test_attention_in_the_compare_view_and_under_the_pages_csp(browser: Any, web_env: WebEnv, artifacts: Path) -> None:
    """Attention models draw their matrix, the others say why they have none; with the policy in
    force the heatmap breaks no rule (its shades are SVG attributes, not inline styles)."""
    with under_csp(browser, viewport={"width": 1100, "height": 900}) as (page, problems):
        page.goto(f"{web_env.service.url}/#compare")
        page.wait_for_selector("#compare-rows tr[data-model]")
        page.check("#compare-attention")
        page.fill("#compare-text", GERMAN)
        page.click("#compare-submit")
        page.wait_for_selector("#compare-status:has-text('models answered')")
        architectures = {m["name"]: m["architecture"] for m in api_models(web_env)}
        for row in page.query_selector_all("#compare-rows tr[data-model]"):
            output = row.query_selector(".output")
            if architectures[row.get_attribute("data-model")] == "attention":
                assert output.query_selector(".attention-grid td svg rect") is not None
            else:
                assert output.query_selector(".attention") is None and "no attention" in output.inner_text()
        assert page.is_hidden("#compare-error")
        page.screenshot(path=str(artifacts / "compare-attention.png"), full_page=True)
        assert not problems, problems
