"""The bridge from the engine's thread to an asyncio event loop, one request at a time.

The engine calls a request's sink from its own thread and must never wait on the client; the
client lives in an event loop and must only be touched from it. `StreamingSink` hands each call
over with `loop.call_soon_threadsafe`, so every piece of per-request state below is read and
written on the loop alone, and a token can never overtake the finish that follows it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from tracer.events import RequestStatus

SinkCallback = Callable[["StreamingSink"], None]


class StreamingSink:
    """A `RequestSink` whose tokens and finish land in one event loop.

    Loop side: `tokens` and `token_ns` grow as tokens arrive; `status`, `reason` and `finish_ns`
    are set once, when the request ends (`status` is None until then); `done` resolves then.
    `on_first_token` and `on_done` are called on the loop at those two moments. The first finish
    wins: anything the engine sends after a finish (or after `finish_locally`) is dropped, which
    is what makes "every request ends exactly once" hold on the client side.
    """

    __slots__ = (
        "request_id",
        "tokens",
        "token_ns",
        "status",
        "reason",
        "finish_ns",
        "done",
        "_loop",
        "_on_first_token",
        "_on_done",
        "_changed",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        request_id: int,
        *,
        on_first_token: SinkCallback | None = None,
        on_done: SinkCallback | None = None,
    ) -> None:
        self.request_id = request_id
        self.tokens: list[int] = []
        self.token_ns: list[int] = []
        self.status: RequestStatus | None = None
        self.reason = ""
        self.finish_ns = 0
        self.done: asyncio.Future[None] = loop.create_future()
        self._loop = loop
        self._on_first_token = on_first_token
        self._on_done = on_done
        self._changed: asyncio.Future[None] | None = None  # awaited by `stream()`

    # -- engine thread ---------------------------------------------------------------------
    def on_token(self, token: int, t_ns: int) -> None:
        self._post(self._token, token, t_ns)

    def on_finish(self, status: RequestStatus, reason: str, t_ns: int) -> None:
        self._post(self.finish_locally, status, reason, t_ns)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            # The loop is closed: the client has gone and there is nobody left to tell. Raising
            # here would only break the engine's thread.
            pass

    # -- event loop ------------------------------------------------------------------------
    def finish_locally(self, status: RequestStatus, reason: str, t_ns: int) -> None:
        """End the request from the client's side (or deliver the engine's end); first wins."""
        if self.status is not None:
            return
        self.status, self.reason, self.finish_ns = status, reason, t_ns
        if not self.done.done():
            self.done.set_result(None)
        self._wake()
        if self._on_done is not None:
            self._on_done(self)

    async def stream(self) -> AsyncIterator[int]:
        """The output tokens as they arrive, ending when the request does."""
        i = 0
        while True:
            while i < len(self.tokens):
                yield self.tokens[i]
                i += 1
            if self.status is not None:
                return
            self._changed = self._loop.create_future()
            await self._changed

    def _token(self, token: int, t_ns: int) -> None:
        if self.status is not None:
            return
        self.tokens.append(token)
        self.token_ns.append(t_ns)
        self._wake()
        if len(self.tokens) == 1 and self._on_first_token is not None:
            self._on_first_token(self)

    def _wake(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
