"""From a ``Generate`` to what the MLX engine runs: what every engine makes of it
(``prompt_checks.accept``: the prompt's tokens, checked against the context and the vocabulary,
and the request's ``TextStream``), and the MLX sampler and logits processors (the grammar's mask
last)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from opta_lmx.proto import Failed, Generate, SamplingParams
from opta_lmx.worker.engines.mlx_grammar import Grammars
from opta_lmx.worker.engines.mlx_kv_reuse import Waiting
from opta_lmx.worker.engines.mlx_sampling import logits_processors_for, sampler_for
from opta_lmx.worker.prompt_checks import Refused, accept
from opta_lmx.worker.text_stream import TextStream
from opta_lmx.worker.tool_calls import template_messages, template_tools


@dataclass
class Prepared:
    """A request that fits: everything a generator and the text path need for it."""

    prompt: list[int]
    max_tokens: int
    text: TextStream
    sampler: Callable[..., Any]
    processors: list[Any]
    params: SamplingParams
    constrained: bool


class RequestReader:
    """Renders and checks requests for one model (its tokenizer, context length and grammars)."""

    def __init__(self, tokenizer: Any, ctx_len: int, grammars: Grammars) -> None:
        self._tokenizer = tokenizer
        self._ctx_len = ctx_len
        self._grammars = grammars

    def prompt_tokens(self, request: Generate) -> list[int]:
        """The chat template's rendering of the messages, or a completion's prompt as it is."""
        if request.prompt_ids is not None:
            return list(request.prompt_ids)
        if request.prompt is not None:
            tokenizer = self._tokenizer
            bos = tokenizer.bos_token is not None and not request.prompt.startswith(tokenizer.bos_token)
            return list(tokenizer.encode(request.prompt, add_special_tokens=bos))
        tools = template_tools(request.tools) or None
        messages = template_messages(request.messages)
        extra = {} if request.thinking is None else {"enable_thinking": request.thinking}
        return list(self._tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, **extra))

    def prepare(self, request: Generate) -> Prepared | Failed:
        try:
            accepted = accept(request, self._tokenizer, self._ctx_len, self.prompt_tokens, self._grammars.for_request)
        except Refused as exc:
            return exc.failed
        params = request.params
        # The grammar's mask comes last: nothing after it may make a banned token likely.
        processors = logits_processors_for(params, self._ctx_len) + accepted.grammar
        return Prepared(
            accepted.prompt, accepted.max_tokens, accepted.text, sampler_for(params), processors, params, bool(accepted.grammar)
        )


PARKED = -1  # the uid of a request not yet in a generator


@dataclass
class Running:
    """A request in the engine: prepared, then parked or in a generator."""

    request_id: int
    prepared: Prepared
    uid: int = PARKED  # the generator's id for it
    cached_tokens: int = 0  # prompt tokens taken from the prompt cache
    generated: int = 0
    waiting: Waiting | None = None  # while parked: what for

    @property
    def prompt_tokens(self) -> int:
        return len(self.prepared.prompt)

    @property
    def text(self) -> TextStream:
        return self.prepared.text

    @property
    def top_logprobs(self) -> int | None:  # None: no logprobs asked for
        params = self.prepared.params
        return params.top_logprobs if params.logprobs else None
