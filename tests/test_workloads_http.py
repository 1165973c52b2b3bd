"""Load over HTTP (`HttpTarget`) against the real `tickscope serve` front (workloads/serve.py), in
this process on 127.0.0.1 with an ephemeral port: what the client sends is what the server's
engine runs, and what either side ends is recorded so on both."""

from __future__ import annotations

import asyncio
import dataclasses
import socket

import pytest
import pytest_asyncio

import tracer
from engine.errors import ConfigError
from engine.request import Request
from tracer.recorder import ListRecorder
from workloads.http_target import HttpTarget
from workloads.loadgen import run_load
from workloads.serve import ServePlan, Server
from workloads.spec import parse_workload
from workloads.stream import StreamingSink

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory):
    server = Server(ServePlan(trace=tmp_path_factory.mktemp("http") / "served.msgpack", port=0, device="cpu"))
    async with server:
        yield server


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


def served_requests(server: Server, first_id: int):
    """The server's own trace (flushed, still open) of the requests it numbered from `first_id` on."""
    assert server._writer.flush(10)
    reqs = tracer.load(server.plan.trace).requests
    return reqs.filter(reqs["request"] >= first_id).sort("request")


async def settle(server: Server) -> None:
    """Wait (bounded) until every request the server has numbered has ended there (each once) and
    its engine holds none."""
    for _ in range(500):
        idle = not (server.engine.scheduler.running or server.engine.scheduler.waiting)
        if idle and not server._live and sum(server.counts.values()) == server._next_id:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"requests live at the server: {len(server._live)}, ended: {server.counts}")


async def test_run_load_over_http(server):
    before = server._next_id
    target = HttpTarget(server.url)
    recorder = ListRecorder()
    result = await run_load(target, workload(), recorder, vocab_size=64)
    await target.aclose()
    records = sorted(result.records, key=lambda r: r.id)
    assert len(records) > 5
    assert all(r.status == "finished" and r.output_tokens == r.max_new_tokens == 5 for r in records)
    m = result.metrics()
    assert m.finished == len(records) and m.itl.p50 > 0
    # the server got every request, each with the prompt the client made and the length it asked,
    # and its engine generated exactly that many tokens for it
    await settle(server)
    assert server._next_id - before == len(records)
    served = served_requests(server, before)
    assert served["status"].to_list() == ["finished"] * len(records)
    assert served["output_tokens"].to_list() == [5] * len(records)
    assert sorted(served["prompt_tokens"].to_list()) == sorted(r.prompt_tokens for r in records)
    assert all(2 <= r.prompt_tokens <= 6 for r in records)


async def test_server_refusal_becomes_a_rejection_with_its_message(server):
    target = HttpTarget(server.url)
    sink = StreamingSink(asyncio.get_running_loop(), 0)
    target.submit(Request(0, [1, 2], 5000, sink))  # past the served context of 1024 tokens
    await sink.done
    assert sink.status == "rejected" and sink.tokens == []
    assert sink.reason.startswith("HttpError: HTTP 400: This model's maximum context length is 1024 tokens.")


async def test_a_full_queue_rejects_a_streamed_request_with_429(tmp_path):
    # a window that never closes within the test: the first request waits in a queue of one
    plan = ServePlan(
        trace=tmp_path / "full.msgpack",
        port=0,
        device="cpu",
        scheduler_overrides={"policy": "window", "window_ms": 600_000.0, "queue_limit": 1},
    )
    server = Server(plan)
    async with server as url:
        target = HttpTarget(url)  # every request it sends is a streamed one
        loop = asyncio.get_running_loop()
        waiting, refused = StreamingSink(loop, 0), StreamingSink(loop, 1)
        target.submit(Request(0, [1], 4, waiting))
        for _ in range(500):
            if server.engine.scheduler.waiting:
                break
            await asyncio.sleep(0.01)
        target.submit(Request(1, [1], 4, refused))
        await refused.done
        assert refused.status == "rejected"
        assert refused.reason == "HttpError: HTTP 429: The server's queue is full; retry later."
        assert waiting.status is None  # still queued, behind the window
        await target.aclose()
    assert waiting.status == "cancelled"
    trace = tracer.load(plan.trace)
    assert sorted(trace.requests["status"].to_list()) == ["cancelled", "rejected"]
    assert trace.requests.filter(status="rejected")["reason"].to_list() == ["queue full"]


async def test_unreachable_server_rejects():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = HttpTarget(f"http://127.0.0.1:{port}")
    sink = StreamingSink(asyncio.get_running_loop(), 0)
    target.submit(Request(0, [1], 3, sink))
    await sink.done
    assert sink.status == "rejected" and sink.reason.startswith("ConnectionRefusedError")


async def test_stop_cancels_streams_and_the_server_records_the_disconnects(server):
    before = server._next_id
    target = HttpTarget(server.url)
    stop = asyncio.Event()

    async def stop_once_all_are_streaming() -> None:
        # every request numbered by the server (so in its engine) before the client walks away
        for _ in range(1000):
            if server._next_id - before == 8 and len(server._live) == 8:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        stop.set()

    watcher = asyncio.create_task(stop_once_all_are_streaming())
    spec = dataclasses.replace(workload(output=1000), duration_s=0.0, requests=8)  # none can finish
    result = await run_load(target, spec, ListRecorder(), vocab_size=64, stop=stop)
    await watcher
    records = result.records
    assert len(records) == 8 and {r.status for r in records} == {"cancelled"}
    assert {r.reason for r in records} == {"cancelled by the client"}
    # each closed connection reached the engine as a cancellation: recorded in the server's trace as
    # cancelled, with the tokens it had made (at least those the client got), and its KV freed
    await settle(server)
    served = served_requests(server, before)
    assert served.height == server._next_id - before == 8
    assert served["status"].to_list() == ["cancelled"] * 8
    assert set(served["reason"].to_list()) == {"cancelled by client"}
    assert all(0 <= n < 1000 for n in served["output_tokens"].to_list())
    assert served["output_tokens"].sum() >= sum(r.output_tokens for r in records)
    assert server.engine.kv.allocator.used_tokens == 0


@pytest.mark.asyncio(loop_scope="module")
async def test_target_url_must_be_http():
    with pytest.raises(ConfigError, match="http://host"):
        HttpTarget("https://example.org")
