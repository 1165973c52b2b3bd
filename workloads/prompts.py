"""Real prompts for a workload: read from a user's file, tokenized by the model's tokenizer.

A text file holds one prompt per line (empty lines are skipped). A JSON Lines file holds one object
per line, whose `field` is a prompt string or a chat: a list of {"role", "content"} messages, which
the model's chat template renders. Errors name the file and the line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ConfigError
from workloads.datafiles import read_text
from workloads.hf_tokenizer import HFTokenizer
from workloads.tokenizer import ByteTokenizer

MAX_PROMPTS = 1_000_000  # past this, a prompt file is a mistake (they are all tokenized up front)


@dataclass(frozen=True)
class Prompt:
    line: int  # where it is in its file, for errors
    text: str | None = None  # a plain prompt ...
    chat: tuple[tuple[str, str], ...] = ()  # ... or a chat's (role, content) messages

    def messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.chat]


def read_prompts(path: Path, field: str) -> tuple[Prompt, ...]:
    """The prompts of a .jsonl (or .ndjson) file's `field`, or the lines of any other text file."""
    text = read_text(path, "prompt")
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        prompts = tuple(_from_json(path, n, line, field) for n, line in lines)
    else:
        prompts = tuple(Prompt(n, text=line) for n, line in lines)
    if not prompts:
        raise ConfigError(f"prompt file {path} holds no prompts")
    if len(prompts) > MAX_PROMPTS:
        raise ConfigError(f"prompt file {path} holds more than {MAX_PROMPTS} prompts")
    return prompts


def _from_json(path: Path, n: int, line: str, field: str) -> Prompt:
    where = f"prompt file {path} line {n}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        raise ConfigError(f"{where}: not JSON") from None
    if not isinstance(row, dict) or field not in row:
        raise ConfigError(f"{where}: no key '{field}'")
    value = row[field]
    if isinstance(value, str):
        if not value:
            raise ConfigError(f"{where}: '{field}' is empty")
        return Prompt(n, text=value)
    if isinstance(value, list) and value:
        chat = []
        for i, message in enumerate(value):
            if not isinstance(message, dict) or not all(isinstance(message.get(k), str) for k in ("role", "content")):
                raise ConfigError(f'{where}: message {i} of \'{field}\' is not {{"role": str, "content": str}}')
            chat.append((message["role"], message["content"]))
        return Prompt(n, chat=tuple(chat))
    raise ConfigError(f"{where}: '{field}' must be a prompt string or a non-empty list of chat messages")


def tokenize_prompts(
    prompts: tuple[Prompt, ...], origin: str, tokenizer: ByteTokenizer | HFTokenizer
) -> list[list[int]]:
    """Token ids of every prompt; a chat is rendered by the tokenizer's chat template, then tokenized.
    `origin` names the file in errors."""
    encode_chat = tokenizer.encode_chat if isinstance(tokenizer, HFTokenizer) and tokenizer.chat_template else None
    out = []
    for p in prompts:
        where = f"prompt file {origin} line {p.line}"
        if p.text is not None:
            ids = tokenizer.encode(p.text)
        elif encode_chat is None:
            raise ConfigError(f"{where}: a chat prompt needs a model whose tokenizer has a chat template")
        else:
            try:
                ids = encode_chat(p.messages())
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        if not ids:
            raise ConfigError(f"{where}: the prompt is no tokens")
        out.append(ids)
    return out
