"""Registry bookkeeping: versions, pins, failures, defaults (no network loaded)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service import registry as registry_module
from service.errors import EngineUnavailable, ModelNotFound
from service.registry import ModelStatus, Registry, scan_store


@pytest.fixture
def store(tiny_store: Path, tmp_path: Path) -> Path:
    root = tmp_path / "store"
    shutil.copytree(tiny_store, root)
    shutil.copytree(root / "chat-en" / "1", root / "chat-en" / "10")
    shutil.copytree(root / "chat-en" / "1", root / "chat-en" / "2")
    return root


def test_latest_version_unless_pinned(store: Path) -> None:
    by_name = {e.name: e for e in scan_store(store, [])}
    assert by_name["chat-en"].version == "10" and by_name["chat-en"].versions == ["1", "2", "10"]
    pinned = {e.name: e for e in scan_store(store, ["chat-en@2", "translate-de-en"])}
    assert set(pinned) == {"chat-en", "translate-de-en"}
    assert pinned["chat-en"].version == "2"
    missing = {e.name: e for e in scan_store(store, ["chat-en@7", "ghost"])}
    assert missing["chat-en"].status == "failed" and "version 7 not found" in (missing["chat-en"].error or "")
    assert missing["ghost"].status == "failed"


def test_a_broken_model_is_reported_and_the_others_serve(store: Path) -> None:
    (store / "chat-en" / "10" / "model.safetensors").write_bytes(b"corrupt")
    registry = Registry(store)

    class FakeEngine:
        alive = True
        dead = None

    def factory(entry):
        from seq2seq.checkpoint import load_model_dir

        load_model_dir(entry.path)  # real verification: checksums, config/weights agreement
        return FakeEngine()

    registry.load_all(factory)
    assert registry.entries["chat-en"].status == "failed"
    assert "sha256 mismatch" in (registry.entries["chat-en"].error or "")
    assert registry.entries["translate-de-en"].ready
    assert not registry.is_ready()  # a requested model is missing
    assert registry.defaults() == {"translate:de-en": "translate-de-en"}
    entry = registry.resolve("translate", None, "de", "en")
    assert entry.name == "translate-de-en"  # higher BLEU than translate-de-en-basic
    with pytest.raises(EngineUnavailable, match="the chat model for en failed to load .chat-en: .*sha256") as failed:
        registry.resolve("chat", None, None, "en")
    assert "Retry-After" not in failed.value.headers  # it will not load by waiting
    with pytest.raises(ModelNotFound, match="no chat model for ko"):
        registry.resolve("chat", None, None, "ko")  # nothing for it exists at all
    assert Registry(store, required=["translate-de-en", "translate-de-en-basic"]).is_ready() is False  # not loaded


def test_a_model_still_loading_is_503_not_404(store: Path) -> None:
    registry = Registry(store)  # scanned, nothing loaded yet
    with pytest.raises(EngineUnavailable, match="translate-de-en"):
        registry.resolve("translate", None, "de", "en")
    with pytest.raises(ModelNotFound):
        registry.resolve("translate", None, "fr", "en")  # nothing for this pair exists at all


def test_supervise_restarts_dead_engines_with_backoff(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"now": 1000.0}
    monkeypatch.setattr(registry_module.time, "monotonic", lambda: clock["now"])

    class FakeEngine:
        dead = None

        def __init__(self) -> None:
            self.alive = True
            self.stopped = False

        def stop(self, grace_s: float = 0.0) -> None:
            self.stopped = True

    built: list[FakeEngine] = []
    failing = {"on": False}

    def factory(entry):
        if failing["on"]:
            raise RuntimeError("cannot load")
        built.append(FakeEngine())
        return built[-1]

    registry = Registry(store, ["translate-de-en"])
    registry.load_all(factory)
    entry = registry.entries["translate-de-en"]
    restarted: list[str] = []

    def tick(seconds: float) -> None:
        """Advance the clock, then run one round of supervision."""
        clock["now"] += seconds
        registry._stopping.clear()
        waits = iter([False, True])  # one round, then stop
        monkeypatch.setattr(registry._stopping, "wait", lambda timeout: next(waits))
        registry.supervise(factory, restarted.append)

    built[0].alive = False
    tick(0.1)
    assert entry.engine is built[0] and not restarted  # the first restart waits 1 s
    tick(1.0)
    assert built[0].stopped and entry.engine is built[1] and restarted == ["translate-de-en"]
    built[1].alive = False
    failing["on"] = True
    tick(0.1)
    tick(2.0)  # second crash: 2 s; the restart fails
    assert entry.engine is built[1] and len(entry.crashes) == 3
    failing["on"] = False
    tick(2.0)  # third: 4 s, not yet
    assert entry.engine is built[1]
    tick(2.0)
    assert entry.engine is built[2] and restarted == ["translate-de-en"] * 2
    tick(400.0)  # old crashes age out of the window
    built[2].alive = False
    tick(0.1)
    tick(1.0)
    assert entry.engine is built[3] and entry.crashes == [clock["now"] - 1.0]


def test_one_status_per_model_and_the_503_it_calls_for(store: Path) -> None:
    (store / "chat-en" / "10" / "model.safetensors").write_bytes(b"corrupt")

    class FakeEngine:
        alive = True
        dead: BaseException | None = None

    def factory(entry):
        from seq2seq.checkpoint import load_model_dir

        load_model_dir(entry.path)
        return FakeEngine()

    registry = Registry(store)
    de_en = registry.entries["translate-de-en"]
    assert de_en.status is ModelStatus.LOADING and de_en.error is None
    with pytest.raises(EngineUnavailable, match="is loading"):
        registry.engine(de_en)
    registry.load_all(factory)
    chat = registry.entries["chat-en"]
    assert chat.status is ModelStatus.FAILED and "sha256 mismatch" in (chat.error or "")
    with pytest.raises(EngineUnavailable, match="failed to load: .*sha256"):
        registry.engine(chat)
    assert de_en.status is ModelStatus.READY and registry.engine(de_en) is de_en.engine
    de_en.engine.alive, de_en.engine.dead = False, RuntimeError("boom")
    assert de_en.status is ModelStatus.DEAD and de_en.error == "RuntimeError('boom')"
    with pytest.raises(EngineUnavailable, match="its engine died"):
        registry.engine(de_en)
    registry.draining = True
    with pytest.raises(EngineUnavailable, match="shutting down"):
        registry.engine(registry.entries["translate-de-en-basic"])


def test_required_models_decide_readiness_and_failed_ones_are_reported(store: Path) -> None:
    (store / "chat-en" / "10" / "model.safetensors").write_bytes(b"corrupt")

    class FakeEngine:
        alive = True
        dead = None

    def factory(entry):
        from seq2seq.checkpoint import load_model_dir

        load_model_dir(entry.path)
        return FakeEngine()

    every = Registry(store)
    every.load_all(factory)
    assert not every.is_ready()  # the default: every model must serve
    some = Registry(store, required=["translate-de-en"])
    some.load_all(factory)
    assert some.is_ready() and some.entries["chat-en"].status is ModelStatus.FAILED
    some.entries["translate-de-en"].engine.alive = False
    assert not some.is_ready()  # a required model that dies takes the replica out
    ghost = Registry(store, required=["ghost"])
    ghost.load_all(factory)
    assert not ghost.is_ready()  # a required model that does not exist never serves
