"""The admin API: which models and versions exist and serve, and run-time loads, unloads and reloads.

The registry does the work (:meth:`~service.registry.Registry.deploy`, ``unload``, ``reload``);
these routes translate it to HTTP, count it in the metrics and log each action as one line:
who asked (the API key's name, when keys are on), what, and how it ended.
"""

from __future__ import annotations

import json
import logging
import time

from fastapi import APIRouter, Request

from seq2seq.checkpoint import store_versions, version_key
from service.api.errors import ERROR_RESPONSES
from service.auth import client_name
from service.deps import EngineFactoryDep, MetricsDep, RegistryDep, SettingsDep
from service.errors import ModelLoadFailed, ModelNotFound, ServiceError
from service.metrics import Metrics
from service.registry import EngineFactory, ModelEntry, ModelStatus, Registry
from service.schemas import (
    AdminModel,
    AdminModelList,
    AdminVersion,
    ErrorBody,
    LoadRequest,
    ReloadResponse,
    ReloadResult,
)

log = logging.getLogger("service.admin")
router = APIRouter(prefix="/admin", tags=["admin"])

LOAD_ERRORS = {
    404: {"model": ErrorBody, "description": "the model, or that version of it, is not in the store"},
    413: ERROR_RESPONSES[413],
    422: {
        "model": ErrorBody,
        "description": "invalid body, or the version does not verify or load (model_load_failed)",
    },
}
UNLOAD_ERRORS = {
    404: {"model": ErrorBody, "description": "the model is not loaded"},
    409: {"model": ErrorBody, "description": "the model is required for readiness (--required-models)"},
}
RELOAD_ERRORS = {422: {"model": ErrorBody, "description": "the API keys file does not parse; nothing changed"}}


def admin_model(name: str, registry: Registry, on_disk: list[str]) -> AdminModel:
    """Every version of ``name`` on disk or in memory, and what each is doing."""
    states: dict[str, tuple[str, str | None]] = {}
    for (model, version), error in registry.failed.items():
        if model == name:
            states[version] = (ModelStatus.FAILED, error)
    active = registry.entries.get(name)
    unloading = registry.unloading.get(name)
    for entry in (e for e in (active, unloading) if e is not None):
        for engine in entry.draining:
            states[engine.info.version] = (ModelStatus.DRAINING, None)
    if active is not None:
        states[active.version] = (active.status, active.error)
    if name in registry.loading:
        states[registry.loading[name]] = (ModelStatus.LOADING, None)
    versions = [
        AdminVersion(
            version=v,
            on_disk=v in on_disk,
            status=states.get(v, ("available", None))[0],  # type: ignore[arg-type]
            active=active is not None and active.version == v,
            error=states.get(v, (None, None))[1],
        )
        for v in sorted(set(on_disk) | set(states), key=version_key)
    ]
    if active is not None:
        status = active.status.value
    elif unloading is not None:
        status = ModelStatus.DRAINING
    else:
        status = ModelStatus.LOADING if name in registry.loading else "not_loaded"
    return AdminModel(
        name=name,
        active_version=active.version if active is not None else None,
        status=status,  # type: ignore[arg-type]
        versions=versions,
    )


def _admin_view(name: str, registry: Registry) -> AdminModel:
    return admin_model(name, registry, store_versions(registry.store).get(name, []))


def audit(request: Request, action: str, outcome: str, started: float, **fields: object) -> None:
    """One structured line per admin action: who, what, how it ended. Never the key itself."""
    who = client_name(request) or "anonymous"
    record = {"who": who, "action": action, **fields, "outcome": outcome}
    record["seconds"] = round(time.perf_counter() - started, 3)
    log.info(json.dumps(record, ensure_ascii=False))


@router.get("/models", response_model=AdminModelList)
async def list_models(registry: RegistryDep) -> AdminModelList:
    """Every model and version in the store or in memory, the active versions, the defaults."""
    on_disk = store_versions(registry.store)
    names = sorted(set(on_disk) | set(registry.entries) | set(registry.unloading) | set(registry.loading))
    return AdminModelList(
        models=[admin_model(n, registry, on_disk.get(n, [])) for n in names], defaults=registry.defaults()
    )


@router.post("/models/{name}/load", response_model=AdminModel, responses=LOAD_ERRORS)
async def load(
    name: str,
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    factory: EngineFactoryDep,
    body: LoadRequest | None = None,
) -> AdminModel:
    """Load a version (default: the newest on disk) beside the one serving, then switch new
    requests to it; the old version finishes what it admitted, then stops. Answers once the new
    version serves, or with the error, the old version still serving."""
    started = time.perf_counter()
    version = body.version if body is not None else None
    try:
        entry = await deploy(registry, name, version, factory, metrics, settings.shutdown_grace_s)
    except ServiceError as exc:
        audit(request, "load", exc.code, started, model=name, version=version, error=exc.message)
        raise
    audit(request, "load", "loaded", started, model=name, version=entry.version)
    return _admin_view(name, registry)


async def deploy(
    registry: Registry, name: str, version: str | None, factory: EngineFactory, metrics: Metrics, grace_s: float
) -> ModelEntry:
    """:meth:`Registry.deploy`, counted: its outcome, and the time until the new version serves."""
    started = time.perf_counter()
    try:
        entry = await registry.deploy(name, version, factory, grace_s)
    except ServiceError:
        metrics.model_loads.labels(name, "failed").inc()
        raise
    metrics.model_swap.labels(name).observe(time.perf_counter() - started)
    metrics.model_loads.labels(name, "loaded").inc()
    return entry


@router.post("/models/{name}/unload", response_model=AdminModel, responses=UNLOAD_ERRORS)
async def unload(
    name: str, request: Request, registry: RegistryDep, settings: SettingsDep, metrics: MetricsDep
) -> AdminModel:
    """Stop admitting requests for the model, let it finish those it admitted, free its memory.
    Answers once it is gone; later requests for it get 404 (or the language pair's next model)."""
    started = time.perf_counter()
    try:
        entry = await registry.unload(name, settings.shutdown_grace_s)
    except ServiceError as exc:
        audit(request, "unload", exc.code, started, model=name, error=exc.message)
        raise
    metrics.model_unloads.labels(name).inc()
    audit(request, "unload", "unloaded", started, model=name, version=entry.version)
    return _admin_view(name, registry)


@router.post("/reload", response_model=ReloadResponse, responses=RELOAD_ERRORS)
async def reload(
    request: Request, registry: RegistryDep, settings: SettingsDep, metrics: MetricsDep, factory: EngineFactoryDep
) -> ReloadResponse:
    """Read the API keys file again (if there is one), then rescan the store: load each model whose
    newest version is newer than the one serving, and each model new to the store. A keys file that
    does not parse is a 422 before any model changes."""
    started = time.perf_counter()
    keys = request.app.state.keys
    keys_reloaded = keys.path is not None
    if keys_reloaded:
        try:
            keys.reload()
        except ServiceError as exc:
            audit(request, "reload", exc.code, started, error=exc.message)
            raise
    results = await reload_store(registry, factory, metrics, settings.shutdown_grace_s)
    outcome = "failed" if any(r.outcome == "failed" for r in results) else "ok"
    audit(
        request, "reload", outcome, started, loaded=[f"{r.model}@{r.version}" for r in results if r.outcome == "loaded"]
    )
    return ReloadResponse(results=results, api_keys_reloaded=keys_reloaded)


async def reload_store(
    registry: Registry, factory: EngineFactory, metrics: Metrics, grace_s: float
) -> list[ReloadResult]:
    """What ``/admin/reload`` and ``--watch-store`` do to the models: load what
    :meth:`Registry.outdated` lists, one after another; a failure leaves that model as it was and
    the others still load."""
    results = []
    for name, version in registry.outdated():
        try:
            await deploy(registry, name, version, factory, metrics, grace_s)
            results.append(ReloadResult(model=name, version=version, outcome="loaded"))
        except (ModelLoadFailed, ModelNotFound) as exc:
            results.append(ReloadResult(model=name, version=version, outcome="failed", error=exc.message))
    return results
