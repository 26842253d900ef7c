"""The admin API: models listed, loaded, swapped, unloaded and reloaded at run time.

The in-process tests check each action's answers, errors, metrics and log lines. The last
suite runs a real server (engine processes) under continuous load while its models change,
and checks that no request fails and that every answer comes from exactly one version.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import pytest
import torch

from seq2seq.checkpoint import WEIGHTS, read_manifest, save_model_dir
from seq2seq.config import ModelConfig
from seq2seq.model import Seq2Seq
from tests.server_process import ServiceProcess
from tests.service.conftest import AppClient
from tests.service.test_reliability import record

TEXTS = ["Ein Mann spielt im Park.", "Zwei Hunde laufen.", "Ein Kind mit einem Ball.", "Eine Frau auf der Straße."]


def add_version(store: Path, name: str, version: str, seed: int) -> Path:
    """Another version of ``name``: the same tokenizers and architecture, other weights (so other outputs)."""
    base = store / name / "1"
    manifest = read_manifest(base)
    torch.manual_seed(seed)
    model = Seq2Seq(ModelConfig.from_dict(manifest["model"]))
    kept = {k: manifest[k] for k in ("name", "task", "source_lang", "target_lang", "evaluation", "description")}
    tokenizers = manifest["tokenizer"]
    return save_model_dir(
        store / name / version,
        model,
        {**kept, "version": version},
        base / tokenizers["source"],
        base / tokenizers["target"],
    )


def corrupt_version(store: Path, name: str, version: str) -> Path:
    """A version whose weights no longer match the manifest's checksum."""
    path = add_version(store, name, version, seed=99)
    with (path / WEIGHTS).open("r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    return path


@pytest.fixture
def store(tiny_store: Path, tmp_path: Path) -> Path:
    """A copy of the tiny store that a test may add versions to."""
    return Path(shutil.copytree(tiny_store, tmp_path / "model_store"))


async def translate(client: httpx.AsyncClient, model: str = "translate-de-en") -> httpx.Response:
    return await client.post("/translate", json={"texts": TEXTS, "model": model, "max_length": 12})


def admin_model(listing: dict, name: str) -> dict:
    return next(m for m in listing["models"] if m["name"] == name)


async def test_the_listing_shows_every_model_and_version_on_disk_and_in_memory(app_client: AppClient, store: Path):
    add_version(store, "translate-de-en", "2", seed=5)
    async with app_client(model_store=store, models=["translate-de-en@1", "chat-en"]) as (client, _):
        listing = (await client.get("/admin/models")).json()
    assert [m["name"] for m in listing["models"]] == ["chat-en", "translate-de-en", "translate-de-en-basic"]
    de_en = admin_model(listing, "translate-de-en")
    assert de_en["active_version"] == "1" and de_en["status"] == "ready"
    assert [(v["version"], v["status"], v["active"], v["on_disk"]) for v in de_en["versions"]] == [
        ("1", "ready", True, True),
        ("2", "available", False, True),
    ]
    basic = admin_model(listing, "translate-de-en-basic")  # in the store, not asked for
    assert basic["status"] == "not_loaded" and basic["active_version"] is None
    assert listing["defaults"] == {"translate:de-en": "translate-de-en", "chat:en": "chat-en"}


async def test_loading_a_new_version_switches_requests_to_it(app_client: AppClient, store: Path, caplog):
    caplog.set_level(logging.INFO, logger="service.admin")
    async with app_client(model_store=store) as (client, app):
        before = await translate(client)
        assert before.headers["x-model-version"] == "1" and before.json()["version"] == "1"
        add_version(store, "translate-de-en", "2", seed=5)
        loaded = await client.post("/admin/models/translate-de-en/load")  # no body: the newest version
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["active_version"] == "2"
        after = await translate(client)
        assert after.headers["x-model"] == "translate-de-en" and after.headers["x-model-version"] == "2"
        assert after.json()["version"] == "2"
        assert [t["text"] for t in after.json()["translations"]] != [t["text"] for t in before.json()["translations"]]
        info = (await client.get("/models/translate-de-en")).json()
        assert (info["version"], info["versions"], info["status"]) == ("2", ["1", "2"], "ready")
        registry = app.state.registry
        for _ in range(100):  # the old engine drains in the background, then stops
            if not registry.entries["translate-de-en"].draining:
                break
            await asyncio.sleep(0.05)
        versions = admin_model((await client.get("/admin/models")).json(), "translate-de-en")["versions"]
        assert [(v["version"], v["status"]) for v in versions] == [("1", "available"), ("2", "ready")]

        back = await client.post("/admin/models/translate-de-en/load", json={"version": "1"})  # a rollback
        assert back.json()["active_version"] == "1"
        assert (await translate(client)).json()["translations"] == before.json()["translations"]
        metrics = (await client.get("/metrics")).text
    assert 'seq2seq_model_loads_total{model="translate-de-en",outcome="loaded"} 2.0' in metrics
    assert 'seq2seq_model_swap_seconds_count{model="translate-de-en"} 2.0' in metrics
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "service.admin"]
    assert [(r["who"], r["action"], r["model"], r["version"], r["outcome"]) for r in lines] == [
        ("anonymous", "load", "translate-de-en", "2", "loaded"),
        ("anonymous", "load", "translate-de-en", "1", "loaded"),
    ]


async def test_a_version_that_does_not_verify_is_refused_and_the_old_one_serves(app_client: AppClient, store: Path):
    corrupt_version(store, "translate-de-en", "2")
    async with app_client(model_store=store, models=["translate-de-en@2"]) as (client, _):
        at_start_up = (await client.get("/models/translate-de-en")).json()["error"]  # the same check at start-up
    assert "sha256 mismatch" in at_start_up
    async with app_client(model_store=store, models=["translate-de-en@1"]) as (client, _):
        before = await translate(client)
        refused = await client.post("/admin/models/translate-de-en/load", json={"version": "2"})
        assert refused.status_code == 422
        error = refused.json()["error"]
        assert error["code"] == "model_load_failed"
        assert error["message"] == f"model translate-de-en@2 failed to load: {at_start_up}"
        after = await translate(client)
        assert after.status_code == 200 and after.json() == before.json()
        versions = admin_model((await client.get("/admin/models")).json(), "translate-de-en")["versions"]
        assert [(v["version"], v["status"], v["active"]) for v in versions] == [
            ("1", "ready", True),
            ("2", "failed", False),
        ]
        assert versions[1]["error"] == at_start_up
        assert (await client.get("/health/ready")).status_code == 200
        assert (await client.post("/admin/reload")).json()["results"] == []  # a failed version is not retried
        metrics = (await client.get("/metrics")).text
    assert 'seq2seq_model_loads_total{model="translate-de-en",outcome="failed"} 1.0' in metrics


async def test_loads_of_what_is_not_in_the_store_are_404(app_client: AppClient, store: Path):
    async with app_client(model_store=store) as (client, _):
        missing_version = await client.post("/admin/models/translate-de-en/load", json={"version": "7"})
        missing_model = await client.post("/admin/models/translate-xx-en/load")
        bad_body = await client.post("/admin/models/translate-de-en/load", json={"versoin": "1"})
    assert missing_version.status_code == 404 and missing_version.json()["error"]["code"] == "model_not_found"
    assert "have 1" in missing_version.json()["error"]["message"]
    assert missing_model.status_code == 404
    assert bad_body.status_code == 422 and bad_body.json()["error"]["code"] == "invalid_request"


async def test_unloading_frees_the_model_and_its_requests_go_elsewhere(app_client: AppClient, store: Path):
    async with app_client(model_store=store) as (client, app):
        gone = await client.post("/admin/models/translate-de-en/unload")
        assert gone.status_code == 200 and gone.json()["status"] == "not_loaded"
        named = await translate(client)
        assert named.status_code == 404 and named.json()["error"]["code"] == "model_not_found"
        by_pair = await client.post("/translate", json={"text": TEXTS[0], "source_lang": "de", "target_lang": "en"})
        assert by_pair.status_code == 200 and by_pair.json()["model"] == "translate-de-en-basic"  # the pair's next
        assert "translate-de-en" not in [m["name"] for m in (await client.get("/models")).json()["models"]]
        assert (await client.get("/health/ready")).status_code == 200
        assert (await client.post("/admin/models/translate-de-en/unload")).status_code == 404
        reloaded = (await client.post("/admin/reload")).json()
        assert reloaded == {"results": [], "api_keys_reloaded": False}  # unloaded by hand: a reload leaves it out
        again = await client.post("/admin/models/translate-de-en/load")  # loading a model not loaded adds it
        assert again.status_code == 200 and (await translate(client)).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert 'seq2seq_model_unloads_total{model="translate-de-en"} 1.0' in metrics


async def test_a_required_model_cannot_be_unloaded(app_client: AppClient, store: Path):
    async with app_client(model_store=store, required_models=["chat-en"]) as (client, _):
        refused = await client.post("/admin/models/chat-en/unload")
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"
        assert (await client.post("/chat", json={"message": "Hello", "max_length": 5})).status_code == 200


async def test_reload_loads_newer_versions_and_new_models_but_not_pinned_ones(app_client: AppClient, store: Path):
    async with app_client(model_store=store, models=["translate-de-en", "chat-en@1"]) as (client, _):
        assert (await client.post("/admin/reload")).json()["results"] == []
        add_version(store, "translate-de-en", "2", seed=5)
        add_version(store, "chat-en", "2", seed=6)  # pinned to 1 by --models
        reloaded = (await client.post("/admin/reload")).json()
        assert reloaded["results"] == [{"model": "translate-de-en", "version": "2", "outcome": "loaded", "error": None}]
        assert (await translate(client)).headers["x-model-version"] == "2"
        chat = await client.post("/chat", json={"message": "Hello", "max_length": 5})
        assert chat.headers["x-model-version"] == "1"

    async with app_client(model_store=store, models=[]) as (client, _):  # every model of the store
        shutil.copytree(store / "translate-de-en-basic", store / "translate-de-en-basic-copy")
        reloaded = (await client.post("/admin/reload")).json()["results"]
        assert [(r["model"], r["outcome"]) for r in reloaded] == [("translate-de-en-basic-copy", "loaded")]
        assert (await translate(client, "translate-de-en-basic-copy")).status_code == 200


async def test_a_load_in_progress_is_listed_and_the_old_version_serves_meanwhile(app_client: AppClient, store: Path):
    async with app_client(model_store=store) as (client, app):
        add_version(store, "translate-de-en", "2", seed=5)
        factory, gate = app.state.engine_factory, asyncio.Event()
        loop = asyncio.get_running_loop()

        def gated(entry):  # the loader thread waits for the test
            asyncio.run_coroutine_threadsafe(gate.wait(), loop).result()
            return factory(entry)

        app.state.engine_factory = gated
        load = asyncio.create_task(client.post("/admin/models/translate-de-en/load"))
        for _ in range(100):
            model = admin_model((await client.get("/admin/models")).json(), "translate-de-en")
            if model["versions"][1]["status"] == "loading":
                break
            await asyncio.sleep(0.02)
        assert [(v["version"], v["status"]) for v in model["versions"]] == [("1", "ready"), ("2", "loading")]
        assert (await translate(client)).headers["x-model-version"] == "1"
        assert (await client.get("/health/ready")).status_code == 200
        gate.set()
        assert (await load).json()["active_version"] == "2"


async def test_watch_store_rolls_out_a_new_version(app_client: AppClient, store: Path):
    async with app_client(model_store=store, watch_store_s=0.1) as (client, _):
        add_version(store, "translate-de-en", "2", seed=5)
        for _ in range(200):
            if (await translate(client)).headers["x-model-version"] == "2":
                break
            await asyncio.sleep(0.05)
        assert (await translate(client)).headers["x-model-version"] == "2"


# -- a real server under load -------------------------------------------------------------------------
def answer_counts(answers: dict[tuple[str, str, str], Counter[str]]) -> Counter[tuple[str, str]]:
    """Answers per (model, version)."""
    counts: Counter[tuple[str, str]] = Counter()
    for (model, version, _), outputs in answers.items():
        counts[model, version] += sum(outputs.values())
    return counts


async def test_models_change_under_load_with_no_failed_request(store: Path, tmp_path: Path):
    """Concurrency 32 (translate, and streamed chat) while: a new translate version loads, a reload
    rolls out a new chat version, another model unloads, and a corrupt version is refused."""
    with ServiceProcess(tmp_path / "server.log", store=store) as server:
        server.wait_ready(60)
        add_version(store, "translate-de-en", "2", seed=5)
        answers: dict[tuple[str, str, str], Counter[str]] = defaultdict(Counter)  # (model, version, input) -> outputs
        failures: list[str] = []
        stop = asyncio.Event()

        async def translate_worker(client: httpx.AsyncClient, i: int) -> None:
            while not stop.is_set():
                text = TEXTS[i % len(TEXTS)]
                r = await client.post("/translate", json={"text": text, "model": "translate-de-en", "max_length": 12})
                if r.status_code != 200:
                    failures.append(f"translate {r.status_code} {r.text}")
                    continue
                body = r.json()
                if body["version"] != r.headers["x-model-version"]:
                    failures.append(f"version field {body['version']} != header {r.headers['x-model-version']}")
                answers["translate-de-en", body["version"], text][body["translations"][0]["text"]] += 1

        async def chat_worker(client: httpx.AsyncClient, i: int) -> None:
            while not stop.is_set():
                message = ["Hello", "How are you", "Good morning"][i % 3]
                payload = {"message": message, "model": "chat-en", "stream": True, "max_length": 8}
                async with client.stream("POST", "/chat", json=payload) as r:
                    text = await r.aread()
                if r.status_code != 200 or b"event: done" not in text or b"event: error" in text:
                    failures.append(f"chat {r.status_code} {text[-200:]!r}")
                    continue
                done = json.loads(text.split(b"event: done\ndata: ")[1].split(b"\n")[0])
                if done["version"] != r.headers["x-model-version"]:
                    failures.append(f"stream version {done['version']} != header {r.headers['x-model-version']}")
                answers["chat-en", done["version"], message][done["reply"]] += 1

        limits = httpx.Limits(max_connections=40, max_keepalive_connections=40)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            workers = [asyncio.create_task(translate_worker(client, i)) for i in range(24)]
            workers += [asyncio.create_task(chat_worker(client, i)) for i in range(8)]
            await asyncio.sleep(1)
            t0 = time.monotonic()
            assert (await client.post("/admin/models/translate-de-en/load")).json()["active_version"] == "2"
            load_s = time.monotonic() - t0
            await asyncio.sleep(1)
            add_version(store, "chat-en", "2", seed=6)
            t0 = time.monotonic()
            reloaded = (await client.post("/admin/reload")).json()["results"]
            reload_s = time.monotonic() - t0
            assert [(r["model"], r["version"], r["outcome"]) for r in reloaded] == [("chat-en", "2", "loaded")]
            await asyncio.sleep(1)
            before_unload = server.memory_bytes()
            assert (await client.post("/admin/models/translate-de-en-basic/unload")).status_code == 200
            after_unload = server.memory_bytes()
            corrupt_version(store, "translate-de-en", "3")
            refused = await client.post("/admin/models/translate-de-en/load", json={"version": "3"})
            assert refused.status_code == 422
            await asyncio.sleep(1)
            stop.set()
            await asyncio.gather(*workers)
            serving = {m["name"]: m["version"] for m in (await client.get("/models")).json()["models"]}

            # Memory returns to its level: load the unloaded model again and drop it once more.
            assert (await client.post("/admin/models/translate-de-en-basic/load")).status_code == 200
            loaded = server.memory_bytes()
            assert (await client.post("/admin/models/translate-de-en-basic/unload")).status_code == 200
            freed = server.memory_bytes()

    record(
        "admin-under-load",
        {
            "requests": sum(sum(c.values()) for c in answers.values()) + len(failures),
            "failed": len(failures),
            "answers_by_version": {f"{m}@{v}": n for (m, v), n in sorted(answer_counts(answers).items())},
            "load_seconds": round(load_s, 2),
            "reload_seconds": round(reload_s, 2),
            "pss_mib": {
                "before_unload": round(before_unload / 2**20, 1),
                "after_unload": round(after_unload / 2**20, 1),
                "reloaded": round(loaded / 2**20, 1),
                "unloaded_again": round(freed / 2**20, 1),
            },
        },
    )
    assert failures == []
    assert serving == {"translate-de-en": "2", "chat-en": "2"}
    assert set(answer_counts(answers)) == {
        ("translate-de-en", "1"),
        ("translate-de-en", "2"),
        ("chat-en", "1"),
        ("chat-en", "2"),
    }
    for key, outputs in answers.items():  # greedy decoding: one version, one output per input
        assert len(outputs) == 1, (key, outputs)
    for model, inputs in (("translate-de-en", TEXTS), ("chat-en", ["Hello", "How are you", "Good morning"])):
        by_version = {v: [next(iter(answers.get((model, v, t), {"": 0}))) for t in inputs] for v in ("1", "2")}
        assert by_version["1"] != by_version["2"], by_version  # the versions really differ: the check means something
    assert before_unload - after_unload > 20 * 2**20, (before_unload, after_unload)  # its engine process is gone
    assert loaded - freed > 20 * 2**20 and abs(freed - after_unload) < 32 * 2**20, (after_unload, loaded, freed)


async def test_with_api_keys_admin_actions_name_the_key_and_reload_rereads_the_keys_file(
    app_client: AppClient, store: Path, tmp_path: Path, caplog
):
    caplog.set_level(logging.INFO, logger="service.admin")
    keys = tmp_path / "keys.txt"
    ops, app_key, later = "ops-" + "o" * 28, "app-" + "a" * 28, "new-" + "n" * 28
    keys.write_text(f"ops {ops} admin\napp {app_key} infer\n")
    async with app_client(model_store=store, api_keys_file=keys) as (client, _):
        as_ops = {"Authorization": f"Bearer {ops}"}
        assert (await client.post("/admin/reload")).status_code == 401
        assert (await client.post("/admin/reload", headers={"Authorization": f"Bearer {app_key}"})).status_code == 403
        keys.write_text(f"ops {ops} admin\nlater {later} infer\n")
        reloaded = await client.post("/admin/reload", headers=as_ops)
        assert reloaded.json() == {"results": [], "api_keys_reloaded": True}
        answer = await client.post("/translate", json={"text": TEXTS[0]}, headers={"Authorization": f"Bearer {later}"})
        assert answer.status_code == 200
        assert (await client.post("/admin/models/translate-de-en-basic/unload", headers=as_ops)).status_code == 200
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "service.admin"]
    assert [(r["who"], r["action"], r["outcome"]) for r in lines] == [
        ("ops", "reload", "ok"),
        ("ops", "unload", "unloaded"),
    ]
    assert ops not in caplog.text and later not in caplog.text
