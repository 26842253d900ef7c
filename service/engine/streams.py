"""The outputs of one request, as the asyncio handler waiting for them sees them."""

from __future__ import annotations

import asyncio

from seq2seq.generation import Hypothesis
from service.engine.request import Output, RequestFailed, is_last


class RequestStream:
    """Outputs of one request in order; fed on the event loop it was created on."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.closed = False  # its last output arrived, or the request was aborted
        self._queue: asyncio.Queue[Output] = asyncio.Queue()

    def put(self, output: Output) -> None:
        self.closed = self.closed or is_last(output)
        self._queue.put_nowait(output)

    async def next(self) -> Output:
        return await self._queue.get()

    async def final(self) -> list[Hypothesis]:
        """Wait for the end of the request: its hypotheses, or raise its error."""
        while True:
            output = await self._queue.get()
            if isinstance(output, RequestFailed):
                raise output.error
            if output.finished is not None:
                return output.finished
