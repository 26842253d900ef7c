"""Retries, backoff and error mapping with ``httpx.MockTransport``: no server, no real sleeping.

Every client here gets a recording ``sleep``, so the tests see the exact waits the policy
chose; ``jitter=0`` makes the exponential delays exact.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import httpx
import pytest

from client import (
    APIError,
    AsyncClient,
    ChatDelta,
    ChatResult,
    Client,
    ConnectError,
    DeadlineExceeded,
    InternalServerError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    ProtocolError,
    Retry,
    Timeout,
    Unavailable,
)

RETRY = Retry(max_attempts=4, backoff=0.5, max_backoff=8.0, jitter=0)
TRANSLATION = {
    "model": "translate-de-en",
    "version": "1",
    "translations": [{"text": "A child.", "score": -0.6, "tokens": 3, "finish_reason": "eos", "alternatives": None}],
    "usage": {"input_tokens": 4, "output_tokens": 3},
}
CHAT = {"model": "chat-en", "version": "1", "reply": "I am fine.", "score": -4.2, "tokens": 4, "finish_reason": "eos"}

Reply = httpx.Response | Exception


def error(status: int, code: str, message: str = "nope", headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}}, headers=headers)


def sse(*events: tuple[str, object]) -> httpx.Response:
    body = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)
    return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})


class Server:
    """Answers each request with the next scripted reply (raising it if it is an exception)."""

    def __init__(self, replies: Iterable[Reply]) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def make_client(*replies: Reply, retry: Retry = RETRY) -> tuple[Client, Server, list[float]]:
    server, sleeps = Server(replies), []
    return Client(transport=httpx.MockTransport(server), retry=retry, sleep=sleeps.append), server, sleeps


def test_429_waits_for_retry_after() -> None:
    client, server, sleeps = make_client(
        error(429, "overloaded", headers={"Retry-After": "3"}), httpx.Response(200, json=TRANSLATION)
    )
    assert client.translate("Ein Kind lacht.").translations[0].text == "A child."
    assert sleeps == [3.0]
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("retry_after", "slept"),
    [("600", 8.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("soon", 0.5)],
    ids=["capped-by-max-backoff", "http-date-in-the-past", "unparsable-means-backoff"],
)
def test_retry_after_forms(retry_after: str, slept: float) -> None:
    client, _, sleeps = make_client(
        error(429, "overloaded", headers={"Retry-After": retry_after}), httpx.Response(200, json=TRANSLATION)
    )
    client.translate("Ein Kind lacht.")
    assert sleeps == [slept]


def test_503_backs_off_exponentially_and_keeps_the_request_id() -> None:
    client, server, sleeps = make_client(
        error(503, "unavailable"),
        error(503, "unavailable"),
        error(503, "unavailable"),
        httpx.Response(200, json=TRANSLATION),
    )
    result = client.translate("Ein Kind lacht.", request_id="r-1")
    assert sleeps == [0.5, 1.0, 2.0]
    assert {r.headers["X-Request-ID"] for r in server.requests} == {"r-1"}
    assert result.request_id == "r-1"  # the mock does not echo it: the id sent is kept


def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    replies = [error(429, "overloaded", headers={"Retry-After": "1"})] * 4
    client, server, sleeps = make_client(*replies)
    with pytest.raises(Overloaded) as info:
        client.translate("Ein Kind lacht.")
    assert (info.value.status, info.value.retry_after) == (429, 1.0)
    assert len(server.requests) == 4 and sleeps == [1.0, 1.0, 1.0]


def test_connection_errors_are_retried() -> None:
    client, server, sleeps = make_client(
        httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), httpx.Response(200, json=CHAT)
    )
    assert client.chat("Hi").reply == "I am fine."
    assert sleeps == [0.5, 1.0]


def test_connection_error_after_the_last_attempt() -> None:
    client, _, sleeps = make_client(*[httpx.ConnectError("refused")] * 2, retry=Retry(max_attempts=2, jitter=0))
    with pytest.raises(ConnectError) as info:
        client.models()
    assert info.value.status is None and info.value.code == "connection_error"
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert sleeps == [0.5]


@pytest.mark.parametrize(
    ("reply", "exception"),
    [
        (error(422, "invalid_request"), InvalidRequest),
        (error(404, "model_not_found"), ModelNotFound),
        (error(500, "internal_error"), InternalServerError),
        (error(504, "deadline_exceeded"), DeadlineExceeded),
        (httpx.ReadTimeout("slow"), Timeout),
    ],
)
def test_other_failures_are_not_retried(reply: Reply, exception: type[Exception]) -> None:
    client, server, sleeps = make_client(reply, httpx.Response(200, json=TRANSLATION))
    with pytest.raises(exception):
        client.translate("Ein Kind lacht.")
    assert len(server.requests) == 1 and sleeps == []


def test_retries_can_be_disabled() -> None:
    client, server, sleeps = make_client(error(503, "unavailable"), retry=Retry(max_attempts=1))
    with pytest.raises(Unavailable):
        client.models()
    assert len(server.requests) == 1 and sleeps == []


def test_jitter_shortens_delays_within_bounds() -> None:
    policy = Retry(backoff=1.0, max_backoff=100.0, jitter=0.5)
    delays = [policy.delay(3) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 1
    assert policy.delay(3, retry_after=2.5) == 2.5  # the server's hint is taken as given


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"backoff": -1}, {"jitter": 2}])
def test_retry_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Retry(**kwargs)


def test_not_ready_is_reported_not_raised_nor_retried() -> None:
    body = {
        "error": {
            "code": "unavailable",
            "message": "not ready: loading models",
            "details": {"models": {"chat-en": "loading"}},
        }
    }
    client, server, sleeps = make_client(httpx.Response(503, json=body, headers={"Retry-After": "5"}))
    readiness = client.ready()
    assert (readiness.ready, readiness.models, readiness.message) == (
        False,
        {"chat-en": "loading"},
        "not ready: loading models",
    )
    assert len(server.requests) == 1 and sleeps == []


def test_replies_without_an_error_body_map_by_status() -> None:
    client, _, _ = make_client(httpx.Response(503, text="<html>bad gateway</html>"), retry=Retry(max_attempts=1))
    with pytest.raises(Unavailable) as info:
        client.models()
    assert (info.value.code, info.value.message) == ("unavailable", "<html>bad gateway</html>")

    client, _, _ = make_client(httpx.Response(502, text="proxy error"))
    with pytest.raises(APIError) as api_info:
        client.models()
    assert type(api_info.value) is APIError and api_info.value.code == "http_502"


def test_unknown_codes_keep_the_server_code() -> None:
    client, _, _ = make_client(error(405, "method_not_allowed", "Method Not Allowed"))
    with pytest.raises(APIError) as info:
        client.models()
    assert (type(info.value), info.value.status, info.value.code) == (APIError, 405, "method_not_allowed")


def test_a_success_that_is_not_the_api_raises_protocol_error() -> None:
    client, _, _ = make_client(httpx.Response(200, text="<html>captive portal</html>"))
    with pytest.raises(ProtocolError):
        client.translate("Ein Kind lacht.")


def test_stream_is_retried_before_it_starts() -> None:
    client, _, sleeps = make_client(
        error(429, "overloaded", headers={"Retry-After": "2"}),
        sse(("token", {"text": "I"}), ("token", {"text": " am fine."}), ("done", CHAT)),
    )
    events = list(client.chat_stream("Hi"))
    assert events == [ChatDelta("I"), ChatDelta(" am fine."), ChatResult.from_json(CHAT, events[-1].request_id)]
    assert sleeps == [2.0]


def test_stream_error_event_raises_the_mapped_error() -> None:
    client, _, _ = make_client(
        sse(("token", {"text": "I"}), ("error", {"error": {"code": "internal_error", "message": "batch failed"}}))
    )
    stream = client.chat_stream("Hi", request_id="s-1")
    with pytest.raises(InternalServerError) as info:
        list(stream)
    assert (info.value.status, info.value.message, info.value.request_id) == (500, "batch failed", "s-1")


def test_stream_ignores_comments_and_unknown_events() -> None:
    body = ': keep-alive\n\nevent: progress\ndata: 50%\n\nevent: token\ndata: {"text": "Hi"}\n\n'
    body += f"event: done\ndata: {json.dumps(CHAT)}\n\n"
    client, _, _ = make_client(httpx.Response(200, text=body))
    with client.chat_stream("Hi") as stream:
        assert list(stream.text_deltas()) == ["Hi"]
    assert stream.result is not None and stream.result.reply == "I am fine."


def test_stream_cut_short_raises_protocol_error() -> None:
    client, _, _ = make_client(sse(("token", {"text": "I"})))
    with pytest.raises(ProtocolError, match="done"):
        list(client.chat_stream("Hi"))


def make_async_client(*replies: Reply) -> tuple[AsyncClient, Server, list[float]]:
    server, sleeps = Server(replies), []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return AsyncClient(transport=httpx.MockTransport(server), retry=RETRY, sleep=sleep), server, sleeps


async def test_async_retries_429_503_and_connection_errors() -> None:
    client, server, sleeps = make_async_client(
        error(429, "overloaded", headers={"Retry-After": "1"}),
        error(503, "unavailable"),
        httpx.ConnectError("refused"),
        httpx.Response(200, json=TRANSLATION),
    )
    async with client:
        assert (await client.translate("Ein Kind lacht.")).translations[0].text == "A child."
    assert sleeps == [1.0, 1.0, 2.0]
    assert len(server.requests) == 4


async def test_async_does_not_retry_422() -> None:
    client, server, sleeps = make_async_client(error(422, "invalid_request"))
    async with client:
        with pytest.raises(InvalidRequest):
            await client.chat("")
    assert len(server.requests) == 1 and sleeps == []


async def test_async_stream_retry_and_error_event() -> None:
    client, _, sleeps = make_async_client(
        error(503, "unavailable", headers={"Retry-After": "5"}),
        sse(("token", {"text": "I"}), ("error", {"error": {"code": "deadline_exceeded", "message": "late"}})),
    )
    async with client, client.chat_stream("Hi") as stream:
        seen: list[str] = []
        with pytest.raises(DeadlineExceeded):
            async for text in stream.text_deltas():
                seen.append(text)
    assert seen == ["I"] and sleeps == [5.0]


def test_client_and_async_client_have_the_same_methods() -> None:
    def public(cls: type) -> set[str]:
        return {name for name in vars(cls) if not name.startswith("_") and callable(getattr(cls, name))}

    assert public(Client) - {"close"} == public(AsyncClient) - {"aclose"}


async def test_a_stream_without_tokens_gives_the_reply_as_one_delta() -> None:
    """A beam search streams no tokens, only its result: text_deltas still gives the reply."""
    body = f"event: done\ndata: {json.dumps(CHAT)}\n\n"
    client, _, _ = make_client(httpx.Response(200, text=body))
    with client.chat_stream("Hi", beam_size=3) as stream:
        assert list(stream.text_deltas()) == ["I am fine."]
    async_client, _, _ = make_async_client(httpx.Response(200, text=body))
    async with async_client.chat_stream("Hi", beam_size=3) as async_stream:
        assert [d async for d in async_stream.text_deltas()] == ["I am fine."]
