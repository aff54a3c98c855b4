"""What every engine does with a ``Generate`` before it runs it, with the same answers whatever
the engine: render the prompt, build the grammar, close a thinking block the template opened when
a grammar must shape the answer, check that the prompt fits the context and its token ids are in
the vocabulary, and make the request's ``TextStream`` (reasoning split, stop strings, tool calls).
Each engine adds its own sampling on top (``mlx_requests``, ``gguf``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from opta_lmx.proto import Failed, Generate
from opta_lmx.worker.grammar import GrammarError
from opta_lmx.worker.reasoning import ReasoningSplitter, starts_inside
from opta_lmx.worker.stops import StopMatcher
from opta_lmx.worker.text_stream import TextStream
from opta_lmx.worker.tool_calls import tool_splitter

Grammar = TypeVar("Grammar")


class Refused(Exception):
    """The request cannot start; ``failed`` is the answer to send."""

    def __init__(self, failed: Failed) -> None:
        super().__init__(failed.message)
        self.failed = failed


class Tokenizer(Protocol):
    """What both engines' tokenizers offer (mlx-lm's ``TokenizerWrapper``, ``GgufTokenizer``)."""

    think_start: str | None
    think_end: str | None

    @property
    def has_thinking(self) -> bool: ...
    @property
    def detokenizer(self) -> Any: ...
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...
    def decode(self, tokens: list[int]) -> str: ...
    def __len__(self) -> int: ...


@dataclass
class Accepted(Generic[Grammar]):
    """A request that fits, and what every engine needs to run it."""

    prompt: list[int]
    max_tokens: int
    text: TextStream
    grammar: Grammar  # falsy when the request has no constraint


def accept(
    request: Generate,
    tokenizer: Tokenizer,
    ctx_len: int,
    render: Callable[[Generate], list[int]],
    grammar_for: Callable[[Generate], Grammar],
) -> Accepted[Grammar]:
    """``request`` made ready to run with ``render`` (its prompt's tokens; it may raise ``Refused``
    itself) and ``grammar_for`` (the engine's form of its constraint); raises ``Refused``."""
    rid = request.request_id
    try:
        prompt = render(request)
    except Refused:
        raise
    except Exception as exc:  # the chat template rejected the messages (jinja raise)
        raise Refused(Failed(rid, "invalid_request", f"chat template failed: {exc}")) from None
    try:
        grammar = grammar_for(request)
    except GrammarError as exc:
        raise Refused(Failed(rid, "invalid_request", str(exc))) from None
    except Exception as exc:  # llguidance cannot take this vocabulary, or another fault
        raise Refused(Failed(rid, "engine_error", f"constrained decoding unavailable: {type(exc).__name__}: {exc}")) from None
    reasoning = reasoning_splitter(tokenizer, prompt)
    if grammar and reasoning is not None and reasoning.inside:
        # A grammar holds from the first token: close the thinking block the template opened
        # (as templates do with thinking switched off), so the constrained text is the answer.
        prompt = prompt + tokenizer.encode(f"{tokenizer.think_end}\n\n", add_special_tokens=False)
        reasoning = reasoning_splitter(tokenizer, prompt)
    max_tokens = max_tokens_for(request, prompt, ctx_len, len(tokenizer))
    stops = StopMatcher(request.params.stop)
    text = TextStream(tokenizer.detokenizer, stops, reasoning, tool_splitter(tokenizer, request.tools))
    return Accepted(prompt, max_tokens, text, grammar)


def reasoning_splitter(tokenizer: Tokenizer, prompt: list[int]) -> ReasoningSplitter | None:
    """The request's reasoning split, inside the thinking block when the prompt opened it; None
    for a model without thinking markers."""
    start, end = tokenizer.think_start, tokenizer.think_end
    if not tokenizer.has_thinking or start is None or end is None:
        return None
    tail = tokenizer.decode(prompt[-16:])  # enough to see whether the prompt opened it
    return ReasoningSplitter(start, end, starts_inside(tail, start, end))


def max_tokens_for(request: Generate, prompt: list[int], ctx_len: int, vocab_size: int) -> int:
    """The request's ``max_tokens``, cut to the room the prompt leaves in the context; raises
    ``Refused`` when the prompt does not fit, or a token id (prompt or logit bias) is not one of
    the model's."""
    rid, params = request.request_id, request.params
    room = ctx_len - len(prompt)
    if room <= 0 or not prompt:
        raise Refused(Failed(
            rid,
            "context_length_exceeded",
            f"This model's maximum context length is {ctx_len} tokens, but the messages resulted in "
            f"{len(prompt)} tokens.",
        ))
    max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
    if max_tokens < 1:  # the gateway refuses these; a direct caller gets a clear answer
        raise Refused(Failed(rid, "invalid_request", "max_tokens must be at least 1"))
    if any(not 0 <= t < vocab_size for t in (*(request.prompt_ids or ()), *params.logit_bias)):
        raise Refused(Failed(rid, "invalid_request", f"token ids must be in 0..{vocab_size - 1}"))
    return max_tokens
