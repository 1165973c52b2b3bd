"""What OpenAI clients and load tools ask of `tickscope serve`, against the real front on 127.0.0.1:
chat completions streamed and not (with usage counts equal to the trace's tokens), the chat
template, `max_completion_tokens`, `/health`, the API key, the body and prompt limits, and the
command line's key, limits and warning."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

import tracer
from engine.errors import ConfigError
from engine.request import GREEDY, SamplingParams
from tui.cli import main as cli_main
from workloads.chat import PlainChatTemplate
from workloads.errors import RunFailed
from workloads.openai_api import API_KEY_ENV, ApiError, ServedModel, parse_chat, parse_completion
from workloads.serve import ServePlan, Server, reachable_from_outside
from workloads.tokenizer import ByteTokenizer

on_module_loop = pytest.mark.asyncio(loop_scope="module")  # the async tests share the module's server

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory):
    plan = ServePlan(
        trace=tmp_path_factory.mktemp("chat") / "served.msgpack",
        port=0,
        device="cpu",
        api_key=KEY,
        max_body_bytes=4096,
        max_prompt_tokens=64,
    )
    server = Server(plan)
    async with server:
        yield server


@pytest_asyncio.fixture(loop_scope="module")
async def http():
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, body: dict | bytes) -> tuple[int, dict]:
    kwargs = (
        {"data": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    )
    async with http.post(url, **kwargs) as r:
        return r.status, await r.json()


async def sse(http: aiohttp.ClientSession, url: str, body: dict) -> list[dict | str]:
    """A stream's events, parsed as an OpenAI client reads them: `data: ` lines, `[DONE]` last."""
    async with http.post(url, json={**body, "stream": True}) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        raw = (await r.read()).decode()
    events = [block.removeprefix("data: ") for block in raw.split("\n\n") if block.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


def trace_row(server: Server, request_id: int) -> dict:
    assert server._writer.flush(10)
    (row,) = tracer.load(server.plan.trace).requests.filter(request=request_id).to_dicts()
    return row


CONVERSATION = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "experts"}]},
]


# --- the chat template and the request parser, as plain data ------------------------------------------


def test_the_plain_template_writes_role_and_content_per_line():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\nthere"}]
    assert PlainChatTemplate().render(messages) == "system: Be brief.\nuser: Hi\nthere\nassistant:"


SERVED = ServedModel("m", ByteTokenizer(512), context_tokens=100)


def test_chat_prompt_is_the_rendered_conversation_and_the_default_fills_the_context():
    req = parse_chat(json.dumps({"messages": CONVERSATION}).encode(), SERVED)
    text = "system: You are brief.\nuser: Hello, experts\nassistant:"
    assert req.prompt == SERVED.tokenizer.encode(text) and req.endpoint == "chat"
    assert req.max_tokens == 100 - len(text)  # no limit given: as many as the context leaves


@pytest.mark.parametrize("parse", [parse_completion, parse_chat])
def test_max_completion_tokens_is_read_and_wins_over_max_tokens(parse):
    base = {"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}
    read = lambda **kw: parse(json.dumps({**base, **kw}).encode(), SERVED).max_tokens  # noqa: E731
    assert read(max_completion_tokens=7) == 7
    assert read(max_tokens=5, max_completion_tokens=3) == 3
    assert read(max_tokens=5, max_completion_tokens=None) == 5
    with pytest.raises(ApiError) as bad:
        read(max_completion_tokens=0)
    assert bad.value.param == "max_completion_tokens"


def test_sampling_fields_are_read_and_greedy_is_the_default():
    read = lambda **kw: parse_completion(json.dumps({"prompt": "hi", **kw}).encode(), SERVED).sampling  # noqa: E731
    assert read() == GREEDY and read(temperature=0) == GREEDY and read(temperature=None, top_p=0.5) == GREEDY
    assert read(temperature=0.7, top_p=0.9, top_k=40, seed=3) == SamplingParams(0.7, 0.9, 40, 3)
    assert read(temperature=1, top_k=-1, seed=1).top_k == 0  # vLLM's "all"
    assert read(temperature=1).seed != read(temperature=1).seed  # no seed: a fresh one each time


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"temperature": -1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 1, "top_p": 0}, "top_p"),
        ({"temperature": 1, "top_k": 2.5}, "top_k"),
        ({"temperature": 1, "seed": "x"}, "seed"),
    ],
)
def test_bad_sampling_fields_are_400_naming_the_field(fields, param):
    with pytest.raises(ApiError) as bad:
        parse_chat(json.dumps({"messages": [{"role": "user", "content": "hi"}], **fields}).encode(), SERVED)
    assert bad.value.status == 400 and bad.value.param == param


BAD_CHATS = [
    pytest.param({}, "messages", id="no-messages"),
    pytest.param({"messages": []}, "messages", id="empty-messages"),
    pytest.param({"messages": "hi"}, "messages", id="messages-not-a-list"),
    pytest.param({"messages": [{"role": "wizard", "content": "hi"}]}, "messages", id="unknown-role"),
    pytest.param({"messages": [{"role": "user"}]}, "messages", id="no-content"),
    pytest.param(
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        "messages",
        id="image-part",
    ),
    pytest.param({"messages": [{"role": "user", "content": "x" * 70}]}, "messages", id="prompt-past-the-limit"),
    pytest.param({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}, "max_tokens", id="past-ctx"),
    pytest.param({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n", id="n-above-1"),
    pytest.param({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4o"}, "model", id="unknown-model"),
]


@on_module_loop
@pytest.mark.parametrize("body, param", BAD_CHATS)
async def test_malformed_chats_get_openai_errors_and_never_reach_the_engine(server, http, body, param):
    before = server._next_id
    status, answer = await post(http, server.url + "/v1/chat/completions", body)
    assert status == (404 if param == "model" else 400)
    error = answer["error"]
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"
    assert server._next_id == before


# --- chat over HTTP ------------------------------------------------------------------------------------


@on_module_loop
async def test_chat_answers_one_message_with_usage_equal_to_the_trace(server, http):
    rid = server._next_id
    body = {"model": "tickscope", "messages": CONVERSATION, "max_completion_tokens": 6}
    status, answer = await post(http, server.url + "/v1/chat/completions", body)
    assert status == 200 and answer["object"] == "chat.completion" and answer["id"] == f"chatcmpl-{rid}"
    (choice,) = answer["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    # one printable character per token: counting characters counts tokens
    content = choice["message"]["content"]
    assert len(content) == 6 and content.isprintable()
    prompt = server.served.tokenizer.encode(PlainChatTemplate().render(parse_messages(CONVERSATION)))
    assert answer["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": 6, "total_tokens": len(prompt) + 6}
    row = trace_row(server, rid)
    assert (row["status"], row["prompt_tokens"], row["output_tokens"]) == ("finished", len(prompt), 6)


def parse_messages(messages: list[dict]) -> list[dict[str, str]]:
    """The conversation as the template reads it: text parts joined."""
    flat = []
    for m in messages:
        content = m["content"] if isinstance(m["content"], str) else "".join(p["text"] for p in m["content"])
        flat.append({"role": m["role"], "content": content})
    return flat


@on_module_loop
async def test_chat_stream_opens_with_the_role_then_one_token_per_chunk(server, http):
    url = server.url + "/v1/chat/completions"
    body = {"messages": CONVERSATION, "max_tokens": 5}
    _, plain = await post(http, url, body)
    rid = server._next_id
    events = await sse(http, url, {**body, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and {c["id"] for c in chunks} == {
        f"chatcmpl-{rid}"
    }
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    texts = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert len(texts) == 5 and all(len(t) == 1 for t in texts)
    assert "".join(texts) == plain["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert all(c["usage"] is None for c in chunks[:-1])  # OpenAI's shape while include_usage waits
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    row = trace_row(server, rid)
    assert row["output_tokens"] == 5 and row["prompt_tokens"] == chunks[-1]["usage"]["prompt_tokens"]


@on_module_loop
async def test_a_conversation_carries_the_answer_back_as_one_token_per_character(server, http):
    """A second turn sends the first answer back: each of its characters is again one token."""
    url = server.url + "/v1/chat/completions"
    first = [{"role": "user", "content": "Hi"}]
    _, answer = await post(http, url, {"messages": first, "max_tokens": 8})
    reply = answer["choices"][0]["message"]["content"]
    second = [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "More"}]
    _, again = await post(http, url, {"messages": second, "max_tokens": 1})
    ascii_text = "user: Hi\nassistant: \nuser: More\nassistant:"  # the template around the reply
    assert again["usage"]["prompt_tokens"] == len(ascii_text) + 8


@on_module_loop
async def test_a_seeded_request_draws_the_same_answer_and_greedy_is_repeatable(server, http):
    url = server.url + "/v1/completions"
    seeded = {"prompt": "Tell me", "max_tokens": 12, "temperature": 1.5, "seed": 11}
    answers = [(await post(http, url, seeded))[1]["choices"][0]["text"] for _ in range(2)]
    other = (await post(http, url, {**seeded, "seed": 12}))[1]["choices"][0]["text"]
    greedy = [(await post(http, url, {"prompt": "Tell me", "max_tokens": 12}))[1]["choices"][0]["text"] for _ in "ab"]
    assert answers[0] == answers[1] and greedy[0] == greedy[1]
    assert len({answers[0], other, greedy[0]}) == 3  # 12 draws at T=1.5 over 512 tokens: never all alike


@on_module_loop
async def test_completions_honour_max_completion_tokens(server, http):
    status, answer = await post(http, server.url + "/v1/completions", {"prompt": "Hello", "max_completion_tokens": 4})
    assert status == 200 and answer["usage"]["completion_tokens"] == 4 and len(answer["choices"][0]["text"]) == 4


@on_module_loop
async def test_health_answers_200_while_the_engine_runs(server):
    async with aiohttp.ClientSession() as anonymous, anonymous.get(server.url + "/health") as r:  # no key needed
        assert r.status == 200


# --- the API key -----------------------------------------------------------------------------------------


@on_module_loop
@pytest.mark.parametrize(
    "headers, given",
    [({}, False), ({"Authorization": "Bearer wrong"}, True), ({"Authorization": KEY}, True)],
    ids=["none", "wrong-key", "no-bearer"],
)
@pytest.mark.parametrize("method, path", [("GET", "/v1/models"), ("POST", "/v1/chat/completions")])
async def test_v1_without_the_key_is_401_in_openai_shape(server, headers, given, method, path):
    before = server._next_id
    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.request(method, server.url + path, headers=headers, json={"messages": CONVERSATION}) as r,
    ):
        answer = await r.json()
    assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert answer["error"]["code"] == "invalid_api_key" and answer["error"]["type"] == "invalid_request_error"
    assert ("Incorrect" in answer["error"]["message"]) == given
    assert server._next_id == before


@on_module_loop
async def test_metrics_stay_open_without_the_key(server):
    async with aiohttp.ClientSession() as anonymous, anonymous.get(server.url + "/metrics") as r:
        assert r.status == 200 and "vllm:num_requests_running" in await r.text()


# --- limits ----------------------------------------------------------------------------------------------


@on_module_loop
async def test_a_body_past_the_limit_is_413(server, http):
    before = server._next_id
    body = json.dumps({"prompt": [1] * 2000, "max_tokens": 1}).encode()
    assert len(body) > 4096
    status, answer = await post(http, server.url + "/v1/completions", body)
    assert status == 413 and "4096" in answer["error"]["message"]
    assert server._next_id == before


@on_module_loop
async def test_a_prompt_past_the_limit_is_400(server, http):
    status, answer = await post(http, server.url + "/v1/completions", {"prompt": [1] * 65, "max_tokens": 1})
    assert status == 400 and answer["error"]["param"] == "prompt" and "at most 64" in answer["error"]["message"]
    status, _ = await post(http, server.url + "/v1/completions", {"prompt": [1] * 64, "max_tokens": 1})
    assert status == 200


def test_bad_limits_and_an_empty_key_are_config_errors(tmp_path):
    for bad in ({"max_body_bytes": 0}, {"max_prompt_tokens": 0}, {"api_key": ""}):
        with pytest.raises(ConfigError):
            Server(ServePlan(trace=tmp_path / "x.msgpack", device="cpu", **bad))


def test_which_addresses_reach_beyond_this_machine():
    assert not any(reachable_from_outside(h) for h in ("127.0.0.1", "localhost", "::1"))
    assert reachable_from_outside("0.0.0.0") and reachable_from_outside("::")


# --- the command line ------------------------------------------------------------------------------------


@on_module_loop
async def test_serve_cli_on_every_address_warns_without_a_key_and_takes_one_from_the_environment(tmp_path):
    async def serve(*flags: str, env: dict[str, str]) -> tuple[asyncio.subprocess.Process, str]:
        child = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "tui.cli", "serve", "--port", "0", "--device", "cpu"),
            *flags,
            cwd=REPO,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        line = (await asyncio.wait_for(child.stdout.readline(), 120)).decode()
        assert line.startswith("serving http://"), (await child.stderr.read()).decode()
        return child, line.split()[1].removesuffix("/v1")

    async def stop(child: asyncio.subprocess.Process) -> str:
        child.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(child.communicate(), 30)
        assert child.returncode == 0
        return err.decode()

    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    child, _ = await serve("--host", "0.0.0.0", "--trace", str(tmp_path / "open.msgpack"), env=env)
    err = await stop(child)
    assert "warning: listening on 0.0.0.0 without an API key" in err and API_KEY_ENV in err

    flags = ("--host", "0.0.0.0", "--trace", str(tmp_path / "keyed.msgpack"), "--max-prompt-tokens", "8")
    child, url = await serve(*flags, env={API_KEY_ENV: "from-env"})
    url = url.replace("0.0.0.0", "127.0.0.1")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/health") as r:
                assert r.status == 200
            async with http.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}) as r:
                assert r.status == 401
            keyed = {"Authorization": "Bearer from-env"}
            body = {"prompt": "hi", "max_completion_tokens": 2}
            async with http.post(url + "/v1/completions", json=body, headers=keyed) as r:
                assert r.status == 200 and (await r.json())["usage"]["completion_tokens"] == 2
            body = {"prompt": "123456789", "max_tokens": 2}
            async with http.post(url + "/v1/completions", json=body, headers=keyed) as r:
                assert r.status == 400 and "at most 8" in (await r.json())["error"]["message"]
    finally:
        err = await stop(child)
    assert "warning" not in err
    serve_config = tracer.load(tmp_path / "keyed.msgpack").header.config["serve"]
    assert serve_config["api_key"] is True and "from-env" not in json.dumps(serve_config)
    assert serve_config["max_prompt_tokens"] == 8


@on_module_loop
async def test_record_target_sends_the_key_from_the_environment(server, tmp_path, monkeypatch, capsys):
    out = tmp_path / "client.msgpack"
    argv = ["record", "--target", server.url, "--workload", "smoke", "--duration", "0.5", "--quiet", "--out"]
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert await asyncio.to_thread(cli_main, [*argv, str(out)]) == 2
    assert f"wants an API key: set {API_KEY_ENV}" in capsys.readouterr().err and not out.exists()
    monkeypatch.setenv(API_KEY_ENV, KEY)
    before = server._next_id
    assert await asyncio.to_thread(cli_main, [*argv, str(out)]) == 0
    reqs = tracer.load(out).requests
    assert reqs.height > 0 and set(reqs["status"]) == {"finished"} and server._next_id - before == reqs.height


@on_module_loop
async def test_health_answers_503_once_a_tick_has_failed(tmp_path, monkeypatch):
    server = Server(ServePlan(trace=tmp_path / "failed.msgpack", port=0, device="cpu"))

    def failing(prepared, tick, tick_start, sampling):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(server.engine.executor, "launch", failing)
    await server.start()  # no watchdog: the server answers on after the engine has failed
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.url + "/health") as r:
                assert r.status == 200
            status, answer = await post(http, server.url + "/v1/completions", {"prompt": "hi", "max_tokens": 2})
            assert status == 500 and answer["error"]["code"] == "engine_failed"
            async with http.get(server.url + "/health") as r:
                error = (await r.json())["error"]
            assert r.status == 503 and error["code"] == "engine_failed" and "injected fault" in error["message"]
    finally:
        with pytest.raises(RunFailed):
            await server.close()
