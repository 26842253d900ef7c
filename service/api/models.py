"""GET /models and /models/{name}: what is loaded, its versions, status and evaluation."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.errors import ERROR_RESPONSES
from service.deps import RegistryDep
from service.registry import ModelEntry, Registry
from service.schemas import ModelInfo, ModelList

router = APIRouter(prefix="/models", tags=["models"])


def model_info(entry: ModelEntry, registry: Registry) -> ModelInfo:
    m = entry.manifest
    defaults = [key for key, name in registry.defaults().items() if name == entry.name]
    info = entry.engine.info if entry.engine is not None else None
    return ModelInfo(
        name=entry.name,
        version=entry.version,
        versions=entry.versions,
        task=entry.task,
        source_lang=m.get("source_lang"),
        target_lang=m.get("target_lang"),
        architecture=(m.get("model") or {}).get("architecture"),
        parameters=m.get("parameters"),
        status=entry.status.value,
        error=entry.error,
        default_for=defaults,
        description=m.get("description"),
        evaluation=m.get("evaluation"),
        decoding=entry.decoding or None,
        mmi_reranking=entry.mmi_reranking,
        device=info.device if info is not None else None,
        quantization=info.quantization if info is not None else None,
        dtype=info.dtype if info is not None else None,
    )


@router.get("", response_model=ModelList)
async def list_models(registry: RegistryDep) -> ModelList:
    return ModelList(models=[model_info(e, registry) for e in registry.entries.values()])


@router.get("/{name}", response_model=ModelInfo, responses={404: ERROR_RESPONSES[404]})
async def get_model(name: str, registry: RegistryDep) -> ModelInfo:
    return model_info(registry.get(name), registry)
