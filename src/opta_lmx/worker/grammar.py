"""Constrained decoding with llguidance, for every engine: the grammar a request needs (JSON that
validates against a schema, the model's tool-call format, or a Lark grammar), compiled for the
model's vocabulary, and per step the set of tokens it allows next as a numpy bool array. An engine
only applies that mask to its own logits (``mx.where`` in the MLX engine, numpy in the GGUF one),
so both model formats share one grammar system.

Why llguidance: it is maintained (vLLM, SGLang and llama.cpp use it), computes a token mask in
tens of microseconds with no per-schema warm-up, needs neither torch nor a GPU, reads both a
Hugging Face tokenizer and a llama.cpp vocabulary, and compiles JSON schema and Lark grammars with
embedded JSON schemas, which the tool-call grammar needs. xgrammar and outlines pull torch;
lm-format-enforcer is far slower.

JSON is compact (no free whitespace): a model unsure of what comes next cannot pad forever.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Protocol

import llguidance
import numpy as np
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

from opta_lmx.proto import Generate
from opta_lmx.worker.json_schema import closed_objects
from opta_lmx.worker.tool_calls import template_tools

_JSON_OPTIONS = {"whitespace_flexible": False}
_JSON_TOOLS_PARSER = "mlx_lm.tool_parsers.json_tools"


class GrammarError(ValueError):
    """The schema or grammar does not compile; the message says why."""


class ModelTokenizer(Protocol):
    """What the grammars need to know of a model's tokenizer (mlx-lm's ``TokenizerWrapper`` has
    it, and so does the GGUF engine's tokenizer)."""

    @property
    def eos_token_ids(self) -> Iterable[int]: ...

    @property
    def has_tool_calling(self) -> bool: ...

    @property
    def tool_call_start(self) -> str | None: ...

    @property
    def tool_call_end(self) -> str | None: ...

    @property
    def tool_parser(self) -> Any: ...

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


class TokenMask:
    """One request's grammar state: which tokens may come next, and the token that came."""

    def __init__(self, matcher: llguidance.LLMatcher, grammar_vocab: int, eos: list[int]) -> None:
        self._matcher = matcher
        self._eos = eos
        self._bitmask = allocate_token_bitmask(1, grammar_vocab)

    def consume(self, token: int) -> None:
        """The token the model produced (one the last mask allowed)."""
        self._matcher.consume_token(token)

    def allowed(self, width: int) -> np.ndarray:
        """A bool array of ``width`` (the logits' width: it may be padded past the tokenizer's
        vocabulary), true where the grammar allows the token next. Never all false: a matcher in
        error allows the end tokens, so the request ends instead of sampling from nothing."""
        fill_next_token_bitmask(self._matcher, self._bitmask)
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")
        allowed = np.zeros(width, dtype=np.bool_)
        n = min(width, bits.size)
        allowed[:n] = bits[:n]
        if not allowed.any():
            allowed[self._eos] = True
        return allowed


class Grammars:
    """Compiles grammars for one model's vocabulary. ``make_ll_tokenizer`` builds llguidance's
    view of it (about a second for a large vocabulary): called on first use, kept after."""

    def __init__(self, tokenizer: ModelTokenizer, make_ll_tokenizer: Callable[[], llguidance.LLTokenizer]) -> None:
        self._tokenizer = tokenizer
        self._make_ll = make_ll_tokenizer
        self._ll: llguidance.LLTokenizer | None = None

    def grammar_for(self, request: Generate) -> str | None:
        """The grammar the request needs, if any: a forced tool call first, then a JSON schema,
        then a Lark grammar (``Generate``'s order)."""
        tokenizer = self._tokenizer
        if request.tools and request.tool_choice == "required":
            if not tokenizer.has_tool_calling or not json_tool_format(tokenizer):
                raise GrammarError(
                    "tool_choice 'required' or a named function needs a model whose chat template "
                    "writes tool calls as JSON between tool-call markers; this model's does not."
                )
            return tool_call_grammar(template_tools(request.tools), request.parallel_tool_calls, tokenizer)
        if request.json_schema is not None:
            return json_schema_grammar(request.json_schema)
        if request.grammar is not None:
            return lark_grammar(request.grammar)
        return None

    def mask_for(self, request: Generate) -> TokenMask | None:
        grammar = self.grammar_for(request)
        return None if grammar is None else self.compile(grammar)

    def compile(self, grammar: str) -> TokenMask:
        error = llguidance.LLMatcher.validate_grammar(grammar)
        if error:
            raise GrammarError(error)
        if self._ll is None:
            self._ll = self._make_ll()
        matcher = llguidance.LLMatcher(self._ll, grammar)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        return TokenMask(matcher, self._ll.vocab_size, sorted(self._tokenizer.eos_token_ids))


def json_schema_grammar(schema_text: str) -> str:
    """The grammar of JSON that validates against the schema (``{"type": "object"}``: any object)."""
    try:
        schema = json.loads(schema_text)
    except ValueError as exc:
        raise GrammarError(f"the JSON schema is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise GrammarError("the JSON schema must be an object")
    return llguidance.LLMatcher.grammar_from_json_schema(closed_objects(schema), defaults=_JSON_OPTIONS)


def lark_grammar(text: str) -> str:
    """A Lark grammar (llguidance's dialect: ``%json {...}`` embeds a JSON schema) as a grammar
    the matcher takes; errors are raised by ``Grammars.compile``."""
    return llguidance.LLMatcher.grammar_from_lark(text if text.endswith("\n") else text + "\n")


def json_tool_format(tokenizer: ModelTokenizer) -> bool:
    """Whether the model writes a tool call as one JSON object between its markers (the format
    ``tool_call_grammar`` constrains to)."""
    return getattr(tokenizer.tool_parser, "__module__", "") == _JSON_TOOLS_PARSER


def tool_call_grammar(tools: list[dict[str, Any]], parallel: bool, tokenizer: ModelTokenizer) -> str:
    """Calls of the given tools in the JSON tool-call format (``<tool_call>`` ``{"name": ...,
    "arguments": {...}}`` ``</tool_call>``, Qwen's and Hermes's): what ``tool_choice`` =
    ``"required"`` or a named function forces."""
    # Each tool's arguments are a grammar rule of their own, so "$ref"s within its schema (to its
    # "$defs", as pydantic writes them) resolve against that schema.
    rules = []
    bodies = []
    for i, tool in enumerate(tools):
        function = tool["function"]
        head = json.dumps('{"name": ' + json.dumps(function["name"]) + ', "arguments": ')
        bodies.append(f"body_{i}")
        rules.append(f'body_{i}: {head} args_{i} "}}"')
        arguments = closed_objects(function["parameters"])
        rules.append(f"args_{i}: %json {json.dumps({**arguments, 'x-guidance': _JSON_OPTIONS})}")
    # Several calls one per line; a line break after the last one may end the output too.
    calls = 'call ("\\n" call)* "\\n"?' if parallel else 'call "\\n"?'
    start, end = tokenizer.tool_call_start or "", tokenizer.tool_call_end or ""
    lark = "\n".join(
        [
            f"start: {calls}",
            f'call: {_marker(start, tokenizer)} "\\n" ({" | ".join(bodies)}) "\\n" {_marker(end, tokenizer)}',
            *rules,
        ]
    )
    return llguidance.LLMatcher.grammar_from_lark(lark + "\n")


def _marker(text: str, tokenizer: ModelTokenizer) -> str:
    """A marker as a Lark terminal. A marker that is one token of the vocabulary (an added token)
    is named by its id: llguidance takes added tokens for special ones, which quoted text does
    not match."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return f"<[{ids[0]}]>" if len(ids) == 1 else json.dumps(text)
