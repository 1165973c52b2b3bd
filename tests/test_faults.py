"""Faults at every door (README, "When things go wrong"), one injected per kind: a full disk, an
exception in the engine's tick, a pipeline rank killed, the target server of `record --target` (a
real `tickscope serve`) killed, and abusive clients of `serve`. Each ends the same way: one line
that says what happened and what was kept, a non-zero exit (or the server staying up), and a closed
trace in which every request has a final status: submitted = finished + rejected + cancelled + failed."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import multiprocessing
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import torch.distributed as dist
from prometheus_client.parser import text_string_to_metric_families

import tracer
import workloads.serve as serve_module
from engine.stages import StageExecutor
from tracer.errors import TraceWriteError
from tui.cli import main
from workloads.errors import RunFailed
from workloads.serve import MAX_CONNECTIONS, ServePlan, Server

# Steady load that always has requests in flight: 64-token answers arriving 20 a second. The runs
# are asked for 30 s; each fault must end them long before.
BUSY = """\
description = "faults: steady load that keeps requests in flight"
seed = 1
duration_s = 30.0

[arrivals]
kind = "poisson"
rate = 20.0

[prompt]
kind = "uniform"
min = 4
max = 12

[output]
kind = "fixed"
value = 64

[scheduler]
policy = "continuous"
max_seqs = 16
"""
ASKED_S = 30
ENDS_WITHIN_S = 15  # a fault's run ends well before the 30 s it was asked for


@pytest.fixture
def busy(tmp_path: Path) -> str:
    path = tmp_path / "busy.toml"
    path.write_text(BUSY)
    return str(path)


def record_args(out: Path, workload: str, *more: str) -> list[str]:
    return [
        "record",
        "--quiet",
        "--out",
        str(out),
        "--workload",
        workload,
        "--device",
        "cpu",
        "--duration",
        str(ASKED_S),
        *more,
    ]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def accounted(path: Path) -> dict:
    """The trace reads undamaged and closed, and every request in it ended: the summary's counts."""
    with tracer.open_trace(path) as reader:
        assert reader.closed_cleanly
    trace = tracer.load(path)
    assert trace.problems == []
    s = tracer.summarize(trace)
    assert s["requests_unfinished"] == 0
    assert s["requests_submitted"] == (
        s["requests_finished"] + s["requests_rejected"] + s["requests_cancelled"] + s["requests_failed"]
    )
    return s


def marks(path: Path) -> list[tuple[int, str]]:
    return [(row["tick"], row["text"]) for row in tracer.load(path).marks.iter_rows(named=True)]


# --- a full disk ----------------------------------------------------------------------------------


class SmallDisk:
    """A directory that holds `capacity` bytes in all, as a small filesystem does: os.write to a file
    in it writes what fits, then raises ENOSPC. Files written other ways count, and removing or
    truncating one frees its room."""

    def __init__(self, folder: Path, capacity: int) -> None:
        self.folder, self.capacity = folder, capacity
        self.real_write = os.write

    def __call__(self, fd: int, data: bytes | memoryview) -> int:
        st = os.fstat(fd)
        files = [p.stat() for p in self.folder.iterdir() if p.is_file()]
        if not any(os.path.samestat(st, f) for f in files):
            return self.real_write(fd, data)
        room = self.capacity - sum(f.st_size for f in files)
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real_write(fd, bytes(memoryview(data)[:room]))


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch) -> Path:
    """A 64 KiB disk, as in the issue: a folder whose files may hold 64 KiB together."""
    folder = tmp_path / "disk"
    folder.mkdir()
    monkeypatch.setattr(os, "write", SmallDisk(folder, 64 << 10))
    return folder


def test_a_full_disk_stops_record_at_once_and_ends_the_trace(small_disk, busy, capsys):
    out = small_disk / "full.msgpack"
    started = time.monotonic()
    assert main(record_args(out, busy)) == 1
    assert time.monotonic() - started < ENDS_WITHIN_S
    line = one_line(capsys.readouterr().err)
    held = re.fullmatch(
        rf"tickscope record: error: {re.escape(str(out))}: disk full at byte ([\d,]+): the trace "
        r"holds ticks 0–(\d+) and (\d+) requests; the rest of the run was not recorded",
        line,
    )
    assert held, line
    at, last_tick, requests = (int(g.replace(",", "")) for g in held.groups())
    assert 0 < at <= 64 << 10
    s = accounted(out)
    # it holds what the line says, no more: the run was not recorded past the failed write
    assert (s["ticks"], s["requests_submitted"]) == (last_tick + 1, requests)
    assert s["requests_failed"] > 0  # in flight when the disk filled: their ends were not recorded
    assert [text for _, text in marks(out)] == [f"disk full at byte {at:,}: the rest of the run was not recorded"]
    assert [p.name for p in small_disk.iterdir()] == [out.name]  # the room it kept is given back


def test_a_disk_too_full_even_for_the_ending_leaves_whole_frames(tmp_path, monkeypatch):
    """No room for the reserve either: the writer still cuts the file back to whole frames."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    monkeypatch.setattr(os, "write", SmallDisk(folder, 6 << 10))
    path = folder / "t.msgpack"
    writer = tracer.TraceWriter(
        path, tracer.SessionHeader(time.monotonic_ns(), time.time_ns(), {}), flush_interval_s=0.01
    )
    rid = 0
    while writer.error is None and rid < 100_000:
        now = time.monotonic_ns()
        writer.emit(tracer.RequestEvent(rid, "arrive", now, prompt_tokens=3))
        writer.emit(tracer.MarkEvent(now, -1, "x" * 100))  # bulk that fills the disk
        rid += 1
        time.sleep(0.0005)
    with pytest.raises(TraceWriteError, match=r"disk full at byte [\d,]+: the trace holds \d+ requests"):
        writer.close()
    assert [p.name for p in folder.iterdir()] == [path.name]  # the reserve never fitted
    assert tracer.load(path).problems == []  # no torn frame: it ends where a drain ended


async def test_a_full_disk_stops_serve_and_ends_the_trace(small_disk):
    server = Server(ServePlan(trace=small_disk / "served.msgpack", port=0, device="cpu"))
    run = asyncio.create_task(server.run(asyncio.Event()))
    while not server.url:
        await asyncio.sleep(0.01)
    answers = []
    async with aiohttp.ClientSession() as http:
        with contextlib.suppress(aiohttp.ClientError):  # refused, once serve has stopped
            while not run.done():  # until the disk fills and serve stops
                async with http.post(server.url + "/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 32}) as r:
                    answers.append(r.status)
    with pytest.raises(
        TraceWriteError,
        match=r"^.*served\.msgpack: disk full at byte [\d,]+: the trace holds ticks "
        r"0–\d+ and \d+ requests; the rest of the run was not recorded$",
    ):
        await asyncio.wait_for(run, 30)
    # answered until it stopped: in full, or 503 for what the stop cut off
    assert answers[0] == 200 and set(answers) <= {200, 503}
    accounted(server.plan.trace)


# --- an exception in the engine's tick --------------------------------------------------------------

FAIL_AT = 100


@pytest.fixture
def tick_raises(monkeypatch) -> None:
    """Tick FAIL_AT raises, as out-of-memory on a big prefill would: a test hook that patches the
    engine's forward pass here, with no code for it in the engine."""
    launch = StageExecutor.launch

    def failing(self, prepared, tick, tick_start, sampling):
        if tick == FAIL_AT:
            raise RuntimeError("injected fault")
        return launch(self, prepared, tick, tick_start, sampling)

    monkeypatch.setattr(StageExecutor, "launch", failing)


def test_an_engine_exception_fails_what_is_in_flight_and_ends_record(tick_raises, busy, tmp_path, capsys):
    out = tmp_path / "engine.msgpack"
    started = time.monotonic()
    assert main(record_args(out, busy)) == 1
    assert time.monotonic() - started < ENDS_WITHIN_S
    line = one_line(capsys.readouterr().err)
    fault = rf"the engine failed at tick {FAIL_AT}: RuntimeError: injected fault \(at engine/engine\.py:\d+\)"
    held = re.fullmatch(
        rf"tickscope record: error: ({fault}): (\d+) requests? in flight failed; "
        rf"{re.escape(str(out))} holds ticks 0–{FAIL_AT - 1} and (\d+) requests?",
        line,
    )
    assert held, line
    said, failed, requests = held.group(1), int(held.group(2)), int(held.group(3))
    s = accounted(out)
    assert (s["ticks"], s["requests_submitted"], s["requests_failed"]) == (FAIL_AT, requests, failed)
    assert failed > 0
    assert marks(out) == [(FAIL_AT, said)]  # the mark names the tick, in the same words
    reasons = tracer.load(out).requests.filter(status="failed")["reason"].unique().to_list()
    assert reasons == [said]


async def test_an_engine_exception_answers_500_and_stops_serve(tmp_path, monkeypatch):
    server = Server(ServePlan(trace=tmp_path / "served.msgpack", port=0, device="cpu"))
    launch = server.engine.executor.launch

    def failing(prepared, tick, tick_start, sampling):  # the tick both requests are in raises
        if len(prepared.chunks) > 1:
            raise RuntimeError("injected fault")
        return launch(prepared, tick, tick_start, sampling)

    monkeypatch.setattr(server.engine.executor, "launch", failing)
    run = asyncio.create_task(server.run(asyncio.Event()))
    while not server.url:
        await asyncio.sleep(0.01)
    async with aiohttp.ClientSession() as http:

        async def ask(**body) -> tuple[int, dict]:
            async with http.post(server.url + "/v1/completions", json={"max_tokens": 200, **body}) as r:
                return r.status, await r.json()

        plain = asyncio.create_task(ask(prompt=[1, 2, 3]))
        while not server.engine.scheduler.running:  # the first is decoding alone...
            await asyncio.sleep(0.005)
        answers = [await ask(prompt=[4, 5], stream=True), await plain]  # ...until the second joins it
    with pytest.raises(RunFailed) as stopped:
        await asyncio.wait_for(run, 30)
    line = str(stopped.value)
    held = re.fullmatch(
        r"the engine failed at tick (\d+): RuntimeError: injected fault \(at engine/engine\.py:\d+\): "
        r"2 requests in flight failed; .*served\.msgpack holds (.*) and 2 requests",
        line,
    )
    assert held, line
    tick = int(held.group(1))
    assert held.group(2) == ("tick 0" if tick == 1 else f"ticks 0–{tick - 1}")  # what ran before it
    for status, body in answers:  # OpenAI's error body, streamed or not (the stream had sent nothing)
        assert status == 500 and body["error"]["type"] == "server_error" and body["error"]["code"] == "engine_failed"
        assert body["error"]["message"].startswith("The request failed: the engine failed at tick ")
    s = accounted(server.plan.trace)
    assert (s["requests_submitted"], s["requests_failed"]) == (2, 2)
    assert [text for _, text in marks(server.plan.trace)] == [line.split(": 2 requests")[0]]


# --- a pipeline rank killed -----------------------------------------------------------------------


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="no gloo in this torch build")
def test_a_killed_rank_is_named_and_the_run_ends(busy, tmp_path, capfd):
    out = tmp_path / "ranks.msgpack"
    killed: list[float] = []

    def kill_rank_1() -> None:  # once it has been serving its stage a while
        deadline = time.monotonic() + 120
        while not (out.exists() and out.stat().st_size > 16 << 10) and time.monotonic() < deadline:
            time.sleep(0.02)
        (rank_1,) = multiprocessing.active_children()
        os.kill(rank_1.pid, signal.SIGKILL)
        killed.append(time.monotonic())

    killer = threading.Thread(target=kill_rank_1, daemon=True)
    killer.start()
    assert main(record_args(out, busy, "--stages", "2", "--distributed")) == 1
    noticed_s = time.monotonic() - killed[0]
    killer.join()
    assert noticed_s < 5  # noticed at its next message, the run wound up and the trace closed
    assert multiprocessing.active_children() == []  # and no rank is left behind
    line = one_line(capfd.readouterr().err)  # the ranks' output too: only rank 0's line
    held = re.fullmatch(
        r"tickscope record: error: (the engine failed at tick (\d+): rank 1 \(stage 1, layers 2–3\) "
        rf"is gone \(killed by signal 9\)): (\d+) requests? in flight failed; {re.escape(str(out))} "
        r"holds ticks 0–(\d+) and (\d+) requests?",
        line,
    )
    assert held, line
    said, tick, failed, last, requests = held.group(1), *(int(g) for g in held.groups()[1:])
    assert last == tick - 1
    s = accounted(out)
    assert (s["ticks"], s["requests_submitted"], s["requests_failed"]) == (tick, requests, failed)
    assert failed > 0 and marks(out) == [(tick, said)]


# --- the target of record --target vanishing ------------------------------------------------------


class ServeProcess:
    """A real `tickscope serve` in a child process on an ephemeral port, with the busy workload's
    scheduler; `vanish` kills it with SIGKILL, as a server that crashed: the kernel drops every
    connection it held."""

    def __init__(self, trace: Path, workload: str) -> None:
        command = [sys.executable, "-m", "tui.cli", "serve", "--port", "0", "--device", "cpu"]
        self.child = subprocess.Popen(
            [*command, "--workload", workload, "--trace", str(trace)],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.child.stdout is not None and self.child.stderr is not None
        line = self.child.stdout.readline()  # "serving URL/v1 ...", or nothing when it failed to start
        assert line.startswith("serving http://"), self.child.stderr.read()
        self.url = line.split()[1].removesuffix("/v1")

    def running(self) -> float:
        """Requests the server is generating for, from its own /metrics (0 while it does not answer)."""
        try:
            with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        (family,) = (f for f in text_string_to_metric_families(text) if f.name == "vllm:num_requests_running")
        return family.samples[0].value

    def vanish(self) -> None:
        self.child.kill()

    def close(self) -> None:
        self.child.kill()
        self.child.communicate(timeout=30)


@pytest.fixture
def target(tmp_path: Path, busy: str) -> Iterator[ServeProcess]:
    target = ServeProcess(tmp_path / "served.msgpack", busy)
    yield target
    target.close()


def test_a_vanished_target_fails_what_was_in_flight_and_ends_record(target, busy, tmp_path, capsys):
    out = tmp_path / "client.msgpack"
    vanished: list[float] = []

    def vanish_once_streaming() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and target.running() < 5:
            time.sleep(0.01)
        target.vanish()
        vanished.append(time.monotonic())

    threading.Thread(target=vanish_once_streaming, daemon=True).start()
    assert main(record_args(out, busy, "--target", target.url)) == 1
    assert time.monotonic() - vanished[0] < 5
    line = one_line(capsys.readouterr().err)
    held = re.fullmatch(
        rf"tickscope record: error: the target {re.escape(target.url[len('http://') :])} went away "
        rf"\(\w+Error\b.*\): (\d+) requests? in flight failed; {re.escape(str(out))} holds (\d+) "
        r"requests?",
        line,
    )
    assert held, line
    failed, requests = int(held.group(1)), int(held.group(2))
    s = accounted(out)
    assert (s["requests_submitted"], s["requests_failed"]) == (requests, failed)
    # most of the five or more the server was generating for when it died (one may have just finished)
    assert failed >= 3


# --- serve under abuse ------------------------------------------------------------------------------


@pytest.fixture
async def served(request, tmp_path, monkeypatch) -> AsyncIterator[Server]:
    """The real serve front on 127.0.0.1, its door's timeouts short for the test (0.5 s; the head's as
    the test's indirect parameter says, if it has one); once the test is done it is closed, and its
    trace accounted for."""
    monkeypatch.setattr(serve_module, "HEAD_TIMEOUT_S", getattr(request, "param", 0.5))
    monkeypatch.setattr(serve_module, "BODY_TIMEOUT_S", 0.5)
    server = Server(ServePlan(trace=tmp_path / "abused.msgpack", port=0, device="cpu"))
    await server.start()
    try:
        yield server
    finally:
        await server.close()
    accounted(server.plan.trace)


async def still_serves(server: Server) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.url + "/v1/completions", json={"prompt": [1, 2], "max_tokens": 3}) as r,
    ):
        assert r.status == 200 and (await r.json())["usage"]["completion_tokens"] == 3


async def connect(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def test_json_nested_too_deeply_is_a_400(served):
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            served.url + "/v1/completions",
            data=b"[" * 100_000 + b"]" * 100_000,
            headers={"Content-Type": "application/json"},
        ) as r,
    ):
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"] == "The JSON body of your request is nested too deeply."
    await still_serves(served)


@pytest.mark.parametrize(
    "sent", [b"", b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le"], ids=["nothing", "half-a-head"]
)
async def test_a_client_slow_to_send_its_head_is_closed(served, sent):
    reader, writer = await connect(served)
    writer.write(sent)
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, with nothing to answer
    assert time.monotonic() - started >= 0.4  # at HEAD_TIMEOUT_S, not at once
    writer.close()
    await still_serves(served)


async def test_a_client_slow_to_send_its_body_gets_a_408(served):
    reader, writer = await connect(served)
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"prompt": [1,'
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 408 ")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    assert json.loads(await reader.readexactly(length))["error"]["code"] == "timeout"
    writer.close()
    await still_serves(served)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) << 10 for line in status if line.startswith("VmRSS:"))


IDLE = 2000  # idle connections opened at once


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors and memory in /proc")
# a head timeout long enough to open them all before the first is closed for sending nothing
@pytest.mark.parametrize("served", [5.0], indirect=True, ids=["head-timeout-5s"])
async def test_thousands_of_idle_connections_stay_within_bounds(served):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = _fds() + IDLE + MAX_CONNECTIONS + 256  # this test's ends of them too
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"needs {need} file descriptors; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))

    def held() -> int:
        return len(served._runner.server.connections)

    fds, rss = _fds(), _rss()
    try:
        clients = [await connect(served) for _ in range(IDLE)]
        await asyncio.sleep(0.2)  # the last ones accepted
        assert held() == MAX_CONNECTIONS  # the bound: the rest were answered 503 and closed
        # descriptors: ours, and the server's for the connections it holds, no more; memory: under
        # 10 KiB for each it holds and 8 KiB for each of ours
        assert _fds() - fds <= IDLE + MAX_CONNECTIONS
        assert _rss() - rss < MAX_CONNECTIONS * (10 << 10) + IDLE * (8 << 10)
        turned_away = await asyncio.wait_for(clients[-1][0].read(), 5)
        assert turned_away.startswith(b"HTTP/1.1 503 ") and b'"too_many_connections"' in turned_away
        # the held ones, idle, are closed once their HEAD_TIMEOUT_S is up
        for _ in range(200):
            if not held():
                break
            await asyncio.sleep(0.05)
        assert held() == 0
        for _, writer in clients:
            writer.close()
        await still_serves(served)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
