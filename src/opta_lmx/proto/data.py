"""Data path: generate / tokens / cancel between the gateway and a worker.

``FromWorker`` messages are all ``array_like`` (msgspec refuses unions that mix array-like and
map-like structs, and the token stream is the hot path). Evolution rule for them: append new
fields at the end, with defaults; never reorder, never change a type.

Every ``Generate`` ends with exactly one terminal message, ``Finished`` or ``Failed``.
"""

from __future__ import annotations

import msgspec


class ChatMessage(msgspec.Struct, frozen=True):
    role: str
    content: str


class SamplingParams(msgspec.Struct, frozen=True):
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = []


class Generate(msgspec.Struct, tag="generate", frozen=True):
    request_id: int
    messages: list[ChatMessage]
    params: SamplingParams = SamplingParams()


class Cancel(msgspec.Struct, tag="cancel", frozen=True):
    """Idempotent: cancelling a finished or unknown request is a no-op."""

    request_id: int


ToWorker = Generate | Cancel


class Started(msgspec.Struct, tag="s", array_like=True, frozen=True):
    """The prompt was accepted (it fits the context); generation begins."""

    request_id: int
    prompt_tokens: int


class TokenChunk(msgspec.Struct, tag="t", array_like=True, frozen=True):
    """One or more tokens' worth of text (several when the engine is ahead of the socket)."""

    request_id: int
    text: str
    n_tokens: int


class Finished(msgspec.Struct, tag="f", array_like=True, frozen=True):
    request_id: int
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class Failed(msgspec.Struct, tag="e", array_like=True, frozen=True):
    """A request that cannot complete; ``code`` is one of ``opta_lmx.errors.FAILURE_CODES``."""

    request_id: int
    code: str
    message: str


FromWorker = Started | TokenChunk | Finished | Failed
