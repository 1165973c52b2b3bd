"""The checkpoint tokenizer: round trips, streamed text, chat templates as transformers renders them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from engine.errors import ConfigError
from tiny_tokenizer import CORPUS, write_tokenizer
from workloads.hf_tokenizer import HFTokenizer, load_tokenizer

CHATS = [
    [{"role": "user", "content": "Hello there"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "  Grüße, 東京? 🙂  "},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "And then"},
    ],
    [{"role": "user", "content": 'quotes " and <tags> & {braces}'}, {"role": "assistant", "content": ""}],
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ckpt")
    write_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def tok(model_dir: Path) -> HFTokenizer:
    return load_tokenizer(model_dir)


def test_round_trip_and_special_tokens(tok: HFTokenizer) -> None:
    for text in CORPUS[:4] + ["unseen words: Zürich 🚀 ünïcödé"]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    end = tok.tokenizer.token_to_id("<|im_end|>")
    assert tok.decode(tok.encode("hi") + [end]) == "hi"  # special tokens give no text
    assert tok.eos_token_ids == (end, tok.tokenizer.token_to_id("<|endoftext|>"))
    assert tok.vocab_size == tok.tokenizer.get_vocab_size(with_added_tokens=True)


def test_encode_as_transformers(model_dir: Path, tok: HFTokenizer) -> None:
    hf = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    for text in CORPUS[:4]:
        assert tok.encode(text) == hf.encode(text)


def test_add_bos_token(tmp_path: Path) -> None:
    write_tokenizer(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": True}))
    tok = load_tokenizer(tmp_path)
    bos = tok.tokenizer.token_to_id("<|endoftext|>")
    assert tok.encode("hello")[0] == bos
    assert tok.encode("hello", special=False)[0] != bos


def test_streamed_text_equals_whole_decode(tok: HFTokenizer) -> None:
    text = "Grüße aus Köln 東京 🙂🚀 naïve"
    ids = tok.encode(text)
    # the tiny vocabulary splits multi-byte characters across tokens, which is what is tested here
    assert any("\ufffd" in tok.decode_token(i) for i in ids)
    end = tok.tokenizer.token_to_id("<|im_end|>")
    stream = tok.stream()
    pieces = [stream.step(i) for i in ids + [end]]
    assert "".join(pieces) == tok.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)


def test_chat_template_as_transformers(model_dir: Path, tok: HFTokenizer) -> None:
    hf = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    assert tok.chat_template is not None
    for messages in CHATS:
        ours = tok.chat_template.render(messages)
        theirs = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert ours == theirs
        assert ours.endswith("<|im_start|>assistant\n")
        tokens = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        ids = tokens["input_ids"] if isinstance(tokens, dict) or hasattr(tokens, "keys") else tokens
        assert tok.encode(ours, special=False) == list(ids)


def test_template_refusal_is_a_value_error(tok: HFTokenizer) -> None:
    assert tok.chat_template is not None
    with pytest.raises(ValueError, match="unknown role tool"):
        tok.chat_template.render([{"role": "tool", "content": "x"}])


def test_eos_from_tokenizer_config_without_generation_config(tmp_path: Path) -> None:
    write_tokenizer(tmp_path)
    (tmp_path / "generation_config.json").unlink()
    tok = load_tokenizer(tmp_path)
    assert tok.eos_token_ids == (tok.tokenizer.token_to_id("<|im_end|>"),)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: (d / "tokenizer.json").unlink(), "no tokenizer.json in"),
        (lambda d: (d / "tokenizer.json").write_text("{}"), "tokenizer.json is not a tokenizer"),
        (lambda d: (d / "generation_config.json").write_text('{"eos_token_id": "x"}'), "eos_token_id must be"),
        (lambda d: (d / "tokenizer_config.json").write_text("[1"), "cannot read .*tokenizer_config.json"),
        (
            lambda d: (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{% if %}"})),
            "tokenizer_config.json: the chat template does not parse",
        ),
    ],
)
def test_errors_name_the_file(tmp_path: Path, change: object, message: str) -> None:
    write_tokenizer(tmp_path)
    change(tmp_path)  # type: ignore[operator]
    with pytest.raises(ConfigError, match=message):
        load_tokenizer(tmp_path)


def test_a_template_saved_beside_the_config(tmp_path: Path) -> None:
    """Newer transformers saves the chat template as chat_template.jinja, not in tokenizer_config.json."""
    write_tokenizer(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "chat_template.jinja").write_text(config.pop("chat_template"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path)
    hf = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert tok.chat_template is not None
    assert tok.chat_template.render(CHATS[1]) == hf.apply_chat_template(
        CHATS[1], tokenize=False, add_generation_prompt=True
    )
