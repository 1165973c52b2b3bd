"""Workloads with real prompts from a file: tokenized by the model's tokenizer (or bytes), sent in
file order, ended by the model's EOS; and every mistake in such a file named with its line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.config import get_preset
from engine.engine import Engine
from engine.errors import ConfigError
from engine.request import Request
from engine.scheduler import SchedulerConfig
from tiny_tokenizer import write_tokenizer
from tracer.events import RequestEvent
from tracer.recorder import ListRecorder
from workloads.hf_tokenizer import HFTokenizer, load_tokenizer
from workloads.loadgen import run_load
from workloads.spec import WorkloadSpec, load_workload

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Grüße 東京?"}]


class Recorded:
    """An engine stand-in that ends every request at once with one token, keeping what it was sent."""

    def __init__(self) -> None:
        self.submitted: list[Request] = []

    def submit(self, req: Request) -> None:
        self.submitted.append(req)
        req.sink.on_token(1, 0)
        req.sink.on_finish("finished", "length", 0)


def workload(tmp_path: Path, name: str, content: str, prompt: str, requests: int = 5, output: int = 3) -> WorkloadSpec:
    (tmp_path / name).write_text(content, encoding="utf-8")
    toml = tmp_path / "w.toml"
    toml.write_text(
        f"requests = {requests}\n[arrivals]\nkind = 'constant'\nrate = 1000\n"
        f"[prompt]\nkind = 'text'\nfile = '{name}'\n{prompt}\n[output]\nkind = 'fixed'\nvalue = {output}\n"
    )
    return load_workload(toml)


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> HFTokenizer:
    directory = tmp_path_factory.mktemp("ckpt")
    write_tokenizer(directory)
    return load_tokenizer(directory)


async def test_text_lines_are_sent_as_bytes_in_file_order(tmp_path: Path) -> None:
    spec = workload(tmp_path, "p.txt", "first prompt\n\nsecond: café\nthird\n", "")
    assert spec.to_dict()["prompt"]["prompts"] == 3
    engine = Recorded()
    await run_load(engine, spec, ListRecorder(), vocab_size=512)
    sent = [r.prompt for r in engine.submitted]
    lines = ["first prompt", "second: café", "third"]
    assert sent == [list(s.encode()) for s in lines + lines[:2]]  # round and round
    assert all(r.stop_tokens == frozenset() and r.max_new_tokens == 3 for r in engine.submitted)


async def test_jsonl_prompts_and_chats_go_through_the_model_tokenizer(tmp_path: Path, tok: HFTokenizer) -> None:
    rows = [{"messages": "plain words here", "id": 1}, {"messages": CHAT}]
    spec = workload(tmp_path, "p.jsonl", "\n".join(json.dumps(r) for r in rows), "column = 'messages'", 2)
    engine = Recorded()
    await run_load(engine, spec, ListRecorder(), vocab_size=512, tokenizer=tok)
    assert tok.chat_template is not None
    expected = [tok.encode("plain words here"), tok.encode(tok.chat_template.render(CHAT), special=False)]
    assert [r.prompt for r in engine.submitted] == expected
    assert all(r.stop_tokens == frozenset(tok.eos_token_ids) for r in engine.submitted)


async def test_the_models_eos_ends_a_request_and_the_trace_says_stop(tmp_path: Path) -> None:
    """A real tiny engine: its greedy answer to the prompt is found first, then one of its tokens is
    made the EOS of generation_config.json, and the load generator's request ends there."""
    model_dir = tmp_path / "model"
    write_tokenizer(model_dir, eos_ids=[])
    spec = workload(tmp_path, "p.txt", "The quick brown fox\n", "", requests=1, output=20)
    prompt = load_tokenizer(model_dir).encode("The quick brown fox")

    def engine() -> Engine:
        return Engine(get_preset("tiny"), SchedulerConfig(), device="cpu", seed=0)

    class Tokens:
        def __init__(self) -> None:
            self.tokens: list[int] = []

        def on_token(self, token: int, t_ns: int) -> None:
            self.tokens.append(token)

        def on_finish(self, status: str, reason: str, t_ns: int) -> None: ...

    first, sink = engine(), Tokens()
    first.submit(Request(0, prompt, 20, sink))
    while first.step():
        pass
    k = next(i for i in range(4, 20) if sink.tokens[i] not in sink.tokens[:i])
    write_tokenizer(model_dir, eos_ids=[sink.tokens[k]])

    second, rec = engine(), ListRecorder()
    second.start()
    try:
        await run_load(second, spec, rec, vocab_size=512, tokenizer=load_tokenizer(model_dir))
    finally:
        second.stop()
    (finish,) = [e for e in rec.events if isinstance(e, RequestEvent) and e.phase == "finish"]
    assert (finish.status, finish.reason, finish.output_tokens) == ("finished", "stop", k + 1)
    assert finish.prompt_tokens == len(prompt)


@pytest.mark.parametrize(
    ("name", "content", "prompt", "message"),
    [
        ("p.txt", "\n  \n", "", r"prompt file .*p.txt holds no prompts"),
        ("p.jsonl", '{"prompt": "a"}\n{"prompt": \n', "", r"prompt file .*p.jsonl line 2: not JSON"),
        ("p.jsonl", '{"prompt": "a"}\n\n{"text": "b"}\n', "", r"p.jsonl line 3: no key 'prompt'"),
        ("p.jsonl", '{"prompt": ""}\n', "", r"p.jsonl line 1: 'prompt' is empty"),
        ("p.jsonl", '{"prompt": 3}\n', "", r"line 1: 'prompt' must be a prompt string or a non-empty list"),
        ("p.jsonl", '{"m": [{"role": "user"}]}\n', "column = 'm'", r"line 1: message 0 of 'm' is not"),
        ("p.txt", "a\n", "max = 4", r"text prompts are sent whole: no 'min' or 'max' in \[prompt\]"),
    ],
)
def test_a_bad_prompt_file_is_named_with_its_line(
    tmp_path: Path, name: str, content: str, prompt: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        workload(tmp_path, name, content, prompt)


def test_a_missing_file_and_text_outputs_are_refused(tmp_path: Path) -> None:
    toml = tmp_path / "w.toml"
    toml.write_text("[arrivals]\nkind = 'constant'\nrate = 1\n[prompt]\nkind = 'text'\nfile = 'nope.txt'\n[output]\n")
    with pytest.raises(ConfigError, match=r"cannot read prompt file .*nope.txt"):
        load_workload(toml)
    (tmp_path / "p.txt").write_text("a\n")
    toml.write_text(
        "[arrivals]\nkind = 'constant'\nrate = 1\n[prompt]\nkind = 'text'\nfile = 'p.txt'\n"
        "[output]\nkind = 'text'\nfile = 'p.txt'\n"
    )
    with pytest.raises(ConfigError, match=r"kind 'text' gives prompts: it is for \[prompt\] only in \[output\]"):
        load_workload(toml)


async def test_chats_need_a_template_and_a_refusal_names_the_line(tmp_path: Path, tok: HFTokenizer) -> None:
    spec = workload(tmp_path, "p.jsonl", '{"prompt": "ok"}\n' + json.dumps({"prompt": CHAT}), "", 2)
    with pytest.raises(ConfigError, match=r"p.jsonl line 2: a chat prompt needs a model whose tokenizer has a chat"):
        await run_load(Recorded(), spec, ListRecorder(), vocab_size=512)
    odd = json.dumps({"prompt": [{"role": "tool", "content": "x"}]})
    spec = workload(tmp_path, "q.jsonl", odd, "", 1)
    with pytest.raises(ConfigError, match=r"q.jsonl line 1: .*unknown role tool"):
        await run_load(Recorded(), spec, ListRecorder(), vocab_size=512, tokenizer=tok)
    with pytest.raises(ConfigError, match="text prompts need a tokenizer: a vocabulary of 100"):
        await run_load(Recorded(), workload(tmp_path, "r.txt", "hi\n", "", 1), ListRecorder(), vocab_size=100)
