"""Chat templates: how `/v1/chat/completions` turns a conversation into the prompt the model reads.

A real checkpoint brings its own template; the random-weights presets have none, so they use
`PlainChatTemplate`, which writes each message as its role, a colon, a space and its content on a
line of its own, then `assistant:` for the model to continue:

    system: You are brief.
    user: Hello, experts
    assistant:

Nothing in it is special to the model (its weights are random): it is there so that a prompt's
length, and so the work a request costs, grows with the conversation as it would on a real model.
"""

from __future__ import annotations

from typing import Protocol

ROLES = ("system", "developer", "user", "assistant", "tool")  # OpenAI's message roles


class ChatTemplate(Protocol):
    """Renders a conversation (each message's `role` and `content` as text) to the prompt's text,
    ending where the assistant's answer begins."""

    def render(self, messages: list[dict[str, str]]) -> str: ...


class PlainChatTemplate:
    """`role: content` per line, then `assistant:` (see the module docstring)."""

    def render(self, messages: list[dict[str, str]]) -> str:
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
