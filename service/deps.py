"""Typed dependencies: what routes get from ``app.state`` (tests override them per app).

They are ``async`` so FastAPI calls them on the event loop instead of hopping to its thread pool.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.metrics import Metrics
from service.registry import EngineFactory, Registry
from service.settings import Settings


async def get_registry(request: Request) -> Registry:
    return request.app.state.registry


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_engine_factory(request: Request) -> EngineFactory:
    return request.app.state.engine_factory


RegistryDep = Annotated[Registry, Depends(get_registry)]
EngineFactoryDep = Annotated[EngineFactory, Depends(get_engine_factory)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
