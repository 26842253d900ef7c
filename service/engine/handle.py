"""What the HTTP layer and the registry see of a model's engine, wherever it runs.

:class:`~service.engine.engine.Engine` runs the decode loop on a thread of the HTTP
process; :class:`~service.engine.process.EngineProcess` runs that same engine in a
process of its own and forwards to it. Routes and the registry use only this interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Metric

from seq2seq.generation import GenerationRequest
from seq2seq.tokenizer import Tokenizer
from service.engine.streams import RequestStream


@dataclass(frozen=True)
class EngineInfo:
    """The model as the HTTP layer needs it: tokenizers on this side, and how the model runs."""

    source_tokenizer: Tokenizer
    target_tokenizer: Tokenizer
    device: str
    dtype: str
    quantization: str


class EngineHandle(Protocol):
    name: str
    info: EngineInfo
    dead: BaseException | None  # what killed the worker, if it died

    @property
    def alive(self) -> bool: ...

    def submit(self, requests: list[GenerationRequest], streams: list[RequestStream], timeout_s: float) -> None:
        """Queue ``requests`` (all or none, or raise a ServiceError); their events arrive on ``streams``."""

    def abort(self, request_ids: set[str]) -> None:
        """Cancel these requests wherever they are."""

    def stop(self, grace_s: float = 0.0) -> None:
        """Stop accepting, let the requests in flight finish for up to ``grace_s``, fail the rest."""

    async def metric_families(self) -> list[Metric]:
        """Metrics kept outside the app's own registry (an engine process's), for ``/metrics``."""
        ...
