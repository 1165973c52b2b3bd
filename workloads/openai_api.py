"""The OpenAI completions and chat completions protocol, as far as `tickscope serve` speaks it:
reading a request body, and the shapes of answers, stream chunks and errors.

Nothing here touches the network or the engine, so every malformed-request answer can be tested
as plain data. Errors carry the status and the `{"error": {...}}` body OpenAI clients expect: 400
`invalid_request_error` for a body they could have got right, 404 for an unknown model, 401 for
a missing or wrong API key.
`temperature`, `top_p`, `top_k` (vLLM's extension) and `seed` choose how tokens are drawn; without a
temperature a request is greedy, tickscope's default (random weights say nothing either way), and a
sampled request without a seed gets a random one. A sequence ends at its model's EOS (`finish_reason`
"stop"; a random-weights model has none) or at `max_tokens` ("length"). `stop` strings, penalties
and the like are accepted and ignored; `n` and `best_of` above 1 change the response's shape and
are refused.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.request import GREEDY, SamplingParams
from workloads.chat import ROLES, ChatTemplate, PlainChatTemplate
from workloads.tokenizer import Tokenizer

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_BODY_BYTES = 4 << 20  # serve's default body limit: a prompt of a million token ids as JSON fits
API_KEY_ENV = "TICKSCOPE_API_KEY"  # serve's API key when --api-key is not given, and the key record --target sends


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


Endpoint = Literal["completion", "chat"]


@dataclass(frozen=True)
class CompletionRequest:
    """A request of either endpoint, read: what the engine runs and how the answer is shaped."""

    prompt: list[int]  # token ids
    max_tokens: int
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the token counts
    endpoint: Endpoint = "completion"
    sampling: SamplingParams = GREEDY


@dataclass(frozen=True)
class ServedModel:
    """What the front serves and what a request may ask of it."""

    name: str
    tokenizer: Tokenizer
    context_tokens: int  # prompt + completion may not exceed this (max_seq_len, or the KV cache if smaller)
    chat_template: ChatTemplate = field(default_factory=PlainChatTemplate)
    max_prompt_tokens: int | None = None  # None: as long as the context leaves room for one token

    @property
    def prompt_limit(self) -> int:
        limit = self.context_tokens - 1
        return limit if self.max_prompt_tokens is None else min(limit, self.max_prompt_tokens)

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
    """A `/v1/completions` body."""
    body = _body(raw, served)
    prompt = _prompt(body.get("prompt"), served)
    return _request(body, prompt, served, "completion", DEFAULT_MAX_TOKENS)


def parse_chat(raw: bytes, served: ServedModel) -> CompletionRequest:
    """A `/v1/chat/completions` body: its messages rendered by the served model's chat template."""
    body = _body(raw, served)
    text = served.chat_template.render(_messages(body.get("messages")))
    prompt = served.tokenizer.encode(text, special=False)  # the template wrote the special tokens
    _check_prompt_length(prompt, served, "messages")
    # OpenAI's chat default is "as many as fit", as vLLM reads it: the rest of the context
    return _request(body, prompt, served, "chat", served.context_tokens - len(prompt))


def _body(raw: bytes, served: ServedModel) -> dict[str, Any]:
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
    return body


def _request(
    body: dict[str, Any], prompt: list[int], served: ServedModel, endpoint: Endpoint, default_max: int
) -> CompletionRequest:
    # max_completion_tokens is OpenAI's newer name for max_tokens; given both, it wins (as in vLLM)
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(key)
    if max_tokens is None:
        max_tokens = default_max
    if type(max_tokens) is not int or max_tokens < 1:
        raise _invalid(f"{key} must be a whole number of at least 1, not {max_tokens!r}.", key)
    if len(prompt) + max_tokens > served.context_tokens:
        raise _invalid(
            f"This model's maximum context length is {served.context_tokens} tokens. However, you requested "
            f"{len(prompt) + max_tokens} tokens ({len(prompt)} in your prompt; {max_tokens} for the completion).",
            key,
        )
    for name in ("n", "best_of"):
        if body.get(name, 1) not in (None, 1):
            raise _invalid(f"{name} must be 1: this server returns one completion per request.", name)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if type(stream) is not bool:
        raise _invalid(f"stream must be true or false, not {stream!r}.", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _invalid("stream_options must be an object.", "stream_options")
    include_usage = bool(options.get("include_usage"))
    return CompletionRequest(prompt, max_tokens, stream, include_usage, endpoint, _sampling(body))


def _sampling(body: dict[str, Any]) -> SamplingParams:
    temperature = _number(body, "temperature", 0.0)
    if temperature == 0.0:
        return GREEDY
    top_k = body.get("top_k")
    if top_k is None or top_k == -1:  # vLLM's spelling of "all"
        top_k = 0
    if type(top_k) is not int:
        raise _invalid(f"top_k must be a whole number, not {top_k!r}.", "top_k")
    seed = body.get("seed")
    if seed is None:
        seed = random.getrandbits(63)
    if type(seed) is not int:
        raise _invalid(f"seed must be a whole number, not {seed!r}.", "seed")
    params = SamplingParams(temperature, _number(body, "top_p", 1.0), top_k, seed)
    problem = params.problem()
    if problem is not None:
        raise _invalid(f"{problem}.", problem.split()[0])
    return params


def _number(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if type(value) not in (int, float):
        raise _invalid(f"{key} must be a number, not {value!r}.", key)
    return float(value)


def _prompt(value: Any, served: ServedModel) -> list[int]:
    tokenizer = served.tokenizer
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
    _check_prompt_length(tokens, served, "prompt")
    return tokens


def _check_prompt_length(tokens: list[int], served: ServedModel, param: str) -> None:
    if len(tokens) > served.prompt_limit:
        raise _invalid(f"Your prompt is {len(tokens)} tokens; this server takes at most {served.prompt_limit}.", param)


def _messages(value: Any) -> list[dict[str, str]]:
    """The conversation as role and text: content given as a string, or as a list of text parts."""
    if not isinstance(value, list) or not value:
        raise _invalid("messages must be a non-empty list of messages.", "messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise _invalid(f"messages[{i}] must be an object with a role and content.", "messages")
        role = message.get("role")
        if role not in ROLES:
            raise _invalid(f"messages[{i}].role must be one of {', '.join(ROLES)}, not {role!r}.", "messages")
        messages.append({"role": role, "content": _content(message.get("content"), i, role)})
    return messages


def _content(value: Any, i: int, role: str) -> str:
    if isinstance(value, str):
        return value
    if value is None and role == "assistant":  # an assistant turn that only called tools
        return ""
    if isinstance(value, list):
        texts = []
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise _invalid(f"messages[{i}].content: this server reads text parts only.", "messages")
            texts.append(part["text"])
        return "".join(texts)
    raise _invalid(f"messages[{i}].content must be a string or a list of text parts.", "messages")


_OBJECTS = {  # endpoint -> the `object` of its answer and of its stream's chunks
    "completion": ("text_completion", "text_completion"),
    "chat": ("chat.completion", "chat.completion.chunk"),
}


def completion(
    endpoint: Endpoint,
    cid: str,
    created: int,
    model: str,
    text: str,
    prompt_tokens: int,
    completion_tokens: int,
    finish_reason: str,
) -> dict[str, Any]:
    """The whole answer."""
    if endpoint == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
    else:
        choice = {"index": 0, "text": text}
    return {
        "id": cid,
        "object": _OBJECTS[endpoint][0],
        "created": created,
        "model": model,
        "choices": [{**choice, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk(
    endpoint: Endpoint,
    cid: str,
    created: int,
    model: str,
    text: str | None,
    finish_reason: str | None = None,
    *,
    include_usage: bool = False,
) -> dict[str, Any]:
    """One event of a stream. A chat stream opens with `text=None`: the chunk that names the role."""
    if endpoint == "chat":
        delta = {"role": "assistant", "content": ""} if text is None else {"content": text} if text else {}
        choice: dict[str, Any] = {"index": 0, "delta": delta}
    else:
        choice = {"index": 0, "text": text or ""}
    event = {
        "id": cid,
        "object": _OBJECTS[endpoint][1],
        "created": created,
        "model": model,
        "choices": [{**choice, "logprobs": None, "finish_reason": finish_reason}],
    }
    if include_usage:  # OpenAI's stream says `"usage": null` until the last chunk
        event["usage"] = None
    return event


def usage_chunk(
    endpoint: Endpoint, cid: str, created: int, model: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": _OBJECTS[endpoint][1],
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


def unauthorized(given: bool) -> ApiError:
    """The answer to a request without the server's API key, worded as OpenAI words it."""
    if given:
        message = "Incorrect API key provided. Send the key the server was started with as `Authorization: Bearer KEY`."
    else:
        message = "You didn't provide an API key. Send it as `Authorization: Bearer KEY` (the OpenAI clients do)."
    return ApiError(401, message, code="invalid_api_key")
