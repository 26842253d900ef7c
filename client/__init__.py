"""Python client of the seq2seq-serve HTTP API, and the ``seq2seq`` command line.

::

    from client import Client

    with Client("http://127.0.0.1:8000") as c:
        print(c.translate("Zwei Hunde spielen im Schnee.", target_lang="en").translations[0].text)
        with c.chat_stream("Hello, how are you?") as stream:
            for text in stream.text_deltas():
                print(text, end="", flush=True)

The modules are private; everything public is re-exported here.
"""

from client._client import AsyncChatStream, AsyncClient, ChatStream, Client
from client._config import API_KEY_ENV, DEFAULT_BASE_URL, DEFAULT_RETRY, DEFAULT_TIMEOUT, NO_RETRY, Retry
from client._exceptions import (
    APIError,
    ConnectError,
    DeadlineExceeded,
    Forbidden,
    InternalServerError,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ProtocolError,
    RateLimited,
    Seq2SeqError,
    Timeout,
    TransportError,
    Unauthorized,
    Unavailable,
)
from client._models import (
    Alternative,
    ChatDelta,
    ChatEvent,
    ChatResult,
    ChatTurn,
    DecodingOptions,
    Health,
    ModelInfo,
    Readiness,
    TranslateResult,
    Translation,
    Usage,
)

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_BASE_URL",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUT",
    "NO_RETRY",
    "APIError",
    "Alternative",
    "AsyncChatStream",
    "AsyncClient",
    "ChatDelta",
    "ChatEvent",
    "ChatResult",
    "ChatStream",
    "ChatTurn",
    "Client",
    "ConnectError",
    "DeadlineExceeded",
    "DecodingOptions",
    "Forbidden",
    "Health",
    "InternalServerError",
    "InvalidRequest",
    "ModelInfo",
    "ModelNotFound",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "ProtocolError",
    "RateLimited",
    "Readiness",
    "Retry",
    "Seq2SeqError",
    "Timeout",
    "TransportError",
    "TranslateResult",
    "Translation",
    "Unauthorized",
    "Unavailable",
    "Usage",
]
