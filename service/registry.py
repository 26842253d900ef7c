"""Model registry: which models exist in the store, their lifecycle, and default resolution.

The bookkeeping (scan, status, defaults, resolution) is plain Python over manifests; the
tensor side is a callable that turns a model directory into a started engine,
so tests can exercise the registry without loading a network. A model's status is
derived in one place, :attr:`ModelEntry.status`, and every response reports that.

At run time the admin API changes what serves (:meth:`Registry.deploy`, :meth:`Registry.unload`;
:meth:`Registry.outdated` lists what a reload loads). A new version loads in an engine of its own beside the one serving;
one assignment on the event loop then points the model at it, so every request is admitted by
exactly one engine (handlers resolve and submit without awaiting in between), and the old engine
drains what it admitted and stops.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from seq2seq.checkpoint import CheckpointError, decoding_defaults, read_manifest, store_versions, version_key
from service.engine.client import EngineClient
from service.errors import Conflict, EngineUnavailable, InvalidRequest, ModelLoadFailed, ModelNotFound

log = logging.getLogger("service.registry")

CRASH_WINDOW_S = 300.0  # crashes older than this no longer lengthen the wait before a restart
MAX_RESTART_DELAY_S = 60.0
LOAD_ERRORS = (CheckpointError, OSError, RuntimeError, ValueError)  # a model that cannot load; the others serve on
EngineFactory = Callable[["ModelEntry"], EngineClient]


class ModelStatus(StrEnum):
    LOADING = "loading"  # found in the store; its engine is starting
    READY = "ready"  # serving
    FAILED = "failed"  # could not be loaded (missing, corrupt, load error): only an operator can fix it
    DEAD = "dead"  # was serving, and its engine died; restarted with --restart-engines
    DRAINING = "draining"  # replaced by another version, or unloaded: finishing what it admitted, then stopping


@dataclass
class ModelEntry:
    name: str
    version: str
    versions: list[str]
    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    load_error: str | None = None  # why it could not be loaded
    engine: EngineClient | None = None
    crashes: list[float] = field(default_factory=list)  # monotonic times of recent crashes and failed restarts
    _crashed: EngineClient | None = field(default=None, repr=False)  # the dead engine already counted
    pinned: bool = False  # ``--models name@version``: reloads leave it at that version
    draining: list[EngineClient] = field(default_factory=list)  # replaced engines finishing their requests

    @property
    def status(self) -> ModelStatus:
        if self.load_error is not None:
            return ModelStatus.FAILED
        if self.engine is None:
            return ModelStatus.LOADING
        return ModelStatus.READY if self.engine.alive else ModelStatus.DEAD

    @property
    def error(self) -> str | None:
        """Why the model does not serve: its load error, or what killed its engine."""
        if self.load_error is not None:
            return self.load_error
        if self.engine is not None and self.engine.dead is not None:
            return repr(self.engine.dead)
        return None

    @property
    def task(self) -> str:
        return str(self.manifest.get("task", "unknown"))

    @property
    def ready(self) -> bool:
        return self.status is ModelStatus.READY

    @property
    def mmi_reranking(self) -> bool:
        """It ships a backward model p(input | output), so its beams can be reranked (``mmi_weight``)."""
        return "backward" in self.manifest

    @property
    def decoding(self) -> dict[str, Any]:
        """Its decoding defaults (its manifest's, chosen on val), less those it cannot apply."""
        return decoding_defaults(self.manifest)

    def beam_bleu(self) -> float:
        evaluation = self.manifest.get("evaluation") or {}
        return float((evaluation.get("beam") or {}).get("bleu", 0.0))


def restart_delay(crashes: int) -> float:
    """Seconds between a model's latest crash and its restart: 1, 2, 4, ... up to a minute."""
    return min(MAX_RESTART_DELAY_S, 2.0 ** max(0, crashes - 1))


def scan_store(store: Path, wanted: list[str]) -> list[ModelEntry]:
    """One entry per model to serve: the latest version unless ``name@version`` pins one."""
    pins = dict(w.split("@", 1) if "@" in w else (w, None) for w in wanted)
    entries = []
    for name, versions in store_versions(store).items():
        if pins and name not in pins:
            continue
        version = pins.get(name) or versions[-1]
        entry = ModelEntry(name, version, versions, store / name / version, pinned=name in pins and bool(pins[name]))
        if version not in versions:
            entry.load_error = f"version {version} not found (have {', '.join(versions)})"
        else:
            try:
                entry.manifest = read_manifest(entry.path)
            except CheckpointError as exc:
                entry.load_error = str(exc)
        entries.append(entry)
    missing = set(pins) - {e.name for e in entries}
    for name in sorted(missing):
        entries.append(ModelEntry(name, pins[name] or "", [], store / name, load_error="not in model store"))
    return entries


class Registry:
    def __init__(self, store: Path, wanted: list[str] | None = None, required: list[str] | None = None) -> None:
        """``required``: the names that must serve for the registry to be ready; empty: every entry."""
        self.store = store
        self.entries: dict[str, ModelEntry] = {e.name: e for e in scan_store(store, wanted or [])}
        self.required = list(required or [])
        self.draining = False
        self.known = set(self.entries)  # names seen; a reload adds only models new to the store
        self.wanted = {w.split("@", 1)[0] for w in wanted or []}  # --models: a reload adds nothing else
        self.unloading: dict[str, ModelEntry] = {}  # unloaded, still draining
        self.loading: dict[str, str] = {}  # name -> the version loading beside what serves (admin actions)
        self.failed: dict[tuple[str, str], str] = {}  # (name, version) -> why its latest admin load failed
        self._loaded = threading.Event()
        self._stopping = threading.Event()
        self._swap = threading.Lock()  # an admin swap and a supervisor restart never both replace an engine
        self._admin_locks: dict[str, asyncio.Lock] = {}
        self._drains: set[asyncio.Task[None]] = set()  # replaced engines draining in the background

    # -- lifecycle -----------------------------------------------------------------------------
    def load_all(self, factory: EngineFactory) -> None:
        """Load every entry, all at once; a model that fails is reported (logs, /models) and the others
        still serve. Concurrent, because an engine process spends most of its start-up importing
        and loading on its own, and a server of six models would otherwise start them one by one."""
        with ThreadPoolExecutor(max(1, len(self.entries)), thread_name_prefix="load") as pool:
            for _ in pool.map(lambda entry: self._load(entry, factory), self.entries.values()):
                pass
        self._loaded.set()

    @staticmethod
    def _load(entry: ModelEntry, factory: EngineFactory) -> None:
        if entry.load_error is not None:
            log.error("model %s: %s", entry.name, entry.load_error)
            return
        try:
            entry.engine = factory(entry)
            log.info("model %s@%s ready", entry.name, entry.version)
        except LOAD_ERRORS as exc:
            entry.load_error = str(exc)
            log.error("model %s@%s failed to load: %s", entry.name, entry.version, exc)

    @property
    def loaded(self) -> bool:
        return self._loaded.is_set()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return self._loaded.wait(timeout)

    def is_ready(self) -> bool:
        """Every required model (by default every model) loaded, warmed up and with a live engine; not draining."""
        names = self.required or list(self.entries)
        required = [self.entries.get(name) for name in names]
        return self.loaded and not self.draining and bool(required) and all(e is not None and e.ready for e in required)

    def supervise(self, factory: EngineFactory, on_restart: Callable[[str], None], interval_s: float = 0.5) -> None:
        """Restart the engines whose worker or process died, until :meth:`stop` (runs on a thread).

        A model that keeps crashing backs off (:func:`restart_delay` over its crashes of the
        last :data:`CRASH_WINDOW_S`). Until it is back, its requests get 503 with ``Retry-After``
        and readiness reports it dead, so load balancers send its traffic to other replicas.
        """
        while not self._stopping.wait(interval_s):
            for entry in list(self.entries.values()):  # admin actions change it on the event loop
                if self.draining or self._stopping.is_set():
                    return
                engine = entry.engine
                if entry.status is not ModelStatus.DEAD:
                    continue
                assert engine is not None
                now = time.monotonic()
                if entry._crashed is not engine:  # a new death
                    entry._crashed = engine
                    entry.crashes = [t for t in entry.crashes if t > now - CRASH_WINDOW_S] + [now]
                    log.error(
                        "model %s: its engine died (%r); restarting in %gs",
                        entry.name,
                        engine.dead,
                        restart_delay(len(entry.crashes)),
                    )
                if now >= entry.crashes[-1] + restart_delay(len(entry.crashes)):
                    self._restart(entry, factory, on_restart)

    def _restart(self, entry: ModelEntry, factory: EngineFactory, on_restart: Callable[[str], None]) -> None:
        dead = entry.engine
        assert dead is not None
        dead.stop(0)  # frees what is left: threads, the process, requests not yet failed
        try:
            engine = factory(entry)
        except LOAD_ERRORS as exc:
            entry.crashes.append(time.monotonic())
            log.error(
                "model %s: restart failed (next try in %gs): %s", entry.name, restart_delay(len(entry.crashes)), exc
            )
            return
        with self._swap:
            replaced = entry.engine is not dead or self.entries.get(entry.name) is not entry
            if not replaced:
                entry.engine = engine
        if replaced:  # an admin action swapped or unloaded the model meanwhile: that one stands
            engine.stop(0)
            return
        on_restart(entry.name)
        log.info("model %s@%s restarted", entry.name, entry.version)

    def stop(self, grace_s: float) -> None:
        self._stopping.set()
        for entry in [*self.entries.values(), *self.unloading.values()]:
            for engine in [entry.engine, *entry.draining]:
                if engine is not None:
                    engine.stop(grace_s)

    # -- run-time changes (the admin API; on the event loop) -------------------------------------
    def _lock(self, name: str) -> asyncio.Lock:
        """One admin action at a time per model: a second waits for the first."""
        return self._admin_locks.setdefault(name, asyncio.Lock())

    async def deploy(self, name: str, version: str | None, factory: EngineFactory, grace_s: float) -> ModelEntry:
        """Serve ``version`` of ``name`` (default: its newest on disk), loaded and warmed up beside
        what serves now; then new requests go to it, and the old engine drains (up to ``grace_s``)
        in the background. Returns once the new version serves.

        Raises :class:`ModelNotFound` for a model or version not in the store and
        :class:`ModelLoadFailed` when the version does not verify or load; either way what
        served goes on serving."""
        async with self._lock(name):
            versions = store_versions(self.store).get(name, [])
            if not versions:
                raise ModelNotFound(f"model {name!r} is not in the model store")
            version = version or versions[-1]
            if version not in versions:
                raise ModelNotFound(
                    f"model {name!r} has no version {version!r} in the store (have {', '.join(versions)})"
                )
            current = self.entries.get(name)
            if current is not None and current.version == version and current.ready:
                return current  # already serving: loading it again would only cost a swap
            candidate = ModelEntry(name, version, versions, self.store / name / version)
            self.loading[name] = version
            try:
                candidate.manifest = read_manifest(candidate.path)
                engine = await asyncio.to_thread(factory, candidate)
            except LOAD_ERRORS as exc:
                self.failed[name, version] = str(exc)
                log.error("model %s@%s failed to load: %s", name, version, exc)
                raise ModelLoadFailed(f"model {name}@{version} failed to load: {exc}") from exc
            finally:
                del self.loading[name]
            with self._swap:  # one step on the event loop: no handler sees half of it
                entry = self.entries.get(name)
                old = entry.engine if entry is not None else None
                if entry is None:
                    entry = self.entries[name] = candidate
                    self.known.add(name)
                else:
                    entry.version, entry.versions, entry.path = version, versions, candidate.path
                    entry.manifest, entry.load_error, entry.crashes = candidate.manifest, None, []
                    entry.pinned = False
                entry.engine = engine
                self.failed.pop((name, version), None)
        if old is not None:
            drain = asyncio.create_task(self._drain(entry, old, grace_s))
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        return entry

    async def _drain(self, entry: ModelEntry, engine: EngineClient, grace_s: float) -> None:
        entry.draining.append(engine)
        try:
            await asyncio.to_thread(engine.stop, grace_s)
        finally:
            entry.draining.remove(engine)

    async def unload(self, name: str, grace_s: float) -> ModelEntry:
        """Stop admitting requests for ``name``, let its engine finish them (up to ``grace_s``), free it;
        returns once it is gone. Its later requests resolve as if it had never been loaded (404, or the
        language pair's next model)."""
        async with self._lock(name):
            entry = self.get(name)
            if name in self.required:
                raise Conflict(f"model {name} is required for readiness (--required-models); it cannot be unloaded")
            with self._swap:
                del self.entries[name]
                self.unloading[name] = entry
            try:
                if entry.engine is not None:
                    await self._drain(entry, entry.engine, grace_s)
            finally:
                del self.unloading[name]
            return entry

    def outdated(self) -> list[tuple[str, str]]:
        """What a reload loads, as (name, version): each model whose newest version on disk is newer
        than the one it serves (pinned ones excepted), and each model new to the store; a version
        whose load failed is left for an operator to load by hand."""
        pending = []
        for name, versions in store_versions(self.store).items():
            entry = self.entries.get(name)
            if entry is None:
                if name not in self.known and (not self.wanted or name in self.wanted):
                    pending.append((name, versions[-1]))
            elif not entry.pinned and version_key(versions[-1]) > version_key(entry.version):
                pending.append((name, versions[-1]))
        return [target for target in pending if target not in self.failed]

    # -- resolution ----------------------------------------------------------------------------
    def engine(self, entry: ModelEntry) -> EngineClient:
        """The engine that serves ``entry``'s requests now, or the 503 that says why there is none."""
        if self.draining:
            raise EngineUnavailable("the server is shutting down")
        status = entry.status
        if status is ModelStatus.READY:
            assert entry.engine is not None
            return entry.engine
        if status is ModelStatus.DEAD:
            raise EngineUnavailable(f"model {entry.name} is unavailable: its engine died ({entry.error})")
        if status is ModelStatus.LOADING:
            raise EngineUnavailable(f"model {entry.name} is loading", retry_after_s=5)
        raise EngineUnavailable(f"model {entry.name} failed to load: {entry.error}", retry_after_s=None)

    def ready_entries(self, task: str | None = None) -> list[ModelEntry]:
        return [e for e in self.entries.values() if e.ready and (task is None or e.task == task)]

    def defaults(self) -> dict[str, str]:
        """Default model per ``translate:<src>-<tgt>`` and ``chat:<lang>``: the best beam BLEU, then the name."""
        best: dict[str, ModelEntry] = {}
        for e in self.ready_entries():
            m = e.manifest
            key = (
                f"translate:{m['source_lang']}-{m['target_lang']}"
                if e.task == "translate"
                else f"chat:{m['target_lang']}"
            )
            current = best.get(key)
            if current is None or (e.beam_bleu(), -len(e.name)) > (current.beam_bleu(), -len(current.name)):
                best[key] = e
        return {k: v.name for k, v in best.items()}

    def get(self, name: str) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise ModelNotFound(f"model {name!r} not found; available: {', '.join(sorted(self.entries)) or 'none'}")
        return entry

    def resolve(
        self, task: str, model: str | None, source_lang: str | None, target_lang: str | None, text: str = ""
    ) -> ModelEntry:
        """The entry that serves a request: by name, else the default for the language (pair).

        Without a source language, when the models that fit serve more than one, the language is
        the one whose model's tokenizer explains ``text`` best (:func:`identify_language`)."""
        if model is not None:
            entry = self.get(model)
            if entry.task != task and entry.ready:
                raise ModelNotFound(f"model {model!r} is a {entry.task} model; use /{entry.task}")
            return entry
        candidates = [
            e
            for e in self.ready_entries(task)
            if (source_lang is None or e.manifest["source_lang"] == source_lang)
            and (target_lang is None or e.manifest["target_lang"] == target_lang)
        ]
        if not candidates:
            serving_this = [
                e
                for e in self.entries.values()
                if e.manifest.get("task") == task
                and (source_lang is None or e.manifest.get("source_lang") == source_lang)
                and (target_lang is None or e.manifest.get("target_lang") == target_lang)
            ]
            pending = [e.name for e in serving_this if e.status in (ModelStatus.LOADING, ModelStatus.DEAD)]
            if pending:  # a model exists for this, it just cannot serve yet (or now): 503, retried elsewhere
                raise EngineUnavailable(f"model {', '.join(pending)} is not ready", retry_after_s=5)
            failed = [e for e in serving_this if e.status is ModelStatus.FAILED]
            if failed:  # it exists and will not load: 503 without a promise of retry
                wanted = f"{source_lang or '*'}->{target_lang or '*'}" if task == "translate" else (target_lang or "*")
                reasons = "; ".join(f"{e.name}: {e.error}" for e in failed)
                raise EngineUnavailable(f"the {task} model for {wanted} failed to load ({reasons})", retry_after_s=None)
            available = sorted(self._pairs(task))
            wanted = f"{source_lang or '*'}->{target_lang or '*'}" if task == "translate" else (target_lang or "*")
            raise ModelNotFound(
                f"no {task} model for {wanted}; available: {', '.join(available) or 'none'}",
                details={"available": available},
            )
        if source_lang is None and len({e.manifest["source_lang"] for e in candidates}) > 1:
            language = identify_language(text, candidates)
            candidates = [e for e in candidates if e.manifest["source_lang"] == language]
        defaults = set(self.defaults().values())
        return max(candidates, key=lambda e: (e.name in defaults, e.beam_bleu(), -len(e.name)))

    def _pairs(self, task: str) -> set[str]:
        if task == "translate":
            return {f"{e.manifest['source_lang']}->{e.manifest['target_lang']}" for e in self.ready_entries(task)}
        return {e.manifest["target_lang"] for e in self.ready_entries(task)}


LANGUAGE_MARGIN = 0.5  # log-probability per character between the best and the second language


def identify_language(text: str, candidates: list[ModelEntry]) -> str:
    """The source language of ``text`` among the candidates': the one whose tokenizer fits it best
    (:meth:`~seq2seq.tokenizer.Tokenizer.fit`), or 422 listing them when two fit about as well."""
    fits: dict[str, float] = {}
    for entry in candidates:
        assert entry.engine is not None
        language = entry.manifest["source_lang"]
        fits[language] = max(fits.get(language, -math.inf), entry.engine.info.source_tokenizer.fit(text))
    ranked = sorted(fits, key=fits.__getitem__, reverse=True)
    if not text.strip() or fits[ranked[0]] - fits[ranked[1]] < LANGUAGE_MARGIN:
        raise InvalidRequest(
            f"cannot tell the language of the text among {', '.join(sorted(fits))}: give it (source_lang or language)",
            details={"languages": sorted(fits)},
        )
    return ranked[0]
