"""Constrained decoding with llguidance: a logits processor masks every token the grammar does
not allow next, so the output always fits it (JSON that validates against a schema, or the
model's tool-call format), also from a model that would never write it by itself.

Why llguidance: it is maintained (vLLM, SGLang and llama.cpp use it), computes a token mask in
tens of microseconds with no per-schema warm-up, needs neither torch nor a GPU (its own MLX
helper uses a Metal kernel, so the mask is applied here with ``mx.where``, which runs on every MLX
backend), and compiles JSON schema and Lark grammars with embedded JSON schemas, which the
tool-call grammar needs. xgrammar and outlines pull torch; lm-format-enforcer is far slower.

JSON is compact (no free whitespace): a model unsure of what comes next cannot pad forever.
"""

from __future__ import annotations

import json
from typing import Any

import llguidance
import llguidance.hf
import mlx.core as mx
import numpy as np
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

from opta_lmx.proto import Generate
from opta_lmx.worker.json_schema import closed_objects
from opta_lmx.worker.tool_calls import template_tools

_JSON_OPTIONS = {"whitespace_flexible": False}


class GrammarError(ValueError):
    """The schema or grammar does not compile; the message says why."""


class GrammarProcessor:
    """A logits processor for one request (``BatchGenerator`` calls it once per step with the
    tokens so far): it feeds the grammar the token sampled last, then masks the logits."""

    def __init__(self, matcher: llguidance.LLMatcher, grammar_vocab: int, eos: list[int]) -> None:
        self._matcher = matcher
        self._eos = eos
        self._bitmask = allocate_token_bitmask(1, grammar_vocab)
        self._started = False

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        matcher = self._matcher
        if self._started:  # the first call sees the prompt's last token: not the model's to check
            matcher.consume_token(int(tokens[-1].item()))
        self._started = True
        fill_next_token_bitmask(matcher, self._bitmask)
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")
        # The logits' width, not the config's: it may be padded past the tokenizer's vocabulary,
        # and multimodal configs keep vocab_size in a sub-table.
        width = logits.shape[-1]
        allowed = np.zeros(width, dtype=np.bool_)
        n = min(width, bits.size)
        allowed[:n] = bits[:n]
        if not allowed.any():  # a matcher in error allows nothing: end the request, never sample NaN
            allowed[self._eos] = True
        return mx.where(mx.array(allowed), logits, -mx.inf)


class Grammars:
    """Compiles grammars for one model's tokenizer (the llguidance tokenizer, about a second
    for a large vocabulary, is built on first use and kept)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer  # mlx-lm's TokenizerWrapper
        self._ll: llguidance.LLTokenizer | None = None

    def _ll_tokenizer(self) -> llguidance.LLTokenizer:
        if self._ll is None:
            self._ll = llguidance.hf.from_tokenizer(
                self._tokenizer._tokenizer, eos_token=sorted(self._tokenizer.eos_token_ids)
            )
        return self._ll

    def for_request(self, request: Generate) -> list[GrammarProcessor]:
        """The grammar processor the request needs (a forced tool call, a JSON schema or a Lark
        grammar), if any."""
        tokenizer = self._tokenizer
        if request.tools and request.tool_choice == "required":
            if not tokenizer.has_tool_calling or not _json_tool_format(tokenizer):
                raise GrammarError(
                    "tool_choice 'required' or a named function needs a model whose chat template "
                    "writes tool calls as JSON between tool-call markers; this model's does not."
                )
            grammar = tool_call_grammar(template_tools(request.tools), request.parallel_tool_calls, tokenizer)
        elif request.json_schema is not None:
            grammar = json_schema_grammar(request.json_schema)
        elif request.grammar is not None:
            grammar = llguidance.LLMatcher.grammar_from_lark(request.grammar)
        else:
            return []
        return [self.processor(grammar)]

    def processor(self, grammar: str) -> GrammarProcessor:
        error = llguidance.LLMatcher.validate_grammar(grammar)
        if error:
            raise GrammarError(error)
        tokenizer = self._ll_tokenizer()
        matcher = llguidance.LLMatcher(tokenizer, grammar)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        return GrammarProcessor(matcher, tokenizer.vocab_size, sorted(self._tokenizer.eos_token_ids))


def json_schema_grammar(schema_text: str) -> str:
    """The grammar of JSON that validates against the schema (``{"type": "object"}``: any object)."""
    try:
        schema = json.loads(schema_text)
    except ValueError as exc:
        raise GrammarError(f"the JSON schema is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise GrammarError("the JSON schema must be an object")
    return llguidance.LLMatcher.grammar_from_json_schema(closed_objects(schema), defaults=_JSON_OPTIONS)


def _json_tool_format(tokenizer: Any) -> bool:
    """Whether the model writes a tool call as one JSON object between its markers (the format
    ``tool_call_grammar`` constrains to)."""
    return getattr(tokenizer.tool_parser, "__module__", "") == "mlx_lm.tool_parsers.json_tools"


def tool_call_grammar(tools: list[dict[str, Any]], parallel: bool, tokenizer: Any) -> str:
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
    lark = "\n".join(
        [
            f"start: {calls}",
            f'call: {_marker(tokenizer.tool_call_start, tokenizer)} "\\n" ({" | ".join(bodies)}) "\\n" '
            f"{_marker(tokenizer.tool_call_end, tokenizer)}",
            *rules,
        ]
    )
    return llguidance.LLMatcher.grammar_from_lark(lark + "\n")


def _marker(text: str, tokenizer: Any) -> str:
    """A marker as a Lark terminal. A marker that is one token of the vocabulary (an added token)
    is named by its id: llguidance takes added tokens for special ones, which quoted text does
    not match."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return f"<[{ids[0]}]>" if len(ids) == 1 else json.dumps(text)
