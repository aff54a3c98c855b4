"""Splitting streamed text at a pair of markers (``<think>``/``</think>``, ``<tool_call>``/
``</tool_call>``): the markers are never emitted, also when a piece of text splits one, and the
text between them is told apart from the text outside."""

from __future__ import annotations

from typing import NamedTuple


class Piece(NamedTuple):
    inside: bool  # between the markers
    text: str
    closes: bool  # the end marker follows this (inside) text: a block is complete


class MarkerSplitter:
    """Feed text pieces; get back the ``Piece``s that are safe to act on now."""

    def __init__(self, start: str, end: str, inside: bool = False) -> None:
        self._start = start
        self._end = end
        self.inside = inside
        self._pending = ""

    def feed(self, text: str) -> list[Piece]:
        self._pending += text
        pieces: list[Piece] = []
        while True:
            marker = self._end if self.inside else self._start
            if not marker:  # no end marker (Mistral's tool calls): the block runs to the end
                break
            at = self._pending.find(marker)
            if at < 0:
                break
            pieces.append(Piece(self.inside, self._pending[:at], self.inside))
            self._pending = self._pending[at + len(marker) :]
            self.inside = not self.inside
        # A tail that may be the beginning of the next marker waits for more text.
        keep = _partial_suffix(self._pending, self._end if self.inside else self._start)
        ready, self._pending = self._pending[: len(self._pending) - keep], self._pending[len(self._pending) - keep :]
        if ready:
            pieces.append(Piece(self.inside, ready, False))
        return pieces

    def flush(self) -> list[Piece]:
        """What is held back, at the end of the text (a block left open stays unclosed)."""
        rest, self._pending = self._pending, ""
        return [Piece(self.inside, rest, False)] if rest else []


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of ``text`` that begins ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
