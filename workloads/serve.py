"""`tickscope serve`: OpenAI-compatible completions and chat completions in front of a traced engine.

Real clients and load tools (curl, the `openai` package, `tickscope record --target`, vLLM's
benchmark, AIPerf, GuideLLM) drive the engine over HTTP while every tick is traced; `/health`
answers their probes and `/metrics` their scrapers, in vLLM's names (workloads/server_metrics.py,
read from the same events the trace gets). The front writes a request's
client-side moments as the load generator does — `arrive` when the request is submitted,
`first_token`, and `finish` with every token's time — so a trace from `serve` reads like one from
`record`; the engine adds its ticks, admissions and preemptions to the same file.

A client that goes away cancels its request: aiohttp cancels the handler when the connection
drops (`handler_cancellation`), and the handler's `finally` asks the engine to cancel, which frees
the request's KV at its next tick. A stream is only answered with 200 once its first token (or its
rejection) is known, so a full queue is a proper 429 rather than an error inside a stream.

Faults (README, "When things go wrong"): a tick that raises ends the requests in flight as failed,
answered 500 in OpenAI's error body (an error event, in a stream already under way), and stops the
server: `close` raises RunFailed once the trace is closed. A trace the disk no longer takes stops it
too (the writer's TraceWriteError). At the door, abusive clients are bounded: at most MAX_CONNECTIONS
open connections (past them a 503 and a close), HEAD_TIMEOUT_S for a connection to send a whole
request head, BODY_TIMEOUT_S for the body after it (408), a 400 for JSON nested too deeply; the plan's
body limit (413) and prompt limit (400). With an API key, /v1/* wants it as OpenAI clients send it
(401 otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import ipaddress
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.typedefs import Handler

from engine.engine import Engine, resolve_device
from engine.errors import ConfigError, EngineFailed
from engine.request import Request
from engine.scheduler import SchedulerConfig
from tracer.events import RequestEvent, SessionHeader
from tracer.writer import TraceWriter
from workloads.chat import PlainChatTemplate
from workloads.errors import RunFailed
from workloads.hf_tokenizer import checkpoint_tokenizer
from workloads.openai_api import (
    MAX_BODY_BYTES,
    ApiError,
    CompletionRequest,
    ServedModel,
    chunk,
    completion,
    parse_chat,
    parse_completion,
    rejection,
    unauthorized,
    usage_chunk,
)
from workloads.run import fault_line, leave_a_core_free, model_of, session_config, stop_on_fault
from workloads.server_metrics import CONTENT_TYPE, ServerMetrics, model_shape
from workloads.signals import stop_on_signals
from workloads.spec import load_workload
from workloads.stream import StreamingSink
from workloads.tokenizer import BYTE_TOKENS, ByteTokenizer

_MAX_TOKEN_US = 2**32 - 1  # token_us is uint32 (as in the load generator)
# At shutdown: how long in-flight handlers get to send their last bytes once the engine has
# cancelled them, and how long the engine's cancellations get to reach the event loop.
_SHUTDOWN_S = 2.0
# Bounds on what one client can hold. Each open connection costs a file descriptor and, idle, about
# 10 KiB (README, "When things go wrong").
DEFAULT_MODEL_NAME = "tickscope"  # the served name of a random-weights preset
MAX_CONNECTIONS = 1024  # open at once; past this a new connection is answered 503 and closed
HEAD_TIMEOUT_S = 10.0  # a connection that has not sent a whole request head by then is closed
BODY_TIMEOUT_S = 10.0  # a body not whole this long after its head is answered 408
_OWN_FDS = 256  # descriptors kept for the rest of the process (the trace, torch, the engine's threads)


@dataclass
class ServePlan:
    trace: Path
    preset: str = "tiny"
    workload: str | None = None  # a workload whose [scheduler] knobs to use; None: the engine's defaults
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (the URL handed to `on_ready`, with the served name, says which)
    device: str = "auto"
    seed: int | None = None  # weights from this seed (default 0)
    model_name: str | None = None  # what clients ask for; None: the checkpoint's directory name, or DEFAULT_MODEL_NAME
    scheduler_overrides: dict[str, Any] = field(default_factory=dict)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    api_key: str | None = None  # clients must send `Authorization: Bearer KEY` to /v1/*; None: no key
    max_body_bytes: int = MAX_BODY_BYTES  # a larger request body is answered 413
    max_prompt_tokens: int | None = None  # a longer prompt is answered 400; None: as the context allows
    model: str | None = None  # a checkpoint directory: its weights instead of the preset's random ones


@dataclass(frozen=True)
class ServeResult:
    trace: Path
    ticks: int
    requests: int
    finished: int
    rejected: int
    cancelled: int
    failed: int
    tokens_generated: int
    dropped_events: int


class Server:
    """Building it checks the plan and allocates the model but opens no file and no socket;
    `start` opens both, `close` ends every request, stops the engine and closes the trace."""

    def __init__(self, plan: ServePlan) -> None:
        if plan.max_body_bytes < 1:
            raise ConfigError(f"the request body limit must be at least 1 byte, not {plan.max_body_bytes}")
        if plan.max_prompt_tokens is not None and plan.max_prompt_tokens < 1:
            raise ConfigError(f"the prompt limit must be at least 1 token, not {plan.max_prompt_tokens}")
        if plan.api_key == "":
            raise ConfigError("the API key is empty")
        knobs = load_workload(plan.workload).scheduler.overrides() if plan.workload else {}
        sched_cfg = SchedulerConfig(**{**knobs, **plan.scheduler_overrides})
        model_cfg, checkpoint = model_of(plan.preset, plan.model, plan.model_overrides)
        self.plan = plan
        if resolve_device(plan.device).type == "cpu":
            leave_a_core_free()
        self.engine = Engine(model_cfg, sched_cfg, device=plan.device, seed=plan.seed or 0, checkpoint=checkpoint)
        context = min(model_cfg.max_seq_len, self.engine.kv.allocator.capacity_tokens)
        own = checkpoint_tokenizer(checkpoint)
        if own is None and model_cfg.vocab_size < BYTE_TOKENS:
            raise ConfigError(f"model '{model_cfg.name}' has no tokenizer.json and too few ids for bytes")
        self.served = ServedModel(
            plan.model_name or (checkpoint.name if checkpoint else DEFAULT_MODEL_NAME),
            own or ByteTokenizer(model_cfg.vocab_size),
            context,
            own.chat_template if own and own.chat_template else PlainChatTemplate(),
            plan.max_prompt_tokens,
        )
        self._stop_tokens = frozenset(self.served.tokenizer.eos_token_ids)  # the model's EOS ends a request
        self.metrics: ServerMetrics | None = None
        self.url = ""
        self.counts = {"finished": 0, "rejected": 0, "cancelled": 0, "failed": 0}
        self._next_id = 0
        self._live: dict[int, int] = {}  # request id -> when it was submitted (monotonic ns)
        self._idle = asyncio.Event()
        self._writer: TraceWriter | None = None
        self._runner: web.AppRunner | None = None
        self._door: _Door | None = None
        self._listener: asyncio.Server | None = None
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
        # every event goes on to the trace through the metrics, which read it on the way
        allocator = self.engine.kv.allocator
        blocks = (allocator.num_blocks, allocator.block_size)
        self.metrics = ServerMetrics(self._writer, self.served.name, model_shape(header.config), blocks)
        self.engine.recorder = self.metrics
        self.engine.start()
        app = web.Application(
            middlewares=[self._head_arrived, _openai_errors, self._authorized],
            client_max_size=self.plan.max_body_bytes,
        )
        app.router.add_post("/v1/completions", functools.partial(self._completions, parse=parse_completion))
        app.router.add_post("/v1/chat/completions", functools.partial(self._completions, parse=parse_chat))
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        # keepalive_timeout: between two requests of a connection, as long as before its first
        self._runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=_SHUTDOWN_S,
            keepalive_timeout=HEAD_TIMEOUT_S,
        )
        await self._runner.setup()
        server = self._runner.server
        assert server is not None  # made by setup()
        self._door = _Door(server, _connection_limit())
        self._listener = await asyncio.get_running_loop().create_server(self._door, sock=sock)
        return self.url

    async def close(self) -> ServeResult:
        """Cancel what is in flight, stop the engine and close the trace; safe to call twice. Raises
        RunFailed when a tick had failed, TraceWriteError when the trace could not be written."""
        failure: EngineFailed | None = None
        try:
            # The engine first: it ends every request as cancelled, so open streams finish at once,
            # and a request still arriving is refused ("engine stopped") rather than left hanging.
            await asyncio.to_thread(self.engine.stop)
        except EngineFailed as exc:
            failure = exc
        finally:
            if self._listener is not None:
                self._listener.close()  # no new connections; runner.cleanup ends the open ones
            if self._runner is not None:
                await self._runner.cleanup()
            if self._live:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), _SHUTDOWN_S)
            if self._writer is not None:
                self._writer.close()
        if failure is not None and self._writer is not None:
            raise RunFailed(fault_line(failure, self.counts["failed"], self._writer)) from failure
        dropped = self._writer.dropped if self._writer is not None else 0
        return ServeResult(
            self.plan.trace,
            self.engine.ticks,
            self._next_id,
            self.counts["finished"],
            self.counts["rejected"],
            self.counts["cancelled"],
            self.counts["failed"],
            self.engine.tokens_generated,
            dropped,
        )

    async def __aenter__(self) -> str:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def run(self, stop: asyncio.Event, on_ready: Callable[[str, str], None] | None = None) -> ServeResult:
        """Serve until `stop` is set, the engine fails or the trace cannot be written."""
        await self.start()
        if on_ready is not None:
            on_ready(self.url, self.served.name)
        assert self._writer is not None
        watchdog = asyncio.create_task(stop_on_fault(stop, self.engine, self._writer))
        try:
            await stop.wait()
        finally:
            watchdog.cancel()
        return await self.close()

    def _session_config(self, port: int) -> dict[str, Any]:
        plan = self.plan
        more: dict[str, Any] = {
            "serve": {
                "host": plan.host,
                "port": port,
                "model": self.served.name,
                "api_key": plan.api_key is not None,  # whether one was required; never the key itself
                "max_body_bytes": plan.max_body_bytes,
                "max_prompt_tokens": self.served.prompt_limit,
            }
        }
        if plan.workload:
            more["workload"] = load_workload(plan.workload).to_dict()
        return session_config(self.engine, None if plan.model else plan.preset, plan.seed, **more)

    # --- handlers ----------------------------------------------------------------------------------

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self.served.card(self._created)]})

    async def _health(self, _: web.Request) -> web.Response:
        # up while the engine ticks: 503 once a tick has failed (the server is about to stop)
        if self.engine.error is not None:
            raise ApiError(503, f"The engine failed: {self.engine.error}.", type="server_error", code="engine_failed")
        return web.Response(status=200)

    async def _metrics(self, _: web.Request) -> web.Response:
        assert self.metrics is not None  # made by start()
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    @web.middleware
    async def _authorized(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """With an API key, /v1/* answers only requests that send it as OpenAI clients do; /health
        and /metrics stay open, as vLLM leaves them, for probes and scrapers."""
        key = self.plan.api_key
        if key is not None and request.path.startswith("/v1/"):
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
                error = unauthorized(bool(scheme))
                return web.json_response(error.body(), status=error.status, headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    @web.middleware
    async def _head_arrived(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # A request's head is whole: its connection met the door's deadline.
        if self._door is not None:
            self._door.head_arrived(request.protocol)
        return await handler(request)

    async def _completions(
        self, http: web.Request, parse: Callable[[bytes, ServedModel], CompletionRequest]
    ) -> web.StreamResponse:
        try:
            body = await asyncio.wait_for(http.read(), BODY_TIMEOUT_S)
        except TimeoutError:
            raise ApiError(
                408, f"The request body did not arrive within {BODY_TIMEOUT_S:g} s.", code="timeout"
            ) from None
        req = parse(body, self.served)
        sink = self._submit(req)
        try:
            if req.stream:
                return await self._stream(http, req, sink)
            await sink.done
            if sink.status != "finished":
                raise _unfinished(sink)
            answer = completion(
                req.endpoint,
                _cid(req, sink),
                self._created,
                self.served.name,
                self.served.tokenizer.decode(sink.tokens),
                len(req.prompt),
                len(sink.tokens),
                sink.reason,
            )
            return web.json_response(answer)
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
        cid, model, text = _cid(req, sink), self.served.name, self.served.tokenizer.stream()
        shape = functools.partial(chunk, req.endpoint, cid, self._created, model, include_usage=req.include_usage)
        if req.endpoint == "chat":
            await _event(response, shape(None))  # the role first, as OpenAI's chat stream opens
        # a checkpoint's token may hold part of a character: it is sent with the token that ends it
        if piece := text.step(first):
            await _event(response, shape(piece))
        async for token in tokens:
            if piece := text.step(token):
                await _event(response, shape(piece))
        if sink.status == "finished":
            await _event(response, shape("", sink.reason))
            if req.include_usage:
                counts = len(req.prompt), len(sink.tokens)
                await _event(response, usage_chunk(req.endpoint, cid, self._created, model, *counts))
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
        sink = StreamingSink(asyncio.get_running_loop(), rid, on_first_token=self._first_token, on_done=self._done)
        sent_ns = time.monotonic_ns()
        self._live[rid] = sent_ns
        self._idle.clear()
        self.engine.recorder.emit(RequestEvent(rid, "arrive", sent_ns, prompt_tokens=len(req.prompt)))
        self.engine.submit(Request(rid, req.prompt, req.max_tokens, sink, req.sampling, self._stop_tokens))
        return sink

    def _first_token(self, sink: StreamingSink) -> None:
        self.engine.recorder.emit(RequestEvent(sink.request_id, "first_token", sink.token_ns[0], output_tokens=1))

    def _done(self, sink: StreamingSink) -> None:
        sent_ns = self._live.pop(sink.request_id)
        status = sink.status
        assert status is not None  # set before on_done is called
        self.counts[status] += 1
        token_us = (np.asarray(sink.token_ns, dtype=np.int64) - sent_ns) // 1000
        self.engine.recorder.emit(
            RequestEvent(
                sink.request_id,
                "finish",
                sink.finish_ns,
                output_tokens=len(sink.tokens),
                status=status,
                reason=sink.reason,
                token_us=np.minimum(token_us, _MAX_TOKEN_US).astype(np.uint32),
            )
        )
        if not self._live:
            self._idle.set()


class _Door:
    """The listening socket's protocol factory: aiohttp's request handlers for up to `limit` open
    connections, each closed unless it sends a whole request head within HEAD_TIMEOUT_S (its later
    requests are held to the same by aiohttp's keepalive_timeout); past the limit, `_Busy`."""

    def __init__(self, server: web.Server, limit: int) -> None:
        self._server, self._limit = server, limit
        self._fresh = 0  # handlers handed out that are not yet among server.connections
        # handler -> its head deadline; held until the head arrives or the deadline passes
        self._deadlines: dict[Any, asyncio.TimerHandle] = {}

    def __call__(self) -> asyncio.Protocol:
        if len(self._server.connections) + self._fresh >= self._limit:
            return _Busy()
        loop = asyncio.get_running_loop()
        handler = self._server()
        # asyncio runs a new transport's connection_made one loop iteration later (call_soon): until
        # the iteration after that the handler is counted here, so a burst of accepts cannot overshoot.
        self._fresh += 1
        loop.call_soon(loop.call_soon, self._made)
        self._deadlines[handler] = loop.call_later(HEAD_TIMEOUT_S, self._expire, handler)
        return handler

    def _made(self) -> None:
        self._fresh -= 1

    def _expire(self, handler: Any) -> None:
        del self._deadlines[handler]
        handler.force_close()  # nothing to answer: no request has arrived on it

    def head_arrived(self, handler: Any) -> None:
        timer = self._deadlines.pop(handler, None)
        if timer is not None:
            timer.cancel()


class _Busy(asyncio.Protocol):
    """A connection past MAX_CONNECTIONS: answered 503 in OpenAI's error body, and closed."""

    RESPONSE = json.dumps(
        ApiError(
            503,
            "The server has too many open connections; retry later.",
            type="server_error",
            code="too_many_connections",
        ).body()
    ).encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(self.RESPONSE), self.RESPONSE)
        )
        transport.close()


def _connection_limit() -> int:
    """MAX_CONNECTIONS, raising this process's descriptor limit (ulimit -n) to fit them if it may,
    or fewer when it may not."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to fit under
        return MAX_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = MAX_CONNECTIONS + _OWN_FDS
    if soft != resource.RLIM_INFINITY and soft < want:
        raised = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    return MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else max(1, min(MAX_CONNECTIONS, soft - _OWN_FDS))


def reachable_from_outside(host: str) -> bool:
    """Whether listening on `host` lets other machines connect: any address it names that is not a
    loopback one (an unresolvable name counts as outside; listening will say what is wrong)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except OSError:
        return True
    return not all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _cid(req: CompletionRequest, sink: StreamingSink) -> str:
    return f"{'chatcmpl' if req.endpoint == 'chat' else 'cmpl'}-{sink.request_id}"


def _unfinished(sink: StreamingSink) -> ApiError:
    if sink.status == "rejected":
        return rejection(sink.reason)
    if sink.status == "failed":
        return ApiError(500, f"The request failed: {sink.reason}.", type="server_error", code="engine_failed")
    return ApiError(503, f"The request was cancelled: {sink.reason}.", type="server_error", code="cancelled")


async def _event(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")


@web.middleware
async def _openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as OpenAI's JSON body, aiohttp's own (unknown path, wrong method, body too large) too."""
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response(exc.body(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # a body too large says the limit and the size (aiohttp's text); the rest, what was asked
        detail = exc.text if exc.status == 413 and exc.text else f"{request.method} {request.path}"
        message = f"{exc.reason}: {detail}"
        return web.json_response(ApiError(exc.status, message).body(), status=exc.status)


def serve(plan: ServePlan, on_ready: Callable[[str, str], None] | None = None) -> ServeResult:
    """Check, build and serve until SIGINT or SIGTERM; the trace is closed on every way out."""
    server = Server(plan)

    async def main() -> ServeResult:
        with stop_on_signals() as stop:
            return await server.run(stop, on_ready)

    return asyncio.run(main())
