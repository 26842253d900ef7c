"""GET /metrics in the Prometheus text format, engine processes' metrics included."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import MetricsDep, RegistryDep
from service.metrics import exposition

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(metrics: MetricsDep, registry: RegistryDep) -> Response:
    engines = [e.engine for e in registry.entries.values() if e.engine is not None]
    remote = await asyncio.gather(*(engine.metric_families() for engine in engines))
    text = exposition(metrics.registry, [family for families in remote for family in families])
    return Response(text, media_type=CONTENT_TYPE_LATEST)
