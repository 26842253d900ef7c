"""Service settings: every field is a ``--flag`` of ``seq2seq-serve`` and an env var ``SEQ2SEQ_<NAME>``.

Validated once at start-up (pydantic-settings); a bad value stops the process with a
message instead of being silently ignored. The effective values are logged at start-up.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from seq2seq.optimize import DType, Quantization, dtype_fits
from service.auth import check_key, read_keys_file

DEFAULT_MODEL_STORE = Path(__file__).resolve().parents[1] / "model_store"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class Settings(BaseSettings):
    # Errors never echo their input: it may hold API keys.
    model_config = SettingsConfigDict(
        env_prefix="SEQ2SEQ_", extra="forbid", protected_namespaces=(), hide_input_in_errors=True
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    model_store: Path = DEFAULT_MODEL_STORE
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="names to load (name or name@version); empty: all"
    )
    required_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="models that must serve for /health/ready to be 200; empty: every model loaded. "
        "With names, a replica whose other models failed still takes traffic (they are reported either way)",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: DType = Field(
        "auto",
        description="auto: float16 on CUDA, float32 on CPU; bfloat16 is faster on CPUs with native bfloat16 GEMMs",
    )
    quantize: Quantization = Field(
        "none", description="int8: int8 weights and dynamically quantised activations (CPU only)"
    )
    batching: Literal["continuous", "static", "none"] = "continuous"
    threads: int = Field(0, ge=0, description="torch intra-op threads; 0: all cores but one")

    # Engine limits
    max_batch_rows: int = Field(128, ge=1, description="decoder rows per step (a beam-search request takes beam_size)")
    max_batch_tokens: int = Field(8192, ge=1, description="source tokens held by the running batch")
    max_queue: int = Field(256, ge=1, description="waiting requests per model before 429")
    static_max_delay_ms: float = Field(10.0, ge=0, description="static batching: wait this long to fill a batch")
    admit_delay_ms: float = Field(
        200.0,
        ge=0,
        description="continuous batching: while a batch runs, gather arrivals at most this long to encode together",
    )
    engine_process: bool = Field(
        True,
        description="run each model's engine in a process of its own, so its decoder steps never wait for "
        "the HTTP event loop's GIL; false: a worker thread of the HTTP process",
    )
    restart_engines: bool = Field(
        True, description="restart a model's engine when its worker or process dies, backing off from 1 s to 60 s"
    )
    watch_store_s: float = Field(
        0,
        ge=0,
        description="every this many seconds, load what POST /admin/reload would (newer versions and new models "
        "in the store); 0: off",
    )
    overlap_encode: bool | None = Field(
        None,
        description="continuous batching: encode arrivals on a second thread while the running batch decodes; "
        "default: when the torch threads leave a core free",
    )
    cuda_graphs: bool = Field(
        True,
        description="on a GPU, replay the decoder step from CUDA graphs captured at start-up "
        "(one per batch size bucket) instead of launching its kernels one by one",
    )
    request_timeout_s: float = Field(30.0, gt=0, description="default deadline: queue + generation")

    # Input limits
    max_texts: int = Field(64, ge=1, description="texts per /translate request")
    max_text_chars: int = Field(2000, ge=1)
    max_input_tokens: int = Field(256, ge=1, description="source pieces per text after tokenization")
    max_output_tokens: int = Field(256, ge=1, description="upper bound for max_length")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 413")
    max_beam_size: int = Field(8, ge=1)

    # HTTP limits (service/http.py)
    max_header_bytes: int = Field(32_768, ge=1024, description="request line and header fields, in all; else 431")
    max_headers: int = Field(100, ge=8, description="header fields per request; else 431")
    header_timeout_s: float = Field(10.0, gt=0, description="a request head must arrive within this; else 408")
    body_timeout_s: float = Field(30.0, gt=0, description="a request body must arrive within this after its head")
    keep_alive_s: float = Field(
        75.0,
        gt=0,
        description="idle kept-alive connections close after this; keep it above the idle timeout of the "
        "clients and proxies in front (nginx upstream 60 s, httpx 5 s), or a request sent as the server "
        "closes the connection is reset",
    )

    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="allowed browser origins, comma-separated; empty: CORS off"
    )

    # API keys and rate limits (service/auth.py, service/ratelimit.py); any key turns them on
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="API keys with the infer scope (/translate, /chat, /models), comma-separated; "
        "give them in the environment or --api-keys-file, since a flag shows in ps",
    )
    admin_api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="API keys with the admin scope (/admin/*), comma-separated"
    )
    api_keys_file: Path | None = Field(
        None,
        description="API keys, one per line: NAME KEY SCOPES [rps=R] [burst=B] [tokens_per_min=T] "
        "(SCOPES: infer, admin or infer,admin); re-read on SIGHUP",
    )
    metrics_access: Literal["open", "key"] = Field("open", description="/metrics with API keys on: open, or any key")
    docs_access: Literal["open", "key"] = Field(
        "open", description="/docs, /redoc and /openapi.json with API keys on: open, or any key"
    )
    rate_limit_rps: float = Field(0.0, ge=0, description="requests per second per API key; 0: no limit")
    rate_limit_burst: int = Field(0, ge=0, description="requests at once per API key; 0: the rate, rounded up")
    rate_limit_tokens_per_min: int = Field(0, ge=0, description="generated tokens per minute per API key; 0: no limit")
    shutdown_grace_s: float = Field(20.0, ge=0, description="SIGTERM: time to finish in-flight requests")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one JSON object per line (an access line carries the request's fields as keys)"
    )

    @field_validator("models", "required_models", "cors_origins", "api_keys", "admin_api_keys", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.max_texts > self.max_queue:
            raise ValueError(f"max_texts ({self.max_texts}) must not exceed max_queue ({self.max_queue})")
        if self.max_beam_size > self.max_batch_rows:
            raise ValueError(
                f"max_beam_size ({self.max_beam_size}) must not exceed max_batch_rows ({self.max_batch_rows})"
            )
        limited = self.rate_limit_rps or self.rate_limit_burst or self.rate_limit_tokens_per_min
        if limited and not self.auth_enabled:
            raise ValueError("rate limits are per API key: give api_keys, admin_api_keys or api_keys_file")
        if self.rate_limit_burst and not self.rate_limit_rps:
            raise ValueError("rate_limit_burst needs rate_limit_rps")
        if self.quantize == "int8" and (self.device == "cuda" or not dtype_fits(self.quantize, self.dtype)):
            raise ValueError(
                "quantize=int8 runs on the CPU with float32 activations (device cpu/auto, dtype auto/float32)"
            )
        return self

    @field_validator("model_store")
    @classmethod
    def _store_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"model store {value} is not a directory")
        return value

    @field_validator("api_keys", "admin_api_keys")
    @classmethod
    def _keys_valid(cls, value: list[SecretStr]) -> list[SecretStr]:
        for key in value:
            check_key(key.get_secret_value())
        return value

    @field_validator("api_keys_file")
    @classmethod
    def _keys_file_valid(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_keys_file(value)  # fail at start-up, naming the line
        return value

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys or self.admin_api_keys or self.api_keys_file)


def configure_logging(settings: Settings) -> None:
    """One log format for the HTTP process, uvicorn's own loggers and the engine processes, on stderr.

    ``json``: each record is an object with ``time``, ``level``, ``process``, ``logger`` and
    ``message``, plus whatever the record carries as ``extra`` (the access log's fields) and
    ``exc_info`` for a traceback; Python's warnings are logged too, so nothing else reaches stderr.
    """
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "{levelname}{processName}{name}{message}",
                style="{",
                rename_fields={"levelname": "level", "processName": "process", "name": "logger"},
                timestamp="time",
                reserved_attrs=[*RESERVED_ATTRS, "color_message"],  # uvicorn's copy of the message, with ANSI colours
                json_ensure_ascii=False,
            )
        )
        logging.captureWarnings(True)
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
