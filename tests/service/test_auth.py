"""API keys, scopes and per-key rate limits: every route through the real app, the keys file and
its reloads (SIGHUP on a real server process), the constant-time check, and a flooding key that
is held back while another key keeps its latency."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import re
import signal
import statistics
import string
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.auth import KeyStore, read_keys_file
from service.errors import KeysFileInvalid
from service.settings import Settings
from tests.server_process import ServiceProcess
from tests.service.conftest import AppClient

GERMAN = "Ein Mann spielt mit einem Hund im Park."
ENV_INFER = "env-infer-key-0123456789"
ENV_ADMIN = "env-admin-key-0123456789"
WEB = "web-file-key-0123456789abcdef"  # infer
OPS = "ops-file-key-0123456789abcdef"  # infer,admin
ADMIN_ONLY = "admin-only-key-0123456789abc"  # admin
LIMITED = "limited-key-0123456789abcdef"  # infer, 1 request per second, bursts of 2
THRIFTY = "thrifty-key-0123456789abcdef"  # infer, 12 generated tokens per minute
ALL_KEYS = (ENV_INFER, ENV_ADMIN, WEB, OPS, ADMIN_ONLY, LIMITED, THRIFTY)
KEYS_FILE = f"""\
# name     key            scopes        limits
web        {WEB}          infer
ops        {OPS}          infer,admin   # an operator's key
admin-only {ADMIN_ONLY}   admin

limited    {LIMITED}      infer         rps=1 burst=2
thrifty    {THRIFTY}      infer         tokens_per_min=12
"""
TRANSLATE = {"text": GERMAN, "source_lang": "de", "target_lang": "en", "max_length": 8}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-keys"
    path.write_text(KEYS_FILE)
    return path


def auth_settings(keys_file: Path, **overrides: Any) -> dict[str, Any]:
    return {"api_keys": ENV_INFER, "admin_api_keys": ENV_ADMIN, "api_keys_file": keys_file, **overrides}


# -- every route ------------------------------------------------------------------------------------
# What each path needs, written out here rather than taken from service.auth: a route added
# without a line here fails test_every_route_needs_its_scope until someone says what it needs.
OPEN, INFER, ADMIN, ANY = "open", "infer", "admin", "any key"
NEEDS = [  # (path prefix, what it needs); the first match wins
    ("/health/", OPEN),
    ("/static/", OPEN),
    ("/translate", INFER),
    ("/chat", INFER),
    ("/models", INFER),
    ("/admin/", ADMIN),
    ("/admin", ADMIN),
    ("/metrics", OPEN),  # by default (--metrics-access)
    ("/docs", OPEN),  # by default (--docs-access), /docs/oauth2-redirect too
    ("/redoc", OPEN),
    ("/openapi.json", OPEN),
]
BODIES = {
    ("POST", "/translate"): TRANSLATE,
    ("POST", "/chat"): {"message": "Hello there", "max_length": 5},
}


def needs(path: str) -> str:
    if path == "/":
        return OPEN
    return next((need for prefix, need in NEEDS if path.startswith(prefix)), ANY)


# The routes that the OpenAPI document leaves out.
UNDOCUMENTED = [("GET", "/"), ("GET", "/static/app.js"), ("GET", "/docs"), ("GET", "/docs/oauth2-redirect")]
UNDOCUMENTED += [("GET", "/redoc"), ("GET", "/openapi.json")]


def route_calls(app: FastAPI) -> list[tuple[str, str]]:
    """(method, concrete path) for every operation of the app; admin routes last, since they change state."""
    calls = list(UNDOCUMENTED)
    for path, operations in app.openapi()["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "translate-de-en", path)
        calls += [(method.upper(), concrete) for method in operations]
    return sorted(calls, key=lambda call: call[1].startswith("/admin"))


def expected_for(need: str, key: str | None) -> str:
    """ "pass" (anything but 401/403), "401" or "403", for a request needing ``need`` made with ``key``."""
    if need == OPEN:
        return "pass"
    if key is None or key not in ALL_KEYS:
        return "401"
    scopes = {ENV_INFER: {INFER}, WEB: {INFER}, ENV_ADMIN: {ADMIN}, ADMIN_ONLY: {ADMIN}, OPS: {INFER, ADMIN}}[key]
    return "pass" if need == ANY or need in scopes else "403"


def check(response: httpx.Response, expected: str, what: str) -> None:
    if expected == "pass":
        assert response.status_code not in (401, 403) and response.status_code < 500, f"{what}: {response.text}"
        return
    assert response.status_code == int(expected), f"{what}: {response.status_code} {response.text}"
    error = response.json()["error"]
    assert error["code"] == ("unauthorized" if expected == "401" else "forbidden"), what
    assert response.headers["WWW-Authenticate"].startswith("Bearer "), what
    assert response.headers["X-Request-ID"], what  # inside the request context, like every reply
    assert not any(key in response.text for key in ALL_KEYS), f"{what}: a key in the reply"


async def test_every_route_needs_its_scope(app_client: AppClient, keys_file: Path) -> None:
    async with app_client(**auth_settings(keys_file)) as (client, app):
        calls = route_calls(app)
        paths = {path for _, path in calls}
        assert {"/translate", "/chat", "/models", "/metrics", "/docs", "/openapi.json", "/"} <= paths
        # Paths under /admin with no route are refused the same way: the scope goes by the prefix.
        calls += [("GET", "/admin"), ("GET", "/admin/no/such/route"), ("POST", "/admin/models/x/no-such-action")]
        calls += [("GET", "/no-such-route")]  # unknown paths: 404 only for a caller with a key
        wrong_scope = {INFER: ADMIN_ONLY, ADMIN: WEB}
        for method, path in calls:
            need = needs(path)
            body = BODIES.get((method, path))
            cases: list[tuple[str, str | None]] = [("no key", None), ("wrong key", "not-a-key-0123456789abcdef")]
            if need in wrong_scope:
                cases.append(("wrong scope", wrong_scope[need]))
            right = {INFER: WEB, ADMIN: ADMIN_ONLY, ANY: ADMIN_ONLY, OPEN: None}[need]
            cases.append(("right key", right))
            for case, key in cases:
                r = await client.request(method, path, json=body, headers=bearer(key) if key else {})
                check(r, expected_for(need, key), f"{method} {path} with {case}")
                if case == "right key" and body is not None:
                    assert r.status_code == 200, r.text
            if need in (INFER, ADMIN):  # the operator's key holds both scopes
                check(await client.request(method, path, json=body, headers=bearer(OPS)), "pass", f"{path} ops")


async def test_malformed_authorization_is_401(app_client: AppClient, keys_file: Path) -> None:
    async with app_client(**auth_settings(keys_file)) as (client, _):
        for value in ("Basic d2ViOndlYg==", f"Token {WEB}", "Bearer", "Bearer ", WEB, f"Bearer {WEB}x"):
            r = await client.get("/models", headers={"Authorization": value})
            assert r.status_code == 401, value
        assert (await client.get("/models", headers={"Authorization": f"bearer  {WEB} "})).status_code == 200


@pytest.mark.parametrize("access", ["open", "key"])
async def test_metrics_and_docs_access_is_a_setting(app_client: AppClient, keys_file: Path, access: str) -> None:
    settings = auth_settings(keys_file, metrics_access=access, docs_access=access)
    async with app_client(**settings) as (client, _):
        for path in ("/metrics", "/docs", "/redoc", "/openapi.json"):
            r = await client.get(path)
            assert r.status_code == (200 if access == "open" else 401), path
            r = await client.get(path, headers=bearer(ADMIN_ONLY))  # any key will do
            assert r.status_code == 200, path
        for path in ("/", "/static/app.js", "/health/live", "/health/ready"):  # always open
            assert (await client.get(path)).status_code == 200, path


async def test_without_keys_nothing_is_asked(app_client: AppClient) -> None:
    async with app_client() as (client, app):
        assert not app.state.keys.enabled
        app.state.keys.reload()  # no file: nothing to do
        for path in ("/models", "/metrics", "/admin/models", "/no-such-route"):
            assert (await client.get(path)).status_code not in (401, 403), path
        r = await client.post("/translate", json=TRANSLATE)
        assert r.status_code == 200 and "RateLimit-Limit" not in r.headers


async def test_the_openapi_document_says_which_operations_need_which_key(
    app_client: AppClient, keys_file: Path
) -> None:
    async with app_client(**auth_settings(keys_file)) as (client, _):
        document = (await client.get("/openapi.json")).json()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, operations in document["paths"].items():
        for operation in operations.values():
            if path.startswith("/health") or path in ("/", "/metrics"):  # open (metrics: by default)
                assert "security" not in operation and "401" not in operation["responses"], path
                continue
            assert operation["security"] == [{"bearer": []}], path
            assert {"401", "403"} <= set(operation["responses"]), path
            scope = "admin" if path.startswith("/admin") else "infer"
            assert operation["description"].endswith(f"Needs an API key with the `{scope}` scope."), path
    async with app_client() as (client, _):  # keys off: no scheme, nothing asked
        assert "securitySchemes" not in (await client.get("/openapi.json")).json()["components"]


# -- logs and metrics -------------------------------------------------------------------------------
async def test_the_key_name_is_logged_and_counted_never_the_key(
    app_client: AppClient, keys_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with app_client(**auth_settings(keys_file)) as (client, app):
        r = await client.post("/translate", json=TRANSLATE, headers={**bearer(WEB), "X-Request-ID": "with-web-key"})
        assert r.status_code == 200
        tokens = r.json()["usage"]["output_tokens"]
        await client.get("/models", headers=bearer(ENV_INFER))
        await client.get("/models", headers=bearer("not-a-key-0123456789abcdef") | {"X-Request-ID": "bad-key"})
        app.state.keys.reload()
        metrics = (await client.get("/metrics")).text
    lines = {r.request_id: r for r in caplog.records if r.name == "service.access"}  # type: ignore[attr-defined]
    assert lines["with-web-key"].key == "web" and "key=web" in lines["with-web-key"].getMessage()  # type: ignore[attr-defined]
    assert lines["bad-key"].key is None and lines["bad-key"].status == 401  # type: ignore[attr-defined]
    assert not any(key in caplog.text for key in ALL_KEYS)
    assert "API keys reloaded" in caplog.text and "web" in caplog.text
    (env_name,) = KeyStore(Settings(api_keys=ENV_INFER)).names()
    assert env_name == "key-" + hashlib.sha256(ENV_INFER.encode()).hexdigest()[:8]
    assert 'seq2seq_api_key_requests_total{key="web",status="200"} 1.0' in metrics
    assert f'seq2seq_api_key_requests_total{{key="{env_name}",status="200"}} 1.0' in metrics
    assert f'seq2seq_api_key_generated_tokens_total{{key="web"}} {float(tokens)}' in metrics
    assert not any(key in metrics for key in ALL_KEYS)


# -- the keys file ----------------------------------------------------------------------------------
def test_keys_file_lines_become_keys(keys_file: Path) -> None:
    keys = {k.name: k for k in read_keys_file(keys_file)}
    assert set(keys) == {"web", "ops", "admin-only", "limited", "thrifty"}
    assert keys["ops"].scopes == {"infer", "admin"} and keys["admin-only"].scopes == {"admin"}
    assert keys["limited"].limits == {"rps": 1.0, "burst": 2}
    assert all(WEB not in repr(k) for k in keys.values())  # only the digest is kept, and not shown
    store = KeyStore(Settings(**auth_settings(keys_file), rate_limit_rps=50, rate_limit_tokens_per_min=1000))
    limited = store.verify(LIMITED)
    assert limited is not None and limited.name == "limited"
    # The file's limits override the settings' defaults one by one.
    assert (store.limits(limited).rps, store.limits(limited).burst, store.limits(limited).tokens_per_min) == (
        1,
        2,
        1000,
    )
    web = store.verify(WEB)
    assert web is not None and store.limits(web).rps == 50
    both = KeyStore(Settings(api_keys=ENV_INFER, admin_api_keys=ENV_INFER)).verify(ENV_INFER)
    assert both is not None and both.scopes == {"infer", "admin"}  # a key in both lists has both scopes


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("web", "expected NAME KEY SCOPES"),
        (f"w{{eb}} {WEB} infer", "the name (first field)"),
        ("web short infer", "keys are 16 to 256 characters"),
        (f"web {WEB} everything", "the scopes (third field)"),
        (f"web {WEB} infer,", "the scopes (third field)"),
        (f"web {WEB} infer rps=fast", "field 4: rps must be a number"),
        (f"web {WEB} infer rps=-1", "field 4: rps must be a number"),
        (f"web {WEB} infer rps=1 tokens=5", "field 5: limits are rps=N, burst=N, tokens_per_min=N"),
        (f"web {WEB} infer\nweb {OPS} infer", "two keys are named 'web'"),
        (f"web {WEB} infer\nops {WEB} infer", "keys 'web' and 'ops' are the same key"),
    ],
)
def test_a_bad_keys_file_names_the_line_and_never_the_key(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# a comment\n\n{line}\n")
    with pytest.raises(ValueError) as info:
        read_keys_file(path)
    assert message in str(info.value) and str(path) in str(info.value)
    if "\n" not in line:
        assert "line 3" in str(info.value)
    assert WEB not in str(info.value) and OPS not in str(info.value)
    with pytest.raises(ValueError) as info:  # settings refuse it at start-up, without echoing their input
        Settings(api_keys_file=path)
    assert message in str(info.value) and WEB not in str(info.value)


def test_settings_refuse_bad_keys_without_showing_them() -> None:
    for kwargs in ({"api_keys": f"{WEB},short-key"}, {"admin_api_keys": "has space in it 0123456789"}):
        with pytest.raises(ValueError, match="keys are 16 to 256 characters") as info:
            Settings(**kwargs)
        assert "short-key" not in str(info.value) and WEB not in str(info.value)
    with pytest.raises(ValueError, match="rate limits are per API key"):
        Settings(rate_limit_rps=5)
    settings = Settings(api_keys=WEB, admin_api_keys=OPS)
    assert WEB not in repr(settings) and OPS not in json.dumps(settings.model_dump(mode="json"))


def test_reload_takes_a_new_file_and_keeps_the_old_keys_on_error(keys_file: Path) -> None:
    store = KeyStore(Settings(**auth_settings(keys_file)))
    assert store.verify(WEB) is not None
    new_key = "rotated-web-key-0123456789"
    keys_file.write_text(f"web {new_key} infer\n")
    store.reload()
    assert store.verify(WEB) is None and store.verify(new_key) is not None
    assert store.verify(ENV_INFER) is not None  # the environment's keys stay
    keys_file.write_text("web not-valid infer\n")
    with pytest.raises(KeysFileInvalid, match="line 1") as info:
        store.reload()
    assert info.value.status_code == 422 and info.value.code == "invalid_keys_file"
    assert store.verify(new_key) is not None  # still in force
    keys_file.unlink()
    with pytest.raises(KeysFileInvalid, match="cannot read"):
        store.reload()
    assert store.verify(new_key) is not None


def test_sighup_reloads_the_keys_file_of_a_running_server(tiny_store: Path, tmp_path: Path, keys_file: Path) -> None:
    env = {"SEQ2SEQ_API_KEYS": ENV_INFER, "SEQ2SEQ_ADMIN_API_KEYS": ENV_ADMIN}
    args = ["--models", "chat-en", "--api-keys-file", str(keys_file), "--engine-process", "false"]
    with ServiceProcess(tmp_path / "server.log", *args, store=tiny_store, env=env) as server:
        server.wait_ready(60)

        def status(key: str) -> int:
            return httpx.get(f"{server.url}/models", headers=bearer(key), timeout=10).status_code

        assert (status(WEB), status(ENV_INFER), status("rotated-web-key-0123456789")) == (200, 200, 401)
        keys_file.write_text("web rotated-web-key-0123456789 infer\n")
        os.kill(server.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while status("rotated-web-key-0123456789") != 200:
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.05)
        assert (status(WEB), status(ENV_INFER)) == (401, 200)

        keys_file.write_text("web broken infer\n")  # a bad file: logged, the keys in force stay
        os.kill(server.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "API keys not reloaded" not in server.log():
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.05)
        server.check_running()
        assert status("rotated-web-key-0123456789") == 200
        log = server.log()
    assert not any(key in log for key in (*ALL_KEYS, "rotated-web-key-0123456789")), "a key in the server's log"
    assert " key=web " in log and '"api_keys": ["**********"]' in log


# -- constant time ----------------------------------------------------------------------------------
def test_checking_a_wrong_key_takes_as_long_however_much_of_it_matches() -> None:
    """The median time of a check for a guess that shares nothing with the key against one that
    shares all but its last character; batches interleaved so that drift hits both alike."""
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits
    secret = "".join(rng.choice(alphabet) for _ in range(256))
    others = ",".join("".join(rng.choice(alphabet) for _ in range(64)) for _ in range(15))
    store = KeyStore(Settings(api_keys=f"{secret},{others}"))
    first = "A" if secret[0] != "A" else "B"
    unlike = first + "".join(rng.choice(alphabet) for _ in range(255))
    unlike = "".join("x" if c == s else c for c, s in zip(unlike, secret, strict=True))  # no character in place
    near = secret[:-1] + ("y" if secret[-1] != "y" else "z")
    assert store.verify(secret) is not None and store.verify(unlike) is None and store.verify(near) is None

    def batch(key: str, n: int = 200) -> float:
        verify = store.verify
        start = time.perf_counter_ns()
        for _ in range(n):
            verify(key)
        return time.perf_counter_ns() - start

    times: dict[str, list[float]] = {"unlike": [], "near": []}
    for round_ in range(300):
        order = [("unlike", unlike), ("near", near)][:: 1 if round_ % 2 else -1]
        for name, key in order:
            times[name].append(batch(key))
    ratio = statistics.median(times["near"]) / statistics.median(times["unlike"])
    assert 0.85 < ratio < 1.15, f"a near-miss takes {ratio:.3f}x as long as a wild guess"


# -- rate limits ------------------------------------------------------------------------------------
async def test_a_key_over_its_request_rate_gets_429_rate_limited(app_client: AppClient, keys_file: Path) -> None:
    async with app_client(**auth_settings(keys_file)) as (client, _):
        first = await client.get("/models", headers=bearer(LIMITED))
        assert first.status_code == 200
        assert (first.headers["RateLimit-Limit"], first.headers["RateLimit-Remaining"]) == ("2", "1")
        statuses = [(await client.get("/models", headers=bearer(LIMITED))).status_code for _ in range(3)]
        assert statuses[0] == 200 and statuses[-1] == 429  # the burst of 2 is spent; 1 per second refills
        r = await client.post("/translate", json=TRANSLATE, headers=bearer(LIMITED))
        assert r.status_code == 429
        error = r.json()["error"]
        assert error["code"] == "rate_limited"  # not "overloaded": the model's queue is not full
        assert "1 requests per second" in error["message"] and "'limited'" in error["message"]
        assert int(r.headers["Retry-After"]) >= 1
        assert (r.headers["RateLimit-Limit"], r.headers["RateLimit-Remaining"]) == ("2", "0")
        assert 1 <= int(r.headers["RateLimit-Reset"]) <= 2
        assert (await client.post("/translate", json=TRANSLATE, headers=bearer(WEB))).status_code == 200  # others pass
        metrics = (await client.get("/metrics")).text
        assert 'seq2seq_rate_limited_total{key="limited"}' in metrics
        assert 'seq2seq_rate_limited_total{key="web"}' not in metrics


async def test_generated_tokens_are_charged_after_the_answer(app_client: AppClient, keys_file: Path) -> None:
    async with app_client(**auth_settings(keys_file)) as (client, _):
        # 12 tokens a minute: the first answer (whatever its length) is served, then the key owes
        r = await client.post(
            "/translate", json={**TRANSLATE, "max_length": 10, "min_length": 10}, headers=bearer(THRIFTY)
        )
        assert r.status_code == 200 and r.json()["usage"]["output_tokens"] == 10
        assert r.headers["RateLimit-Limit"] == "12"
        body = {"message": "Hello there", "stream": True, "max_length": 6, "min_length": 6}
        async with client.stream("POST", "/chat", json=body, headers=bearer(THRIFTY)) as stream:
            assert stream.status_code == 200  # 2 tokens were left: the streamed reply is charged when it ends
            assert "event: done" in "".join([chunk async for chunk in stream.aiter_text()])
        r = await client.post("/translate", json=TRANSLATE, headers=bearer(THRIFTY))
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert "12 generated tokens per minute" in r.json()["error"]["message"]
        # 12 - 10 - 6 = -4: one token back takes (1 + 4) / (12 / 60) = 25 s
        assert 24 <= int(r.headers["Retry-After"]) <= 25
        assert r.headers["RateLimit-Remaining"] == "0"
        assert (await client.post("/translate", json=TRANSLATE, headers=bearer(WEB))).status_code == 200


async def test_a_flooding_key_is_held_back_while_another_keeps_its_latency(
    app_client: AppClient, keys_file: Path
) -> None:
    """A key that sends heavy requests (16 texts, 4 beams, 60 tokens each) from 4 connections,
    ignoring Retry-After, against a key that sends light ones one at a time: the light key's
    median latency under the flood, over its median alone (before and after the flood). Admitted,
    the flood would hold the engine and the light key would wait many times longer; refused, it costs the HTTP
    process cheap 429s."""
    heavy = {**TRANSLATE, "text": None, "texts": [GERMAN] * 16, "beam_size": 4, "max_length": 60, "min_length": 60}
    async with app_client(**auth_settings(keys_file)) as (client, _):

        async def steady(n: int) -> list[float]:
            latencies = []
            for _ in range(n):
                start = time.perf_counter()
                r = await client.post("/translate", json=TRANSLATE, headers=bearer(WEB))
                latencies.append(time.perf_counter() - start)
                assert r.status_code == 200, r.text
            return latencies

        await steady(5)  # warm-up
        alone = await steady(40)
        stop = asyncio.Event()
        flood_replies: list[tuple[int, str | None]] = []

        async def flood() -> None:
            while not stop.is_set():
                r = await client.post("/translate", json=heavy, headers=bearer(LIMITED))
                flood_replies.append((r.status_code, r.json().get("error", {}).get("code")))
                await asyncio.sleep(0.05)  # 80 requests a second, 80 times the key's rate

        flooders = [asyncio.create_task(flood()) for _ in range(4)]
        started = time.monotonic()
        try:
            flooded = await steady(120)
        finally:
            stop.set()
            await asyncio.gather(*flooders)
        seconds = time.monotonic() - started
        alone += await steady(40)
    served = sum(1 for status, _ in flood_replies if status == 200)
    refused = [code for status, code in flood_replies if status == 429]
    assert set(refused) == {"rate_limited"} and len(refused) > 5 * served, (served, len(refused))
    assert served <= 2 + seconds + 4  # the burst, one a second, and the flooders' requests in flight
    ratio = statistics.median(flooded) / statistics.median(alone)
    assert ratio < 2.5, f"under the flood the other key's median latency was {ratio:.2f}x its latency alone"


@pytest.fixture(autouse=True)
def _no_keys_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("SEQ2SEQ_API_KEYS", "SEQ2SEQ_ADMIN_API_KEYS", "SEQ2SEQ_API_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)
    yield


# -- the README's example ---------------------------------------------------------------------------
README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
README_CURL = re.compile(r"curl -s localhost:8000(/\w+)((?: -H '[^']+')*)(?: \\\n  -d '(.*?)')?\n# (\{.*\})\n")


def readme_key_examples() -> tuple[str, list[re.Match[str]]]:
    """The key the README's "API keys" section starts the server with, and its curl examples."""
    section = README.split("\n## API keys\n", 1)[1].split("\n## ", 1)[0]
    key = re.search(r"SEQ2SEQ_API_KEYS=(\S+) scripts/serve.sh", section)
    assert key is not None, "the README's API keys section starts no server"
    return key.group(1), list(README_CURL.finditer(section))


async def test_the_readme_key_examples_print_what_the_server_replies() -> None:
    key, examples = readme_key_examples()
    assert len(examples) == 2
    settings = Settings(
        models=["translate-de-en"], api_keys=key, threads=1, engine_process=False, restart_engines=False
    )
    app = create_app(settings, load_in_background=False)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            for example in examples:
                route, header_flags, body, printed = example.groups()
                headers = dict(h.split(": ", 1) for h in re.findall(r"-H '([^']+)'", header_flags))
                method = "POST" if body is not None else "GET"
                reply = (await client.request(method, route, content=body, headers=headers)).text
                # Abbreviated with "...": every quoted piece appears in the reply, in order.
                position = 0
                for piece in (p.strip(" ,") for p in printed.split("...")):
                    if piece.strip("{}[] "):
                        found = reply.find(piece.rstrip("}]"), position)
                        assert found >= 0, f"README prints {piece!r}; the server replies {reply}"
                        position = found
