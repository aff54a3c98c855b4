"""Reasoning text: what a model writes between its thinking markers (``<think>`` … ``</think>``)
goes to ``reasoning_content``, the rest to ``content``. Markers are never emitted, also when a
piece of text splits one."""

from __future__ import annotations

from opta_lmx.worker.markers import MarkerSplitter, Piece


class ReasoningSplitter:
    """Feed text pieces; get back ``(reasoning, content)`` that is safe to emit now."""

    def __init__(self, start: str, end: str, inside: bool) -> None:
        self._splitter = MarkerSplitter(start, end, inside)

    @property
    def inside(self) -> bool:
        return self._splitter.inside

    def feed(self, text: str) -> tuple[str, str]:
        return _join(self._splitter.feed(text))

    def flush(self) -> tuple[str, str]:
        return _join(self._splitter.flush())


def _join(pieces: list[Piece]) -> tuple[str, str]:
    return "".join(p.text for p in pieces if p.inside), "".join(p.text for p in pieces if not p.inside)


def starts_inside(prompt_text: str, start: str, end: str) -> bool:
    """Templates of reasoning models often open the thinking block in the generation prompt."""
    return prompt_text.rfind(start) > prompt_text.rfind(end)
