"""``--log-format json``: every line a real server writes is a JSON object; access lines carry the request."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.server_process import ServiceProcess


def test_json_logs_one_object_per_line_with_the_requests_fields(tiny_store: Path, tmp_path: Path) -> None:
    args = ("--log-format", "json", "--models", "translate-de-en,chat-en", "--shutdown-grace-s", "2")
    with ServiceProcess(tmp_path / "server.log", *args, store=tiny_store) as server:
        server.wait_ready(60)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            texts = {"texts": ["Ein Mann läuft.", "Zwei Hunde spielen im Park."], "source_lang": "de"}
            translated = http.post("/translate", json={**texts, "target_lang": "en"}, headers={"x-request-id": "t-1"})
            assert translated.status_code == 200
            chat = {"message": "a man runs", "language": "en", "stream": True}
            with http.stream("POST", "/chat", json=chat, headers={"x-request-id": "c-1"}) as streamed:
                assert streamed.status_code == 200
                streamed.read()
            assert http.post("/translate", json={}, headers={"x-request-id": "bad-1"}).status_code == 422
            assert http.get("/nowhere", headers={"x-request-id": "lost-1"}).status_code == 404
        assert server.terminate() == 0

    lines = server.log().splitlines()
    records = [json.loads(line) for line in lines]  # every line, uvicorn's and the engines' too
    assert len(records) == len(lines) > 0
    for record in records:
        assert {"time", "level", "process", "logger", "message"} <= record.keys(), record
    uvicorn = [r["message"] for r in records if r["logger"].startswith("uvicorn")]
    assert any(m.startswith("Uvicorn running on") for m in uvicorn)
    assert "Shutting down" in uvicorn
    assert not any("color_message" in r for r in records)

    access = {r["request_id"]: r for r in records if r["logger"] == "service.access"}
    usage = translated.json()["usage"]
    t = access["t-1"]
    assert (t["method"], t["route"], t["status"]) == ("POST", "/translate", 200)
    assert (t["model"], t["version"]) == ("translate-de-en", "1")
    assert (t["input_tokens"], t["output_tokens"]) == (usage["input_tokens"], usage["output_tokens"])
    for stage in ("queue_ms", "encode_ms", "generation_ms"):
        assert 0 <= t[stage] <= t["total_ms"]
    assert t["encode_ms"] > 0 and t["generation_ms"] > 0
    assert t["message"].startswith("POST /translate 200 request_id=t-1 model=translate-de-en version=1 ")

    c = access["c-1"]  # streamed: recorded when the stream ends
    assert (c["route"], c["status"], c["model"]) == ("/chat", 200, "chat-en")
    assert c["output_tokens"] > 0 and c["input_tokens"] > 0
    assert c["queue_ms"] + c["encode_ms"] + c["generation_ms"] <= c["total_ms"]  # one text: its stages in order

    for request_id, status in (("bad-1", 422), ("lost-1", 404)):
        r = access[request_id]
        assert r["status"] == status
        assert r["queue_ms"] is None and r["output_tokens"] is None  # no engine was involved
        assert r["total_ms"] >= 0
