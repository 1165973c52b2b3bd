"""`serve --model` and `record --model` with a checkpoint's own tokenizer: a Qwen3-MoE saved by
transformers with a BPE tokenizer trained beside it. The served name is the directory's, a chat is
rendered by its template, the answer is transformers' own greedy continuation decoded, and the
checkpoint's EOS ends a sequence with finish_reason "stop"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import torch
import transformers

import tracer
from parity import hf_greedy
from tiny_tokenizer import write_tokenizer
from tui.cli import main as cli_main
from workloads.serve import ServePlan, Server

VOCAB = 400  # the trained tokenizer's
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Which experts?"}]
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    """The directory, transformers' model and its tokenizer."""
    torch.manual_seed(0)
    config = transformers.Qwen3MoeConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        max_position_embeddings=256,
        initializer_range=0.2,  # logits far enough apart for argmax to decide alike on both sides
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    config._attn_implementation = "eager"
    hf = transformers.Qwen3MoeForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("ckpt") / "qwen3-moe-tiny"
    hf.save_pretrained(path)
    write_tokenizer(path, eos_ids=[])  # no stop token: generation runs to max_tokens
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(path)
    return path, hf, tok


async def chat(url: str, stream: bool) -> tuple[str, dict[str, Any], str | None]:
    """(content, usage, finish_reason) of one chat completion, streamed or not."""
    body = {"messages": MESSAGES, "max_tokens": NEW_TOKENS, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    async with aiohttp.ClientSession() as http, http.post(url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200, await r.text()
        if not stream:
            answer = await r.json()
            choice = answer["choices"][0]
            return choice["message"]["content"], answer["usage"], choice["finish_reason"]
        raw = (await r.read()).decode()
    events = [json.loads(b[6:]) for b in raw.split("\n\n") if b.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    reason = next(e["choices"][0]["finish_reason"] for e in events if e["choices"] and e["choices"][0]["finish_reason"])
    return text, events[-1]["usage"], reason


async def test_a_chat_is_rendered_by_the_checkpoints_template_and_answered_in_its_text(checkpoint, tmp_path):
    path, hf, tok = checkpoint
    prompt = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    expected = tok.decode(hf_greedy(hf, prompt, NEW_TOKENS), skip_special_tokens=True)
    server = Server(ServePlan(trace=tmp_path / "served.msgpack", port=0, device="cpu", model=str(path)))
    async with server as url:
        async with aiohttp.ClientSession() as http, http.get(url + "/v1/models") as r:
            assert [m["id"] for m in (await r.json())["data"]] == ["qwen3-moe-tiny"]
        for stream in (False, True):
            text, usage, reason = await chat(url, stream)
            assert text == expected and reason == "length"
            assert usage["prompt_tokens"] == len(prompt) and usage["completion_tokens"] == NEW_TOKENS
    requests = tracer.load(tmp_path / "served.msgpack").requests
    assert requests["prompt_tokens"].to_list() == [len(prompt)] * 2


async def test_the_checkpoints_eos_ends_a_sequence_with_stop(checkpoint, tmp_path):
    path, hf, tok = checkpoint
    prompt = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    tokens = hf_greedy(hf, prompt, NEW_TOKENS)
    # the stop token: the first one that the model emits for the first time after step 2
    k = next(i for i in range(2, NEW_TOKENS) if tokens[i] not in tokens[:i])
    own = tmp_path / "qwen3-moe-tiny"
    own.mkdir()
    for file in path.iterdir():
        (own / file.name).symlink_to(file)
    (own / "generation_config.json").unlink()
    (own / "generation_config.json").write_text(json.dumps({"eos_token_id": tokens[k]}))
    server = Server(ServePlan(trace=tmp_path / "served.msgpack", port=0, device="cpu", model=str(own)))
    async with server as url:
        for stream in (False, True):
            text, usage, reason = await chat(url, stream)
            assert reason == "stop" and usage["completion_tokens"] == k + 1
            assert text == tok.decode(tokens[: k + 1], skip_special_tokens=True)
    finished = tracer.load(tmp_path / "served.msgpack").requests
    assert finished["reason"].to_list() == ["stop", "stop"] and finished["output_tokens"].to_list() == [k + 1] * 2


def test_record_sends_a_workloads_text_prompts_through_the_checkpoints_tokenizer(checkpoint, tmp_path, capsys):
    path, _, tok = checkpoint
    prompts = ["Grüße aus Köln", "route every token"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    (tmp_path / "text.toml").write_text(
        'requests = 2\n[arrivals]\nkind = "constant"\nrate = 50\n'
        '[prompt]\nkind = "text"\nfile = "prompts.txt"\n[output]\nkind = "fixed"\nvalue = 3\n'
    )
    out = tmp_path / "text.msgpack"
    argv = ["record", "--model", str(path), "--workload", str(tmp_path / "text.toml"), "--device", "cpu"]
    assert cli_main([*argv, "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    lengths = sorted(tracer.load(out).requests["prompt_tokens"].to_list())
    assert lengths == sorted(len(tok(p)["input_ids"]) for p in prompts)
