"""`tickscope serve`: an OpenAI-compatible completions endpoint in front of a traced engine.

Real clients and load tools (curl, the `openai` package, `tickscope record --target`, vLLM's
benchmark) drive the engine over HTTP while every tick is traced. The front writes a request's
client-side moments as the load generator does — `arrive` when the request is submitted,
`first_token`, and `finish` with every token's time — so a trace from `serve` reads like one from
`record`; the engine adds its ticks, admissions and preemptions to the same file.

A client that goes away cancels its request: aiohttp cancels the handler when the connection
drops (`handler_cancellation`), and the handler's `finally` asks the engine to cancel, which frees
the request's KV at its next tick. A stream is only answered with 200 once its first token (or its
rejection) is known, so a full queue is a proper 429 rather than an error inside a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from engine.config import get_preset
from engine.engine import Engine, resolve_device
from engine.errors import ConfigError
from engine.request import Request
from engine.scheduler import SchedulerConfig
from tracer.events import RequestEvent, SessionHeader
from tracer.writer import TraceWriter
from workloads.openai_api import (
    ApiError,
    CompletionRequest,
    ServedModel,
    chunk,
    completion,
    parse_completion,
    rejection,
    usage_chunk,
)
from workloads.run import leave_a_core_free, session_config, stop_when_engine_fails
from workloads.signals import stop_on_signals
from workloads.spec import load_workload
from workloads.stream import StreamingSink
from workloads.tokenizer import ByteTokenizer

MAX_BODY_BYTES = 4 << 20  # a prompt of a million token ids as JSON fits; more is refused with 413
_MAX_TOKEN_US = 2**32 - 1  # token_us is uint32 (as in the load generator)
# At shutdown: how long in-flight handlers get to send their last bytes once the engine has
# cancelled them, and how long the engine's cancellations get to reach the event loop.
_SHUTDOWN_S = 2.0


@dataclass
class ServePlan:
    trace: Path
    preset: str = "tiny"
    workload: str | None = None  # a workload whose [scheduler] knobs to use; None: the engine's defaults
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (the URL handed to `on_ready` says which)
    device: str = "auto"
    seed: int | None = None  # weights from this seed (default 0)
    model_name: str = "tickscope"
    scheduler_overrides: dict[str, Any] = field(default_factory=dict)
    model_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ServeResult:
    trace: Path
    ticks: int
    requests: int
    finished: int
    rejected: int
    cancelled: int
    tokens_generated: int
    dropped_events: int


class Server:
    """Building it checks the plan and allocates the model but opens no file and no socket;
    `start` opens both, `close` ends every request, stops the engine and closes the trace."""

    def __init__(self, plan: ServePlan) -> None:
        knobs = load_workload(plan.workload).scheduler.overrides() if plan.workload else {}
        sched_cfg = SchedulerConfig(**{**knobs, **plan.scheduler_overrides})
        model_cfg = get_preset(plan.preset, **plan.model_overrides)
        self.plan = plan
        if resolve_device(plan.device).type == "cpu":
            leave_a_core_free()
        self.engine = Engine(model_cfg, sched_cfg, device=plan.device, seed=plan.seed or 0)
        context = min(model_cfg.max_seq_len, self.engine.kv.allocator.capacity_tokens)
        self.served = ServedModel(plan.model_name, ByteTokenizer(model_cfg.vocab_size), context)
        self.url = ""
        self.counts = {"finished": 0, "rejected": 0, "cancelled": 0}
        self._next_id = 0
        self._live: dict[int, int] = {}  # request id -> when it was submitted (monotonic ns)
        self._idle = asyncio.Event()
        self._writer: TraceWriter | None = None
        self._runner: web.AppRunner | None = None
        self._created = int(time.time())

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> str:
        """Listen, open the trace, start the engine, serve; returns the base URL."""
        # Bound first: a port in use fails before any file exists, and the header records the real port.
        sock = _listen(self.plan.host, self.plan.port)
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
        header = SessionHeader(time.monotonic_ns(), time.time_ns(), self._session_config(port))
        self._writer = TraceWriter(self.plan.trace, header)
        self.engine.recorder = self._writer
        self.engine.start()
        app = web.Application(middlewares=[_openai_errors], client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                                     shutdown_timeout=_SHUTDOWN_S)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        return self.url

    async def close(self) -> ServeResult:
        """Cancel what is in flight, stop the engine and close the trace; safe to call twice."""
        try:
            # The engine first: it ends every request as cancelled, so open streams finish at once,
            # and a request still arriving is refused ("engine stopped") rather than left hanging.
            await asyncio.to_thread(self.engine.stop)
        finally:
            if self._runner is not None:
                await self._runner.cleanup()
            if self._live:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), _SHUTDOWN_S)
            if self._writer is not None:
                self._writer.close()
        dropped = self._writer.dropped if self._writer is not None else 0
        return ServeResult(self.plan.trace, self.engine.ticks, self._next_id, self.counts["finished"],
                           self.counts["rejected"], self.counts["cancelled"], self.engine.tokens_generated,
                           dropped)

    async def __aenter__(self) -> str:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def run(self, stop: asyncio.Event, on_ready: Callable[[str], None] | None = None) -> ServeResult:
        """Serve until `stop` is set or the engine fails."""
        await self.start()
        if on_ready is not None:
            on_ready(self.url)
        watchdog = asyncio.create_task(stop_when_engine_fails(self.engine, stop))
        try:
            await stop.wait()
        finally:
            watchdog.cancel()
        return await self.close()

    def _session_config(self, port: int) -> dict[str, Any]:
        plan = self.plan
        more: dict[str, Any] = {"serve": {"host": plan.host, "port": port, "model": plan.model_name}}
        if plan.workload:
            more["workload"] = load_workload(plan.workload).to_dict()
        return session_config(self.engine, plan.preset, plan.seed, **more)

    # --- handlers ----------------------------------------------------------------------------------

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self.served.card(self._created)]})

    async def _completions(self, http: web.Request) -> web.StreamResponse:
        req = parse_completion(await http.read(), self.served)
        sink = self._submit(req)
        try:
            if req.stream:
                return await self._stream(http, req, sink)
            await sink.done
            if sink.status != "finished":
                raise _unfinished(sink)
            body = completion(_cid(sink), self._created, self.served.name,
                              self.served.tokenizer.decode(sink.tokens), len(req.prompt), len(sink.tokens))
            return web.json_response(body)
        finally:
            # reached when the client went away (the handler is cancelled) or a write to it failed
            if sink.status is None:
                self.engine.cancel(sink.request_id)

    async def _stream(self, http: web.Request, req: CompletionRequest, sink: StreamingSink) -> web.StreamResponse:
        tokens = sink.stream()
        first = await anext(tokens, None)
        if first is None:
            raise _unfinished(sink)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(http)
        cid, model, decode = _cid(sink), self.served.name, self.served.tokenizer.decode_token
        await _event(response, chunk(cid, self._created, model, decode(first)))
        async for token in tokens:
            await _event(response, chunk(cid, self._created, model, decode(token)))
        if sink.status == "finished":
            await _event(response, chunk(cid, self._created, model, "", "length"))
            if req.include_usage:
                await _event(response, usage_chunk(cid, self._created, model, len(req.prompt), len(sink.tokens)))
            await response.write(b"data: [DONE]\n\n")
        else:
            # cut off by the server (shutting down): an error event and no [DONE], as OpenAI does
            await _event(response, _unfinished(sink).body())
        await response.write_eof()
        return response

    # --- a request's life, in the trace --------------------------------------------------------------

    def _submit(self, req: CompletionRequest) -> StreamingSink:
        rid = self._next_id
        self._next_id += 1
        sink = StreamingSink(asyncio.get_running_loop(), rid, on_first_token=self._first_token,
                             on_done=self._done)
        sent_ns = time.monotonic_ns()
        self._live[rid] = sent_ns
        self._idle.clear()
        self.engine.recorder.emit(RequestEvent(rid, "arrive", sent_ns, prompt_tokens=len(req.prompt)))
        self.engine.submit(Request(rid, req.prompt, req.max_tokens, sink))
        return sink

    def _first_token(self, sink: StreamingSink) -> None:
        self.engine.recorder.emit(RequestEvent(sink.request_id, "first_token", sink.token_ns[0], output_tokens=1))

    def _done(self, sink: StreamingSink) -> None:
        sent_ns = self._live.pop(sink.request_id)
        status = sink.status  # set before on_done is called
        self.counts[status] += 1
        token_us = (np.asarray(sink.token_ns, dtype=np.int64) - sent_ns) // 1000
        self.engine.recorder.emit(RequestEvent(
            sink.request_id, "finish", sink.finish_ns, output_tokens=len(sink.tokens), status=status,
            reason=sink.reason, token_us=np.minimum(token_us, _MAX_TOKEN_US).astype(np.uint32),
        ))
        if not self._live:
            self._idle.set()


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _cid(sink: StreamingSink) -> str:
    return f"cmpl-{sink.request_id}"


def _unfinished(sink: StreamingSink) -> ApiError:
    if sink.status == "rejected":
        return rejection(sink.reason)
    return ApiError(503, f"The request was cancelled: {sink.reason}.", type="server_error", code="cancelled")


async def _event(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")


@web.middleware
async def _openai_errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Every error as OpenAI's JSON body, aiohttp's own (unknown path, wrong method, body too large) too."""
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response(exc.body(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = f"{exc.reason}: {request.method} {request.path}"
        return web.json_response(ApiError(exc.status, message).body(), status=exc.status)


def serve(plan: ServePlan, on_ready: Callable[[str], None] | None = None) -> ServeResult:
    """Check, build and serve until SIGINT or SIGTERM; the trace is closed on every way out."""
    server = Server(plan)

    async def main() -> ServeResult:
        with stop_on_signals() as stop:
            return await server.run(stop, on_ready)

    return asyncio.run(main())
