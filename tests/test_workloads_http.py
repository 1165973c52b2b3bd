"""Load over HTTP against a small OpenAI-style streaming server written for the test."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from engine.errors import ConfigError
from engine.request import Request
from tracer.recorder import ListRecorder
from workloads.http_target import HttpTarget
from workloads.loadgen import run_load
from workloads.spec import parse_workload
from workloads.stream import StreamingSink


class FakeServer:
    """Streams one SSE chunk per token every `gap_s`; answers 429 to max_tokens == 99."""

    def __init__(self, gap_s: float = 0.002):
        self.gap_s = gap_s
        self.bodies: list[dict] = []
        self.disconnects = 0

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def handle(self, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"POST /v1/completions HTTP/1.1")
        lines = head.decode().lower().split("\r\n")
        length = int(next(h for h in lines if h.startswith("content-length")).split(":")[1])
        body = json.loads(await reader.readexactly(length))
        self.bodies.append(body)
        try:
            if body["max_tokens"] == 99:
                err = json.dumps({"error": {"message": "queue full", "type": "busy"}}).encode()
                head = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: %d\r\n\r\n" % len(err)
                writer.write(head + err)
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            for i in range(body["max_tokens"]):
                chunk = {"choices": [{"text": f"t{i}", "index": 0}]}
                event = b"data: " + json.dumps(chunk).encode() + b"\n\n"
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                await asyncio.sleep(self.gap_s)
            done = b"data: [DONE]\n\n"
            writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
            await writer.drain()
        except ConnectionError:
            self.disconnects += 1
        finally:
            writer.close()


def workload(output: int = 5):
    return parse_workload(
        f"""
        seed = 1
        duration_s = 0.3
        [arrivals]
        kind = "poisson"
        rate = 60.0
        [prompt]
        kind = "uniform"
        min = 2
        max = 6
        [output]
        kind = "fixed"
        value = {output}
        """,
        "http test",
    )


async def test_run_load_over_http():
    server = FakeServer()
    async with server as url:
        target = HttpTarget(url)
        recorder = ListRecorder()
        result = await run_load(target, workload(), recorder, vocab_size=64)
        await target.aclose()
    assert len(result.records) == len(server.bodies) > 5
    assert all(r.status == "finished" and r.output_tokens == 5 for r in result.records)
    for body in server.bodies:
        assert body["stream"] and body["max_tokens"] == 5
        assert all(0 <= t < 64 for t in body["prompt"])
    m = result.metrics()
    assert m.finished == len(result.records) and m.itl.p50 > 0


async def test_server_error_becomes_a_rejection_with_its_message():
    async with FakeServer() as url:
        target = HttpTarget(url)
        sink = StreamingSink(asyncio.get_running_loop(), 0)
        target.submit(Request(0, [1, 2], 99, sink))
        await sink.done
    assert sink.status == "rejected" and sink.reason == "HttpError: HTTP 429: queue full"


async def test_unreachable_server_rejects():
    async with FakeServer() as url:
        pass  # closed again: nothing listens on that port now
    target = HttpTarget(url)
    sink = StreamingSink(asyncio.get_running_loop(), 0)
    target.submit(Request(0, [1], 3, sink))
    await sink.done
    assert sink.status == "rejected" and "Error" in sink.reason


async def test_stop_cancels_streams_and_closes_connections():
    server = FakeServer(gap_s=0.05)
    async with server as url:
        target = HttpTarget(url)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.2, stop.set)
        spec = dataclasses.replace(workload(output=100), duration_s=0.0)
        result = await run_load(target, spec, ListRecorder(), vocab_size=64, stop=stop)
        await asyncio.sleep(0.2)  # let the server notice the closed connections
    assert result.records and {r.status for r in result.records} == {"cancelled"}
    assert {r.reason for r in result.records} == {"cancelled by the client"}
    assert server.disconnects == len(result.records)


def test_target_url_must_be_http():
    with pytest.raises(ConfigError, match="http://host"):
        HttpTarget("https://example.org")
