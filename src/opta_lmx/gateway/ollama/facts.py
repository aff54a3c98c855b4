"""What is known of a model without loading it (``ModelFacts``), and how capabilities follow
from its files: ``thinking`` is the test mlx-lm's tokenizer wrapper makes (a pair of thinking
markers in the vocabulary), ``tools`` means the chat template renders a ``tools`` variable."""

from __future__ import annotations

import re
from typing import Any

import msgspec

# Thinking marker pairs the worker's reasoning split knows (those mlx-lm infers from the vocab).
THINKING_MARKERS = (
    ("<think>", "</think>"),
    ("<longcat_think>", "</longcat_think>"),
    ("<|think:start|>", "<|think:end|>"),
    ("<|channel>", "<channel|>"),
)
_XTML_MARKERS = ("<|open|>", "<|close|>", "<|sep|>", "<|end_of_msg|>")
_TOOLS_VARIABLE = re.compile(r"\btools\b")


class ModelFacts(msgspec.Struct, frozen=True):
    """``format`` is Ollama's word: "safetensors" (an MLX directory) or "gguf"."""

    format: str
    architecture: str
    context_length: int
    parameter_count: int
    quantization: str
    size: int  # bytes on disk
    modified: float  # the newest file's mtime, seconds since the epoch
    template: str  # the chat template (Jinja), "" if the model has none
    capabilities: list[str]
    info: dict[str, Any]  # Ollama's ``model_info``


def unknown(format: str, size: int = 0, modified: float = 0.0) -> ModelFacts:
    """What is known of a model whose files cannot be read (missing, damaged, no reader)."""
    return ModelFacts(format, "", 0, 0, "", size, modified, "", ["completion"], {"general.architecture": ""})


def capabilities(template: str, vocab: set[str]) -> list[str]:
    """Ollama's capability names this model has: it completes text; ``tools`` if its template
    renders tools; ``thinking`` if its vocabulary has thinking markers."""
    found = ["completion"]
    if _TOOLS_VARIABLE.search(template):
        found.append("tools")
    if has_thinking_markers(vocab):
        found.append("thinking")
    return found


def has_thinking_markers(vocab: set[str]) -> bool:
    return any(start in vocab and end in vocab for start, end in THINKING_MARKERS) or all(
        marker in vocab for marker in _XTML_MARKERS
    )


def marker_candidates() -> set[str]:
    """Every vocabulary entry ``has_thinking_markers`` looks at (a vocabulary is large: look
    these up instead of keeping it)."""
    return {m for pair in THINKING_MARKERS for m in pair} | set(_XTML_MARKERS)


def human_number(n: int) -> str:
    """Parameter counts as Ollama writes them: 8.0B, 135M, 512K."""
    if n >= 1_000_000_000:
        return f"{n / 1e9:.1f}B"
    if n >= 1_000_000:
        return f"{n / 1e6:.0f}M"
    if n >= 1_000:
        return f"{n / 1e3:.0f}K"
    return str(n)
