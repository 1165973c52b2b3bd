"""A checkpoint's own tokenizer: tokenizer.json through the `tokenizers` library, the special tokens
and chat template of tokenizer_config.json, and the stop tokens of generation_config.json.

It answers to the same calls as the byte tokenizer (workloads/tokenizer.py), so a serving front or a
load generator takes either. Decoding a stream one token at a time needs state: byte-level BPE splits
a multi-byte character across tokens, so `stream()` gives each request a decoder that holds the bytes
back until they make text, and the streamed text is the same as decoding the whole sequence.

Chat templates render as transformers renders them (its `apply_chat_template`): a sandboxed jinja2
environment with trim_blocks and lstrip_blocks, `raise_exception`, a `tojson` that does not escape
HTML, `strftime_now`, loop controls, and the special tokens as variables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from engine.errors import ConfigError

if TYPE_CHECKING:  # a checkpoint is opened with torch; reading prompts needs neither
    from engine.checkpoint import Checkpoint

# The special tokens transformers hands a chat template, by their tokenizer_config.json keys.
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # jinja2's own tojson escapes HTML characters, which a prompt must keep as they are
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class JinjaChatTemplate:
    """A checkpoint's chat template: messages in, the prompt text the model was trained on out, ending
    with the assistant's turn opened (`add_generation_prompt`)."""

    def __init__(self, source: str, special_tokens: dict[str, str], origin: str = "chat template") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(
                f"{origin}: the chat template does not parse (line {exc.lineno}: {exc.message})"
            ) from None
        self.special_tokens = special_tokens
        self.origin = origin

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt for `messages` ({"role", "content"} each). A template that refuses them (its
        `raise_exception`, say for roles out of order) raises ValueError with its words."""
        try:
            return self._template.render(
                messages=messages, tools=None, documents=None, add_generation_prompt=True, **self.special_tokens
            )
        except jinja2.TemplateError as exc:
            raise ValueError(f"{self.origin}: {exc}") from None


class IncrementalDecoder:
    """One request's streamed text: `step(token)` gives the text that token completes ("" while a
    character's bytes are still coming). Special tokens (EOS among them) give no text."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)

    def step(self, token: int) -> str:
        return self._stream.step(self._tokenizer, token) or ""


@dataclass
class HFTokenizer:
    """The tokenizer of a checkpoint directory; build it with `load_tokenizer`."""

    tokenizer: Tokenizer
    special_tokens: dict[str, str]  # bos_token, eos_token, ... as tokenizer_config.json names them
    add_bos_token: bool  # a prompt starts with the BOS token (tokenizer_config.json, default off)
    eos_token_ids: tuple[int, ...]  # the tokens that end a sequence
    chat_template: JinjaChatTemplate | None
    vocab_size: int = field(init=False)

    def __post_init__(self) -> None:
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        bos = self.special_tokens.get("bos_token")
        self._bos_id = None if bos is None else self.tokenizer.token_to_id(bos)

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Token ids of `text`. With `special`, as a plain prompt: the tokenizer's post-processing
        and, if the config asks for it, a BOS in front. Text rendered from a chat template already
        holds its special tokens (pass special=False), as transformers tokenizes it."""
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=special).ids
        if special and self.add_bos_token and self._bos_id is not None and ids[:1] != [self._bos_id]:
            ids.insert(0, self._bos_id)
        return ids

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the prompt the chat template makes of `messages` (ValueError without one, or
        when the template refuses them)."""
        if self.chat_template is None:
            raise ValueError("the tokenizer has no chat template")
        return self.encode(self.chat_template.render(messages), special=False)

    def decode_token(self, token: int) -> str:
        """One token's text on its own (a character split across tokens shows as U+FFFD); use
        `stream()` for a sequence's text token by token."""
        text: str = self.tokenizer.decode([token], skip_special_tokens=False)
        return text

    def decode(self, tokens: list[int]) -> str:
        """A whole sequence's text, special tokens left out."""
        text: str = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return text

    def stream(self) -> IncrementalDecoder:
        return IncrementalDecoder(self.tokenizer)


def load_tokenizer(directory: Path) -> HFTokenizer:
    """The tokenizer of a Hugging Face checkpoint directory: tokenizer.json (required),
    tokenizer_config.json and generation_config.json (optional)."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"no tokenizer.json in {directory}")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - the library raises plain Exception for a bad file
        raise ConfigError(f"{path} is not a tokenizer: {str(exc).splitlines()[0]}") from None
    config = _json(directory / "tokenizer_config.json")
    special = {key: text for key in _SPECIAL_KEYS if (text := _token_text(config.get(key))) is not None}
    template = _template_source(config.get("chat_template"), directory)
    eos_ids = _eos_ids(directory, tokenizer, special.get("eos_token"))
    return HFTokenizer(
        tokenizer=tokenizer,
        special_tokens=special,
        add_bos_token=bool(config.get("add_bos_token", False)),
        eos_token_ids=eos_ids,
        chat_template=None
        if template is None
        else JinjaChatTemplate(template, special, f"{directory / 'tokenizer_config.json'}"),
    )


def _json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; an absent file is an empty one."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a JSON object")
    return data


def _token_text(value: Any) -> str | None:
    # a special token is a string, or a saved AddedToken: {"content": ..., ...}
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _template_source(value: Any, directory: Path) -> str | None:
    """The default chat template: tokenizer_config.json's (a string, or a list of named ones), else a
    chat_template.jinja beside it, as newer transformers saves it."""
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    if isinstance(value, str):
        return value
    jinja_file = directory / "chat_template.jinja"
    return jinja_file.read_text(encoding="utf-8") if jinja_file.is_file() else None


def _eos_ids(directory: Path, tokenizer: Tokenizer, eos_token: str | None) -> tuple[int, ...]:
    """generation_config.json's eos_token_id (one id or a list), else the tokenizer's EOS token."""
    path = directory / "generation_config.json"
    raw = _json(path).get("eos_token_id")
    if raw is not None:
        ids = raw if isinstance(raw, list) else [raw]
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ConfigError(f"{path}: eos_token_id must be a token id or a list of them, not {raw!r}")
        return tuple(ids)
    eos = None if eos_token is None else tokenizer.token_to_id(eos_token)
    return () if eos is None else (eos,)


def checkpoint_tokenizer(checkpoint: Checkpoint | None) -> HFTokenizer | None:
    """The tokenizer of the checkpoint a run loads (--model), if it ships one; None for random weights."""
    if checkpoint is None or not (checkpoint.path / "tokenizer.json").is_file():
        return None
    return load_tokenizer(checkpoint.path)
