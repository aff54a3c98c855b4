"""Data path: generate / tokens / cancel between the gateway and a worker.

``FromWorker`` messages are all ``array_like`` (msgspec refuses unions that mix array-like and
map-like structs, and the token stream is the hot path). Evolution rule for them: append new
fields at the end, with defaults; never reorder, never change a type.

Every ``Generate`` ends with exactly one terminal message, ``Finished`` or ``Failed``; every
``Embed`` with exactly one ``Embeddings`` or ``Failed``.
"""

from __future__ import annotations

from typing import Any

import msgspec


class ToolCall(msgspec.Struct, array_like=True, frozen=True):
    """A function call the model made; ``arguments`` is JSON text, as in OpenAI's API."""

    id: str
    name: str
    arguments: str


class ChatMessage(msgspec.Struct, frozen=True):
    """``tool_calls`` are an assistant turn's calls; a ``tool`` message answers ``tool_call_id``."""

    role: str
    content: str
    tool_calls: list[ToolCall] = []
    tool_call_id: str | None = None
    name: str | None = None


class Tool(msgspec.Struct, frozen=True):
    """A function the model may call; ``parameters`` is its arguments' JSON schema."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] = {}


class SamplingParams(msgspec.Struct, frozen=True):
    """Neutral defaults: a field left alone changes nothing."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = []
    top_k: int = 0
    min_p: float = 0.0
    # With a seed, sampling draws from the request's own random stream: same seed, same output.
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = {}
    # Per generated token: its log probability, and the ``top_logprobs`` most likely alternatives.
    logprobs: bool = False
    top_logprobs: int = 0


class Generate(msgspec.Struct, tag="generate", frozen=True):
    """A chat (``messages``, rendered with the model's template) or a plain completion
    (``prompt`` text or ``prompt_ids`` tokens, used as they are). ``echo`` sends the prompt's
    text back as the first chunk.

    ``json_schema`` (JSON text) constrains the output to JSON that validates against it. ``tools``
    are rendered through the chat template and the model's calls parsed; ``tool_choice`` is
    ``"auto"`` (the model decides) or ``"required"`` (constrained to call one of ``tools``, at most
    one call unless ``parallel_tool_calls``). ``grammar`` (a Lark grammar, llguidance's dialect)
    constrains the whole output to its language (the Responses API's custom tools). At most one
    constraint applies: a forced tool call first, then ``json_schema``, then ``grammar``.

    ``thinking`` False asks a reasoning model not to reason (the chat template's
    ``enable_thinking``, as Qwen3's reads it); None leaves the template's default.

    ``count_only`` asks for the prompt's length alone (Anthropic's ``count_tokens``): the worker
    renders and tokenizes it, answers ``Started`` and ``Finished``, and generates nothing."""

    request_id: int
    messages: list[ChatMessage] = []
    params: SamplingParams = SamplingParams()
    prompt: str | None = None
    prompt_ids: list[int] | None = None
    echo: bool = False
    json_schema: str | None = None
    tools: list[Tool] = []
    tool_choice: str = "auto"
    parallel_tool_calls: bool = True
    count_only: bool = False
    grammar: str | None = None
    thinking: bool | None = None


class Cancel(msgspec.Struct, tag="cancel", frozen=True):
    """Idempotent: cancelling a finished or unknown request is a no-op."""

    request_id: int


class Embed(msgspec.Struct, tag="embed", frozen=True):
    """Vectors for ``texts`` (tokenized by the worker) or ``token_ids`` (the model's input as it
    is), one each, in order; answered with one ``Embeddings`` or ``Failed``.

    An input longer than the model's context fails the request (``context_length_exceeded``,
    naming its index) unless ``truncate``. ``dimensions`` keeps the first that many components
    and renormalises them (models trained for it only). With a ``query``, each text gets a
    relevance score instead (``dimensions`` 1 in the reply): a cross-encoder scores the pair
    (query, text), an embedding model gives the cosine similarity of their vectors."""

    request_id: int
    texts: list[str] = []
    token_ids: list[list[int]] = []
    truncate: bool = False
    dimensions: int | None = None
    query: str | None = None


ToWorker = Generate | Cancel | Embed


class Started(msgspec.Struct, tag="s", array_like=True, frozen=True):
    """The prompt was accepted (it fits the context); generation begins. ``cached_tokens`` of the
    ``prompt_tokens`` come from the engine's prompt cache (known before the prefill)."""

    request_id: int
    prompt_tokens: int
    cached_tokens: int = 0


class TokenLogprob(msgspec.Struct, array_like=True, frozen=True):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobs(msgspec.Struct, array_like=True, frozen=True):
    """One generated token's log probability and, if asked, the most likely alternatives."""

    token: str
    logprob: float
    bytes: list[int]
    top: list[TokenLogprob] = []


class TokenChunk(msgspec.Struct, tag="t", array_like=True, frozen=True):
    """One or more tokens' worth of text (several when the engine is ahead of the socket).
    ``logprobs`` has one entry per token when the request asked for them; ``reasoning`` is text
    the model wrote inside its thinking markers (``text`` is the answer itself); ``tool_calls``
    are calls completed with this chunk, after its text."""

    request_id: int
    text: str
    n_tokens: int
    logprobs: list[TokenLogprobs] | None = None
    reasoning: str = ""
    tool_calls: list[ToolCall] = []


class Finished(msgspec.Struct, tag="f", array_like=True, frozen=True):
    """``cached_tokens``: how many of the ``prompt_tokens`` came from the engine's prompt cache
    (their KV state reused, not computed again). ``stop_sequence``: the stop string that ended the
    output, if one did."""

    request_id: int
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    stop_sequence: str | None = None  # the stop string that ended it (finish_reason "stop")


class Failed(msgspec.Struct, tag="e", array_like=True, frozen=True):
    """A request that cannot complete; ``code`` is one of ``opta_lmx.errors.FAILURE_CODES``."""

    request_id: int
    code: str
    message: str


class Embeddings(msgspec.Struct, tag="v", array_like=True, frozen=True):
    """The answer to an ``Embed``: ``vectors`` holds one vector per input, in order, each
    ``dimensions`` float32 values, little-endian (bytes: no per-number cost on the wire, and
    OpenAI's base64 encoding is exactly these bytes). ``prompt_tokens``: tokens of all inputs.
    ``method`` says how scores were made for a query: ``"cross_encoder"`` or ``"cosine"``
    (empty for plain embeddings)."""

    request_id: int
    vectors: bytes
    dimensions: int
    prompt_tokens: int
    method: str = ""


FromWorker = Started | TokenChunk | Finished | Failed | Embeddings
