"""The OpenAI completions protocol, as far as `tickscope serve` speaks it: reading a request body,
and the shapes of completions, stream chunks and errors.

Nothing here touches the network or the engine, so every malformed-request answer can be tested
as plain data. Errors carry the status and the `{"error": {...}}` body OpenAI clients expect: 400
`invalid_request_error` for a body they could have got right, 404 for an unknown model.
Sampling is greedy and generation always runs to `max_tokens` (the engine ignores EOS, as serving
benchmarks do), so `temperature`, `top_p`, `stop` and the like are accepted and ignored; `n` and
`best_of` above 1 change the response's shape and are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from workloads.tokenizer import ByteTokenizer

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


class ApiError(Exception):
    """An answer other than 200, with OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _invalid(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


@dataclass(frozen=True)
class CompletionRequest:
    prompt: list[int]  # token ids
    max_tokens: int
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the token counts


@dataclass(frozen=True)
class ServedModel:
    """What the front serves and what a request may ask of it."""

    name: str
    tokenizer: ByteTokenizer
    context_tokens: int  # prompt + completion may not exceed this (max_seq_len, or the KV cache if smaller)

    def card(self, created: int) -> dict[str, Any]:
        """Its /v1/models entry; `vocab_size` and `max_model_len` tell a load generator what to send."""
        return {
            "id": self.name,
            "object": "model",
            "created": created,
            "owned_by": "tickscope",
            "vocab_size": self.tokenizer.vocab_size,
            "max_model_len": self.context_tokens,
        }


def parse_completion(raw: bytes, served: ServedModel) -> CompletionRequest:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _invalid("We could not parse the JSON body of your request.") from None
    except RecursionError:  # nesting deeper than the interpreter's recursion limit (~1,000 levels)
        raise _invalid("The JSON body of your request is nested too deeply.") from None
    if not isinstance(body, dict):
        raise _invalid("The request body must be a JSON object.")
    model = body.get("model", served.name)
    if model != served.name:
        raise ApiError(
            404,
            f"The model `{model}` does not exist (this server serves `{served.name}`).",
            param="model",
            code="model_not_found",
        )
    prompt = _prompt(body.get("prompt"), served.tokenizer)
    max_tokens = body.get("max_tokens", DEFAULT_MAX_TOKENS)
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if type(max_tokens) is not int or max_tokens < 1:
        raise _invalid(f"max_tokens must be a whole number of at least 1, not {max_tokens!r}.", "max_tokens")
    if len(prompt) + max_tokens > served.context_tokens:
        raise _invalid(
            f"This model's maximum context length is {served.context_tokens} tokens. However, you requested "
            f"{len(prompt) + max_tokens} tokens ({len(prompt)} in your prompt; {max_tokens} for the completion).",
            "max_tokens",
        )
    for key in ("n", "best_of"):
        if body.get(key, 1) not in (None, 1):
            raise _invalid(f"{key} must be 1: this server returns one completion per request.", key)
    stream = body.get("stream", False)
    if type(stream) is not bool:
        raise _invalid(f"stream must be true or false, not {stream!r}.", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _invalid("stream_options must be an object.", "stream_options")
    return CompletionRequest(prompt, max_tokens, stream, bool(options.get("include_usage")))


def _prompt(value: Any, tokenizer: ByteTokenizer) -> list[int]:
    # OpenAI accepts a batch of prompts as a list; a batch of one is unwrapped, more are refused.
    if isinstance(value, list) and value and isinstance(value[0], (str, list)):
        if len(value) != 1:
            raise _invalid("This server takes one prompt per request.", "prompt")
        value = value[0]
    if value is None:
        raise _invalid("You must provide a prompt.", "prompt")
    if isinstance(value, str):
        tokens = tokenizer.encode(value)
    elif isinstance(value, list) and all(type(t) is int for t in value):
        tokens = value
    else:
        raise _invalid("prompt must be a string or a list of token ids.", "prompt")
    if not tokens:
        raise _invalid("prompt must not be empty.", "prompt")
    if min(tokens) < 0 or max(tokens) >= tokenizer.vocab_size:
        raise _invalid(f"prompt token ids must be in [0, {tokenizer.vocab_size}).", "prompt")
    return tokens


def completion(
    cid: str, created: int, model: str, text: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    # finish_reason is always "length": generation runs to max_tokens
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk(cid: str, created: int, model: str, text: str, finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }


def usage_chunk(cid: str, created: int, model: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def rejection(reason: str) -> ApiError:
    """The answer to a request the engine refused at submission (see `Engine.submit`)."""
    if reason == "queue full":
        return ApiError(429, "The server's queue is full; retry later.", type="rate_limit_error", code="queue_full")
    if reason == "engine stopped":
        return ApiError(503, "The server is shutting down.", type="server_error", code="unavailable")
    # the engine's other refusals are checked here first; one that still arrives is the client's
    return ApiError(400, f"The engine refused the request: {reason}.")
