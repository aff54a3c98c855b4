"""POST /v1/completions: plain text completions (no chat template), stream and not.

``prompt`` may be a string, a list of strings, a list of token ids or a list of such lists; each
prompt (times ``n``) is one choice, generated in the same batch. ``echo`` puts the prompt in
front of the text. ``suffix`` (insertion) is refused: the engine does not fill in the middle.
``logprobs`` (the number of alternatives per token) gives the legacy ``tokens``/``token_logprobs``/
``top_logprobs``/``text_offset`` object, for the generated tokens (not with ``echo``).
"""

from __future__ import annotations

import secrets
import time
from contextlib import aclosing
from functools import partial
from typing import Annotated, Any, AsyncIterator

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from opta_lmx.errors import ApiError, InvalidRequest, UnsupportedParameter
from opta_lmx.gateway.decoding import decode_body
from opta_lmx.gateway.generation import KEEPALIVE_SECONDS, Collected, merged, respond
from opta_lmx.gateway.jobs import choices, resolve
from opta_lmx.gateway.link import Pending
from opta_lmx.gateway.openai.chat import sampling_params
from opta_lmx.gateway.openai.chat_replies import KEEPALIVE_LINE, STREAM, error_line
from opta_lmx.gateway.openai.requests import MAX_CHOICES, GenerationFields
from opta_lmx.gateway.sse import data_event
from opta_lmx.gateway.state import GatewayState
from opta_lmx.proto import Finished, TokenChunk, TokenLogprobs

# msgspec takes one list type in a union; the mix of element kinds is checked in ``prompts``.
Prompt = str | list[str | int | list[int]]


class CompletionRequest(GenerationFields, kw_only=True, forbid_unknown_fields=True):
    prompt: Prompt
    echo: bool = False
    suffix: str | None = None
    logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    best_of: int | None = None


_DECODER = msgspec.json.Decoder(CompletionRequest)


def decode_completion_request(body: bytes) -> CompletionRequest:
    request = decode_body(_DECODER, body)
    if request.suffix:
        raise UnsupportedParameter("Unsupported parameter: 'suffix' (insertion) is not supported.", param="suffix")
    if request.logprobs is not None and request.echo:
        raise UnsupportedParameter(
            "Unsupported parameter: 'logprobs' with 'echo' (the prompt's log probabilities) is not supported.",
            param="logprobs",
        )
    if request.best_of not in (None, 1):
        raise UnsupportedParameter("Unsupported parameter: 'best_of' is not supported.", param="best_of")
    return request


def prompts(prompt: Prompt) -> list[dict[str, Any]]:
    """Each prompt as ``Generate`` fields: text, or token ids."""
    if isinstance(prompt, str):
        return [{"prompt": prompt}]
    if not prompt:
        raise InvalidRequest("'prompt' must not be empty.", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [{"prompt_ids": list(prompt)}]
    if all(isinstance(p, str) for p in prompt):
        return [{"prompt": p} for p in prompt]
    if all(isinstance(p, list) and p for p in prompt):
        return [{"prompt_ids": list(p)} for p in prompt]  # type: ignore[arg-type]
    raise InvalidRequest(
        "'prompt' must be a string, a list of strings, a list of token ids, or a list of such lists.",
        param="prompt",
    )


async def completions(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    body = decode_completion_request(await request.body())
    target = resolve(state, body.model)
    each = prompts(body.prompt)
    if len(each) * body.n > MAX_CHOICES:
        raise InvalidRequest(f"At most {MAX_CHOICES} choices (prompts x n) per request.", param="n")
    params = sampling_params(body, target.preset)
    if body.logprobs is not None:
        params = msgspec.structs.replace(params, logprobs=True, top_logprobs=body.logprobs)
    name = target.model.name
    jobs = [job for fields in each for job in choices(name, {**fields, "echo": body.echo}, params, body.n)]
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    shape = TextCompletion(name, include_usage, logprobs=body.logprobs is not None, n=body.n)
    lines = partial(_stream, state, shape=shape) if body.stream else None
    return await respond(request, state, jobs, target.running, lines, shape.whole, STREAM)


async def _stream(state: GatewayState, pendings: list[Pending], shape: TextCompletion) -> AsyncIterator[bytes]:
    usage = [0, 0]
    offsets = [0] * len(pendings)  # text_offset goes on from chunk to chunk
    try:
        async with aclosing(merged(state, pendings, KEEPALIVE_SECONDS)) as messages:
            async for index, message in messages:
                if message is None:
                    yield KEEPALIVE_LINE
                elif isinstance(message, TokenChunk):
                    logprobs = None
                    if message.logprobs is not None:
                        logprobs = legacy_logprobs(message.logprobs, offsets[index])
                        offsets[index] += sum(len(entry.token) for entry in message.logprobs)
                    yield shape.line([_choice(index, message.text, None, logprobs)])
                elif isinstance(message, Finished):
                    if index % shape.n == 0:  # the n choices of one prompt share it (choices go prompt by prompt)
                        usage[0] += message.prompt_tokens
                    usage[1] += message.completion_tokens
                    yield shape.line([_choice(index, "", _reason(message))])
        if shape.include_usage:
            yield shape.line([], _usage(*usage))
        yield b"data: [DONE]\n\n"
    except ApiError as error:
        yield error_line(error)


def _reason(finished: Finished) -> str:
    return "length" if finished.finish_reason == "length" else "stop"


def _choice(index: int, text: str, reason: str | None, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": reason}


def _top(entry: TokenLogprobs) -> dict[str, float]:
    # Keyed by text, so two tokens that read the same (bytes of one character) share a key: the
    # likelier one keeps it (``top`` is sorted likeliest first).
    top: dict[str, float] = {}
    for alternative in entry.top:
        top.setdefault(alternative.token, alternative.logprob)
    return top


def legacy_logprobs(entries: list[TokenLogprobs], offset: int = 0) -> dict[str, Any]:
    """The completions API's ``logprobs`` object; ``text_offset`` counts characters from
    ``offset`` (where these tokens' text begins in the choice's text)."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [_top(e) for e in entries],
        "text_offset": offsets,
    }


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class TextCompletion:
    """The ``text_completion`` objects of one request."""

    def __init__(self, model: str, include_usage: bool, logprobs: bool = False, n: int = 1) -> None:
        self.id = f"cmpl-{secrets.token_hex(12)}"
        self.n = n
        self.logprobs = logprobs
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def _object(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }

    def line(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        chunk = self._object(choices)
        if self.include_usage:
            chunk["usage"] = usage
        return data_event(chunk)

    def whole(self, collected: list[Collected]) -> dict[str, Any]:
        reply = self._object(
            [
                _choice(i, c.text, _reason(c.finished), legacy_logprobs(c.logprobs) if self.logprobs else None)
                for i, c in enumerate(collected)
            ]
        )
        # The prompt counts once per distinct prompt in OpenAI's usage; n copies share it.
        reply["usage"] = _usage(
            sum(c.finished.prompt_tokens for i, c in enumerate(collected) if i % self.n == 0),
            sum(c.finished.completion_tokens for c in collected),
        )
        return reply
