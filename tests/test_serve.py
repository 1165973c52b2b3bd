"""`tickscope serve` over real HTTP on 127.0.0.1 (ephemeral ports): completions streamed and not,
text and token ids, sampling parameters accepted and ignored, every malformed request, a client
walking away (cancelled in the trace), a full queue (429, streamed or not), record --target, and a
served trace closed cleanly by SIGINT and by SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import polars as pl
import pytest
import pytest_asyncio

import tracer
from engine.errors import ConfigError
from tui.cli import main as cli_main
from workloads.distributions import RandomStreams, RequestMaker
from workloads.serve import ServePlan, Server
from workloads.spec import load_workload

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPO = Path(__file__).resolve().parent.parent


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory):
    server = Server(ServePlan(trace=tmp_path_factory.mktemp("serve") / "serve.msgpack", port=0, device="cpu"))
    async with server:
        yield server


@pytest_asyncio.fixture(loop_scope="module")
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def complete(http: aiohttp.ClientSession, server: Server, **body) -> tuple[int, dict]:
    async with http.post(server.url + "/v1/completions", json=body) as r:
        return r.status, await r.json()


async def stream_events(http: aiohttp.ClientSession, server: Server, **body) -> list[bytes]:
    async with http.post(server.url + "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        return [line[6:].strip() for line in (await r.read()).split(b"\n\n") if line.startswith(b"data: ")]


def served_request(server: Server, request_id: int) -> dict:
    """One request's row in the server's own trace (flushed; the trace stays open)."""
    assert server._writer.flush(10)
    (row,) = tracer.load(server.plan.trace).requests.filter(request=request_id).to_dicts()
    return row


async def settle(server: Server, cancelled: int) -> None:
    """Wait (bounded) until the server has seen `cancelled` cancellations end."""
    for _ in range(500):
        if server.counts["cancelled"] >= cancelled:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"cancellations seen: {server.counts['cancelled']}, expected {cancelled}")


# --- completions -----------------------------------------------------------------------------------


async def test_models_lists_the_served_model(server, http):
    async with http.get(server.url + "/v1/models") as r:
        listing = await r.json()
    assert r.status == 200 and listing["object"] == "list"
    (card,) = listing["data"]
    assert card["id"] == "tickscope" and card["vocab_size"] == 512 and card["max_model_len"] == 1024


async def test_text_and_token_ids_give_the_same_greedy_completion(server, http):
    status, by_text = await complete(http, server, model="tickscope", prompt="Hello", max_tokens=6)
    assert status == 200 and by_text["object"] == "text_completion"
    assert by_text["usage"] == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
    (choice,) = by_text["choices"]
    assert choice["finish_reason"] == "length" and choice["text"]
    _, by_ids = await complete(http, server, prompt=list(b"Hello"), max_tokens=6)
    assert by_ids["choices"][0]["text"] == choice["text"]


async def test_stream_is_one_chunk_per_token_and_matches_the_plain_answer(server, http):
    prompt = [5, 6, 7, 8]
    _, plain = await complete(http, server, prompt=prompt, max_tokens=7)
    events = await stream_events(http, server, prompt=prompt, max_tokens=7, stream_options={"include_usage": True})
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    texts = [c["choices"][0]["text"] for c in chunks if c["choices"] and c["choices"][0]["text"]]
    assert len(texts) == 7 and "".join(texts) == plain["choices"][0]["text"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 7


async def test_sampling_parameters_are_accepted_and_ignored(server, http):
    # greedy decoding, run to max_tokens: temperature, top_p and stop change nothing, n/best_of of 1 pass
    _, plain = await complete(http, server, prompt=[3, 1, 4, 1, 5], max_tokens=8)
    ignored = {
        "temperature": 1.7,
        "top_p": 0.05,
        "stop": [plain["choices"][0]["text"][:1], "\n"],
        "n": 1,
        "best_of": 1,
        "presence_penalty": 1.0,
        "seed": 7,
    }
    status, body = await complete(http, server, prompt=[3, 1, 4, 1, 5], max_tokens=8, **ignored)
    assert status == 200 and body["usage"]["completion_tokens"] == 8
    assert body["choices"][0]["text"] == plain["choices"][0]["text"] and body["choices"][0]["finish_reason"] == "length"
    events = await stream_events(http, server, prompt=[3, 1, 4, 1, 5], max_tokens=8, temperature=0.0, stop="x")
    texts = [json.loads(e)["choices"][0]["text"] for e in events[:-1]]
    assert "".join(texts) == plain["choices"][0]["text"] and len([t for t in texts if t]) == 8


BAD_REQUESTS = [
    pytest.param(b"{not json", 400, None, id="bad-json"),
    pytest.param(b"[1, 2]", 400, None, id="not-an-object"),
    pytest.param(b'{"max_tokens": 4}', 400, "prompt", id="missing-prompt"),
    pytest.param(b'{"prompt": ""}', 400, "prompt", id="empty-prompt"),
    pytest.param(b'{"prompt": [1, 512]}', 400, "prompt", id="token-id-past-vocab"),
    pytest.param(b'{"prompt": ["a", "b"]}', 400, "prompt", id="batch-of-prompts"),
    pytest.param(b'{"prompt": {"a": 1}}', 400, "prompt", id="prompt-of-wrong-type"),
    pytest.param(b'{"prompt": "hi", "max_tokens": 0}', 400, "max_tokens", id="max-tokens-zero"),
    pytest.param(b'{"prompt": "hi", "max_tokens": "8"}', 400, "max_tokens", id="max-tokens-string"),
    pytest.param(b'{"prompt": "hi", "max_tokens": 5000}', 400, "max_tokens", id="past-context"),
    pytest.param(b'{"prompt": "hi", "n": 2}', 400, "n", id="n-above-1"),
    pytest.param(b'{"prompt": "hi", "n": 2, "stream": true}', 400, "n", id="n-above-1-streamed"),
    pytest.param(b'{"prompt": "hi", "best_of": 3}', 400, "best_of", id="best-of-above-1"),
    pytest.param(b'{"prompt": "hi", "stream": "yes"}', 400, "stream", id="stream-not-bool"),
    pytest.param(b'{"prompt": "hi", "model": "gpt-4"}', 404, "model", id="unknown-model"),
]


@pytest.mark.parametrize("body, status, param", BAD_REQUESTS)
async def test_malformed_requests_get_openai_errors(server, http, body, status, param):
    before = server._next_id
    async with http.post(server.url + "/v1/completions", data=body, headers={"Content-Type": "application/json"}) as r:
        error = (await r.json())["error"]
    assert r.status == status and error["type"] == "invalid_request_error"
    assert error["param"] == param and error["message"]
    assert server._next_id == before  # refused at the door: never submitted, never in the trace


@pytest.mark.parametrize("method, path, status", [("GET", "/v1/nothing", 404), ("GET", "/v1/completions", 405)])
async def test_unknown_paths_and_methods_answer_json_errors(server, http, method, path, status):
    async with http.request(method, server.url + path) as r:
        assert r.status == status and (await r.json())["error"]["message"]


async def test_a_client_leaving_mid_stream_cancels_its_request_and_frees_its_kv(server, http):
    cancelled, rid = server.counts["cancelled"], server._next_id
    async with http.post(
        server.url + "/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 1000, "stream": True}
    ) as r:
        assert r.status == 200
        await r.content.readuntil(b"\n\n")
        await r.content.readuntil(b"\n\n")
        r.close()  # walk away with almost all of the 1000 tokens still to come
    await settle(server, cancelled + 1)
    engine = server.engine
    assert not engine.scheduler.running and not engine.scheduler.waiting
    assert engine.kv.allocator.used_tokens == 0
    # and the trace says so: cancelled by the client, after the two tokens read and before the 1000th
    row = served_request(server, rid)
    assert (row["status"], row["reason"]) == ("cancelled", "cancelled by client")
    assert 2 <= row["output_tokens"] < 1000 and row["prompt_tokens"] == 3


async def test_a_client_giving_up_while_waiting_cancels_too(server, http):
    cancelled, rid = server.counts["cancelled"], server._next_id
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(complete(http, server, prompt=[9, 9], max_tokens=1000), 0.2)
    await settle(server, cancelled + 1)
    assert server.engine.kv.allocator.used_tokens == 0
    row = served_request(server, rid)
    assert (row["status"], row["reason"]) == ("cancelled", "cancelled by client") and row["output_tokens"] < 1000


async def test_record_target_drives_the_server_and_writes_the_client_trace(server, tmp_path):
    out = tmp_path / "client.msgpack"
    before = server._next_id
    argv = ["record", "--target", server.url, "--workload", "smoke", "--duration", "1", "--quiet", "--out", str(out)]
    assert await asyncio.to_thread(cli_main, argv) == 0
    client = tracer.load(out)
    assert client.header.config["target"] == server.url and client.ticks.height == 0
    reqs = client.requests
    assert reqs.height > 0 and reqs["status"].to_list() == ["finished"] * reqs.height
    assert reqs["ttft_s"].null_count() == 0
    # every request the client sent reached the engine, and each got exactly the tokens it asked
    # for: the workload's seed makes the same requests again, in the order the client numbered them
    assert server._next_id - before == reqs.height
    spec = load_workload("smoke")
    maker = RequestMaker(spec, RandomStreams.from_seed(spec.seed), server.served.tokenizer.vocab_size)
    asked = [maker.next() for _ in range(reqs.height)]
    reqs = reqs.sort("request")
    assert reqs["request"].to_list() == list(range(reqs.height))
    assert reqs["prompt_tokens"].to_list() == [len(prompt) for prompt, _ in asked]
    assert reqs["output_tokens"].to_list() == [max_new for _, max_new in asked]
    # the server's side of the same requests (numbered in the order they reached it) agrees
    assert server._writer.flush(10)
    served = tracer.load(server.plan.trace).requests.filter(pl.col("request") >= before)
    assert served["status"].to_list() == ["finished"] * reqs.height
    assert sorted(zip(served["prompt_tokens"], served["output_tokens"])) == sorted(
        (len(prompt), max_new) for prompt, max_new in asked
    )


async def test_record_target_refuses_engine_knobs(server, tmp_path, capsys):
    argv = ["record", "--target", server.url, "--max-seqs", "4", "--out", str(tmp_path / "x.msgpack")]
    assert await asyncio.to_thread(cli_main, argv) == 2
    assert "tickscope serve" in capsys.readouterr().err and not (tmp_path / "x.msgpack").exists()


# --- a server of its own -----------------------------------------------------------------------------


async def test_a_full_queue_answers_429_and_shutdown_cancels_what_waits(tmp_path):
    # a window that never closes within the test: the first request waits in a queue of one
    plan = ServePlan(
        trace=tmp_path / "full.msgpack",
        port=0,
        device="cpu",
        scheduler_overrides={"policy": "window", "window_ms": 600_000.0, "queue_limit": 1},
    )
    server = Server(plan)
    async with aiohttp.ClientSession() as http:
        await server.start()
        try:
            waiting = asyncio.create_task(complete(http, server, prompt=[1], max_tokens=4))
            for _ in range(500):
                if server.engine.scheduler.waiting:
                    break
                await asyncio.sleep(0.01)
            status, body = await complete(http, server, prompt=[1], max_tokens=4)
            assert status == 429 and body["error"]["code"] == "queue_full"
            # a streamed request is answered 429 too, as JSON, not as an error inside a 200 stream
            async with http.post(
                server.url + "/v1/completions", json={"prompt": [1], "max_tokens": 4, "stream": True}
            ) as r:
                assert r.status == 429 and r.headers["Content-Type"].startswith("application/json")
                body = await r.json()
            assert body["error"]["code"] == "queue_full" and body["error"]["type"] == "rate_limit_error"
        finally:
            await server.close()
        status, body = await waiting
        assert status == 503 and body["error"]["code"] == "cancelled"
    trace = tracer.load(plan.trace)
    assert sorted(trace.requests["status"].to_list()) == ["cancelled", "rejected", "rejected"]
    assert trace.requests.filter(status="rejected")["reason"].to_list() == ["queue full"] * 2


async def start_serve_cli(trace: Path) -> tuple[asyncio.subprocess.Process, str]:
    """`tickscope serve` in a child process on an ephemeral port; returns it and its base URL."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tui.cli",
        "serve",
        "--port",
        "0",
        "--device",
        "cpu",
        "--trace",
        str(trace),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    line = (await asyncio.wait_for(child.stdout.readline(), 120)).decode()
    if "serving http://127.0.0.1:" not in line:
        child.kill()
        raise AssertionError((await child.stderr.read()).decode())
    return child, line.split()[1].removesuffix("/v1")


async def test_serve_cli_traces_requests_and_sigint_closes_the_trace(tmp_path):
    trace = tmp_path / "served.msgpack"
    child, url = await start_serve_cli(trace)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 3}) as r,
        ):
            assert r.status == 200 and (await r.json())["usage"]["completion_tokens"] == 3
        child.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(child.wait(), 30) == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    with tracer.open_trace(trace) as reader:
        assert reader.closed_cleanly
    loaded = tracer.load(trace)
    port = int(url.rsplit(":", 1)[1])
    assert loaded.header.config["serve"] == {
        "host": "127.0.0.1",
        "port": port,
        "model": "tickscope",
        "api_key": False,
        "max_body_bytes": 4 << 20,
        "max_prompt_tokens": 1023,  # the context less the one token a request must leave room for
    }
    assert loaded.ticks.height >= 3
    (row,) = loaded.requests.to_dicts()
    assert row["status"] == "finished" and row["prompt_tokens"] == 2 and row["output_tokens"] == 3
    assert row["admit_s"] is not None and row["ttft_s"] is not None


async def test_sigterm_mid_stream_ends_serve_cleanly_and_closes_the_trace(tmp_path):
    trace = tmp_path / "terminated.msgpack"
    child, url = await start_serve_cli(trace)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(url + "/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 1000, "stream": True}) as r,
        ):
            assert r.status == 200
            await r.content.readuntil(b"\n\n")
            await r.content.readuntil(b"\n\n")
            child.send_signal(signal.SIGTERM)  # with the stream most of its 1000 tokens short
            rest = await asyncio.wait_for(r.content.read(), 30)
        assert await asyncio.wait_for(child.wait(), 30) == 0
        stderr = (await child.stderr.read()).decode()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert "Traceback" not in stderr, stderr
    # the stream was cut off as OpenAI does it: an error event, and no [DONE]
    events = [e[6:] for e in rest.split(b"\n\n") if e.startswith(b"data: ")]
    assert b"[DONE]" not in events
    assert json.loads(events[-1])["error"]["code"] == "cancelled"
    with tracer.open_trace(trace) as reader:
        assert reader.closed_cleanly and not reader.problems
    (row,) = tracer.load(trace).requests.to_dicts()
    assert (row["status"], row["reason"]) == ("cancelled", "engine stopped")
    assert 2 <= row["output_tokens"] < 1000


async def test_a_port_in_use_is_a_config_error_that_leaves_no_trace(server, tmp_path):
    port = int(server.url.rsplit(":", 1)[1])
    second = Server(ServePlan(trace=tmp_path / "second.msgpack", port=port, device="cpu"))
    with pytest.raises(ConfigError, match="cannot listen"):
        await second.start()
    assert not (tmp_path / "second.msgpack").exists()
