"""A GGUF model's vocabulary and chat template, with the part of mlx-lm's ``TokenizerWrapper``
interface that the worker's shared text code uses: ``encode``/``decode``, the end tokens, a
streaming detokenizer per request, the chat template, and the tool-call and thinking markers,
which mlx-lm's own rules infer from the template and the vocabulary (reused, not rewritten).

Text comes from llama.cpp's token pieces (bytes): a piece may end inside a multi-byte character,
so the detokenizer holds bytes back until they are valid UTF-8. Special tokens are rendered as
text, as mlx-lm's detokenizers do, so thinking and tool-call markers reach the splitters.
"""

from __future__ import annotations

import codecs
import ctypes
import importlib
from typing import Any

import llama_cpp
from mlx_lm.tokenizer_utils import _infer_thinking, _infer_tool_parser
from transformers.utils.chat_template_utils import render_jinja_template

from opta_lmx.worker.engines.gguf_context import tokenize


class NoChatTemplate(ValueError):
    """The model has no chat template and none is configured: chat requests cannot be rendered."""


class PieceDetokenizer:
    """mlx-lm's streaming detokenizer interface (``add_token``, ``last_segment``, ``finalize``)
    over a vocabulary's token pieces."""

    def __init__(self, pieces: TokenPieces) -> None:
        self._pieces = pieces
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._segment = ""

    def add_token(self, token: int) -> None:
        self._segment += self._utf8.decode(self._pieces.piece(token))

    def finalize(self) -> None:
        """Whatever bytes are still held (a character cut off) become U+FFFD."""
        self._segment += self._utf8.decode(b"", final=True)

    @property
    def last_segment(self) -> str:
        """The text completed since the last read."""
        segment, self._segment = self._segment, ""
        return segment


class TokenPieces:
    """Token id -> piece bytes (special tokens rendered), cached."""

    def __init__(self, vocab: Any) -> None:
        self._vocab = vocab
        self._buffer = ctypes.create_string_buffer(256)
        self._cache: dict[int, bytes] = {}

    def piece(self, token: int) -> bytes:
        cached = self._cache.get(token)
        if cached is None:
            cached = self._cache[token] = self._render(token)
        return cached

    def _render(self, token: int) -> bytes:
        n = llama_cpp.llama_token_to_piece(self._vocab, token, self._buffer, len(self._buffer), 0, True)
        if n < 0:  # a longer piece than the buffer: -n is its length
            self._buffer = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, self._buffer, len(self._buffer), 0, True)
        return self._buffer.raw[:n]


class GgufTokenizer:
    """The vocabulary of a loaded llama.cpp model. ``chat_template`` (Jinja) replaces the one in
    the file's metadata when given."""

    def __init__(self, model: Any, chat_template: str = "") -> None:
        vocab = llama_cpp.llama_model_get_vocab(model)
        self.vocab = vocab
        self.vocab_size = llama_cpp.llama_vocab_n_tokens(vocab)
        self.pieces = TokenPieces(vocab)
        self.eos_token_ids = frozenset(t for t in range(self.vocab_size) if llama_cpp.llama_vocab_is_eog(vocab, t))
        bos = llama_cpp.llama_vocab_bos(vocab)
        self.bos_token_id = bos if bos >= 0 else None
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab)) and self.bos_token_id is not None
        self.bos_token = self.decode([bos]) if self.bos_token_id is not None else None
        eos = llama_cpp.llama_vocab_eos(vocab)
        self.eos_token = self.decode([eos]) if eos >= 0 else None
        builtin = llama_cpp.llama_model_chat_template(model, None)
        self.chat_template = chat_template or (builtin.decode("utf-8", "replace") if builtin else None)
        self._texts: dict[str, int] | None = None
        self.tool_parser: Any = None
        self.tool_call_start: str | None = None
        self.tool_call_end: str | None = None
        parser_name = _infer_tool_parser(self)
        if parser_name is not None:
            module = importlib.import_module(f"mlx_lm.tool_parsers.{parser_name}")
            self.tool_parser = module.parse_tool_call
            self.tool_call_start, self.tool_call_end = module.tool_call_start, module.tool_call_end
        self.think_start, self.think_end, _, _ = _infer_thinking(self)

    @property
    def has_tool_calling(self) -> bool:
        return self.tool_call_start is not None

    @property
    def has_thinking(self) -> bool:
        return self.think_start is not None

    @property
    def detokenizer(self) -> PieceDetokenizer:
        """A fresh streaming detokenizer (one per request)."""
        return PieceDetokenizer(self.pieces)

    def __len__(self) -> int:
        return self.vocab_size

    def get_vocab(self) -> dict[str, int]:
        """Token text -> id, as the GGUF spells the tokens (what mlx-lm's inference rules read)."""
        if self._texts is None:
            get_text = llama_cpp.llama_vocab_get_text
            texts = (get_text(self.vocab, t) for t in range(self.vocab_size))
            self._texts = {text.decode("utf-8", "replace"): t for t, text in enumerate(texts) if text is not None}
        return self._texts

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Tokens of ``text``; special tokens written in it are parsed as such (as Hugging Face
        tokenizers do); ``add_special_tokens`` adds the BOS the model wants."""
        return tokenize(self.vocab, text, add_special_tokens)

    def decode(self, tokens: list[int]) -> str:
        return b"".join(self.pieces.piece(t) for t in tokens).decode("utf-8", "replace")

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        thinking: bool | None = None,
    ) -> list[int]:
        """The messages rendered with the chat template (Hugging Face's Jinja rendering, with the
        variables it gives templates), as tokens; the BOS is added when the model wants one and
        the template did not write it. ``thinking`` is the template's ``enable_thinking`` (None:
        on for a model with thinking markers)."""
        if not self.chat_template:
            raise NoChatTemplate(
                "this model has no chat template (tokenizer.chat_template in the GGUF): use "
                "/v1/completions, or configure one with chat_template in [models.options]"
            )
        rendered, _ = render_jinja_template(
            [messages],
            tools=tools,
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            enable_thinking=self.has_thinking if thinking is None else thinking,
        )
        return self.prompt_tokens(rendered[0])

    def prompt_tokens(self, text: str) -> list[int]:
        """A prompt's tokens, with the BOS the model wants unless the text starts with it."""
        tokens = self.encode(text, add_special_tokens=False)
        if self.add_bos and (not tokens or tokens[0] != self.bos_token_id):
            tokens.insert(0, self.bos_token_id)  # type: ignore[arg-type]
        return tokens

