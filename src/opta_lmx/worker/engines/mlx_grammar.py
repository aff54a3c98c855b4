"""Constrained decoding in the MLX engine: the shared grammars (``worker/grammar.py``) as mlx-lm
logits processors. A processor feeds the grammar the token sampled last and masks every token it
does not allow next with ``mx.where``, which runs on every MLX backend (llguidance's own MLX
helper is a Metal kernel).
"""

from __future__ import annotations

from typing import Any

import llguidance.hf
import mlx.core as mx

from opta_lmx.proto import Generate
from opta_lmx.worker.grammar import GrammarError, TokenMask, json_schema_grammar
from opta_lmx.worker.grammar import Grammars as _Grammars

__all__ = ["GrammarError", "GrammarProcessor", "Grammars", "json_schema_grammar"]


class GrammarProcessor:
    """A logits processor for one request (``BatchGenerator`` calls it once per step with the
    tokens so far): it feeds the grammar the token sampled last, then masks the logits."""

    def __init__(self, mask: TokenMask) -> None:
        self._mask = mask
        self._started = False

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        if self._started:  # the first call sees the prompt's last token: not the model's to check
            self._mask.consume(int(tokens[-1].item()))
        self._started = True
        allowed = self._mask.allowed(logits.shape[-1])
        return mx.where(mx.array(allowed), logits, -mx.inf)


class Grammars:
    """The grammars of one mlx-lm tokenizer, as logits processors."""

    def __init__(self, tokenizer: Any) -> None:  # mlx-lm's TokenizerWrapper
        self._grammars = _Grammars(
            tokenizer,
            lambda: llguidance.hf.from_tokenizer(tokenizer._tokenizer, eos_token=sorted(tokenizer.eos_token_ids)),
        )

    def for_request(self, request: Generate) -> list[GrammarProcessor]:
        """The grammar processor the request needs (a forced tool call, a JSON schema or a Lark
        grammar), if any."""
        grammar = self._grammars.grammar_for(request)
        return [] if grammar is None else [self.processor(grammar)]

    def processor(self, grammar: str) -> GrammarProcessor:
        return GrammarProcessor(self._grammars.compile(grammar))
