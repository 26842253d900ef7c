"""``python -m service`` / ``seq2seq-serve``: start the HTTP server.

Every flag is also an environment variable ``SEQ2SEQ_<NAME>``; flags win. On SIGTERM the
server turns not-ready, stops accepting connections, lets in-flight requests finish
within ``--shutdown-grace-s`` and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any, Literal, get_args, get_origin

import uvicorn
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from service.app import create_app
from service.http import HttpLimits, limited_protocol
from service.settings import Settings, configure_logging

log = logging.getLogger("service")


class DrainingServer(uvicorn.Server):
    """Flips readiness to 503 the moment a shutdown signal arrives, before uvicorn drains."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        app = self.config.loaded_app
        while hasattr(app, "app") and not hasattr(app, "state"):
            app = app.app
        registry = getattr(getattr(app, "state", None), "registry", None)
        if registry is not None:
            registry.draining = True
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Exit 0 after a graceful drain: uvicorn would re-raise the captured SIGTERM at the end,
        turning a clean shutdown into exit status 143 for Docker and Kubernetes."""
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def _help(name: str, field: FieldInfo) -> str:
    """A flag's help: what it does, its choices, its default and its environment variable."""
    parts = [field.description] if field.description else []
    choices = _choices(field.annotation)
    if choices:
        parts.append("one of " + ", ".join(choices))
    default = field.get_default(call_default_factory=True)
    if isinstance(default, list):
        default = ",".join(map(str, default)) or "none"
    elif isinstance(default, bool):
        default = str(default).lower()
    parts.append(f"default: {default if default is not None else 'automatic'}")
    parts.append(f"env SEQ2SEQ_{name.upper()}")
    return "; ".join(parts).replace("%", "%%")


def _choices(annotation: object) -> list[str]:
    if get_origin(annotation) is Literal:
        return [str(c) for c in get_args(annotation)]
    if annotation is bool or bool in get_args(annotation):
        return ["true", "false"]
    return []


def parse_args(argv: list[str] | None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="seq2seq-serve", description=__doc__)
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=_help(name, field))
    return {k: v for k, v in vars(p.parse_args(argv)).items() if v is not None}


def main(argv: list[str] | None = None) -> None:
    overrides = parse_args(argv)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        sys.exit(f"invalid settings:\n{exc}")
    configure_logging(settings)
    log.info("settings: %s", json.dumps(settings.model_dump(mode="json")))
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's loggers reach the handler of configure_logging, in its format
        access_log=False,  # the access log is RequestContextMiddleware's: one line per request
        http=limited_protocol(
            HttpLimits(
                settings.max_header_bytes, settings.max_headers, settings.header_timeout_s, settings.body_timeout_s
            )
        ),
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
        lifespan="on",
    )
    DrainingServer(config).run()


if __name__ == "__main__":
    main()
