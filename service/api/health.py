"""Liveness and readiness.

``/health/live`` is 200 while the process serves HTTP. ``/health/ready`` is 200 only when
every requested model is loaded, warmed up and its engine alive, and the server
is not draining; load balancers and orchestrators route traffic by it.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.errors import error_response
from service.deps import RegistryDep
from service.errors import EngineUnavailable

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "not ready: loading, draining, or a worker is dead"}})
async def ready(registry: RegistryDep) -> JSONResponse:
    models = {e.name: e.status.value for e in registry.entries.values()}
    if registry.is_ready():
        return JSONResponse({"status": "ready", "models": models})
    if registry.draining:
        reason = "draining"
    elif not registry.loaded:
        reason = "loading models"
    else:
        reason = "not every model is ready"
    return error_response(EngineUnavailable(f"not ready: {reason}", details={"models": models}))
