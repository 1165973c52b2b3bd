"""Load over HTTP: an engine stand-in that sends each request to an OpenAI-compatible server.

`HttpTarget` has the engine's `submit` / `cancel` shape, so `run_load` drives `tickscope serve`
(or any OpenAI-compatible `/v1/completions`, with `Authorization: Bearer` when given an API key)
exactly as it drives the engine in-process. Each
request is one streaming completion with the prompt as token ids; each streamed chunk that
carries text counts as one output token, stamped when it is received. Cancelling closes the
connection, which is how an OpenAI client gives up (the server should then free the request).

Plain HTTP/1.1 over asyncio streams, one connection per request: enough for a local server, and
no client library to depend on. No TLS: a target is a server on this machine or this network.

A connection refused, broken or closed before the answer is whole means the target has gone: `error`
says so, for the run to stop, and the request ends as "failed" (as "rejected" when refused: it never
reached a server). An answer the server gave (an HTTP error status) ends it as "rejected", or as
"cancelled" when it came after some tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from engine.errors import ConfigError
from engine.request import Request
from tracer.events import RequestStatus

MAX_LINE = 64 * 1024  # a status line, header, chunk-size line or SSE event longer than this is bad
UNKNOWN_TOKEN = -1  # streamed text does not say which token id it was


class HttpError(Exception):
    """The server answered, but not with a stream we can read."""


class TargetLost(Exception):
    """The target server went away mid-run. One line."""


class HttpTarget:
    """Sends requests to `url` (e.g. http://127.0.0.1:8000). Use from one event loop."""

    def __init__(
        self, url: str, *, model: str = "tickscope", timeout_s: float = 300.0, api_key: str | None = None
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigError(f"target must be an http://host[:port] URL, not '{url}'")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = parts.path.rstrip("/") + "/v1/completions"
        self.model = model
        self.timeout_s = timeout_s
        self._auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
        self.error: TargetLost | None = None  # set by the first request that found the target gone
        self._tasks: dict[int, asyncio.Task[None]] = {}

    def submit(self, req: Request) -> None:
        task = asyncio.get_running_loop().create_task(self._complete(req))
        self._tasks[req.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(req.id, None))

    def cancel(self, request_id: int) -> None:
        task = self._tasks.get(request_id)
        if task is not None:
            task.cancel()

    async def aclose(self) -> None:
        """Cancel whatever is still streaming and wait for it to end."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _complete(self, req: Request) -> None:
        received = 0

        async def consume() -> None:
            nonlocal received
            async for _ in self._stream(req):
                received += 1
                req.sink.on_token(UNKNOWN_TOKEN, time.monotonic_ns())

        # Exactly one on_finish, whatever happens: the generator counts on it.
        try:
            await asyncio.wait_for(consume(), self.timeout_s)
        except asyncio.CancelledError:
            req.sink.on_finish("cancelled", "cancelled by the client", time.monotonic_ns())
        except (TimeoutError, HttpError, ValueError) as exc:  # TimeoutError first: it is an OSError
            # Nothing came back: the server did not take it. Part came back: it was cut off.
            status: RequestStatus = "cancelled" if received else "rejected"
            req.sink.on_finish(status, _reason(exc), time.monotonic_ns())
        except (OSError, EOFError) as exc:
            reason = _reason(exc)
            self.error = self.error or TargetLost(f"the target {self.host}:{self.port} went away ({reason})")
            status = "rejected" if isinstance(exc, ConnectionRefusedError) else "failed"
            req.sink.on_finish(status, reason, time.monotonic_ns())
        else:
            req.sink.on_finish("finished", "", time.monotonic_ns())

    async def _stream(self, req: Request) -> AsyncIterator[None]:
        """Yields once per streamed chunk that carries text."""
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=MAX_LINE)
        try:
            body = json.dumps(
                {
                    "model": self.model,
                    "prompt": req.prompt,
                    "max_tokens": req.max_new_tokens,
                    "stream": True,
                }
            ).encode()
            head = (
                f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nAccept: text/event-stream\r\n{self._auth}"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
            code, headers = await _read_head(reader)
            chunks = _body(reader, headers)
            if code != 200:
                raise HttpError(f"HTTP {code}: {_error_message(await anext(chunks, b''))}")
            async for event in _sse_events(chunks):
                if event == b"[DONE]":
                    return
                choice = (json.loads(event).get("choices") or [{}])[0]
                if choice.get("text"):
                    yield None
            raise EOFError("stream ended without [DONE]")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status = (await reader.readline()).decode("latin-1").split()
    if len(status) < 2 or not status[0].startswith("HTTP/") or not status[1].isdigit():
        raise HttpError(f"not an HTTP response: {' '.join(status)[:80]!r}")
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n"):
        if not line:
            raise EOFError("connection closed in the response headers")
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status[1]), headers


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
    """The response body as it arrives: chunked, sized, or up to the close."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            line = await reader.readline()
            if not line:
                raise EOFError("connection closed in a chunked body")
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                return
            yield await reader.readexactly(size)
            await reader.readexactly(2)  # the CRLF after each chunk
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        while data := await reader.read(MAX_LINE):
            yield data


async def _sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The `data:` payload of each server-sent event."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk.replace(b"\r\n", b"\n")
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            data = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
            if data:
                yield b"\n".join(data)
        if len(buffer) > MAX_LINE:
            raise HttpError("server-sent event too long")


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _error_message(body: bytes) -> str:
    # OpenAI's error shape is {"error": {"message": ...}}; show the raw start of anything else.
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        return str(json.loads(body)["error"]["message"])
    return body[:200].decode("utf-8", "replace") or "(no body)"
