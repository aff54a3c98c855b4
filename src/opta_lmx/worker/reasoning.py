"""Reasoning text: what a model writes between its thinking markers (``<think>`` … ``</think>``)
goes to ``reasoning_content``, the rest to ``content``. Markers are never emitted, also when a
piece of text splits one."""

from __future__ import annotations


class ReasoningSplitter:
    """Feed text pieces; get back ``(reasoning, content)`` that is safe to emit now."""

    def __init__(self, start: str, end: str, inside: bool) -> None:
        self._start = start
        self._end = end
        self.inside = inside  # True while between the markers
        self._pending = ""

    def feed(self, text: str) -> tuple[str, str]:
        self._pending += text
        reasoning: list[str] = []
        content: list[str] = []
        while True:
            marker = self._end if self.inside else self._start
            at = self._pending.find(marker)
            if at < 0:
                break
            (reasoning if self.inside else content).append(self._pending[:at])
            self._pending = self._pending[at + len(marker) :]
            self.inside = not self.inside
        keep = _partial_suffix(self._pending, self._end if self.inside else self._start)
        ready, self._pending = self._pending[: len(self._pending) - keep], self._pending[len(self._pending) - keep :]
        (reasoning if self.inside else content).append(ready)
        return "".join(reasoning), "".join(content)

    def flush(self) -> tuple[str, str]:
        rest, self._pending = self._pending, ""
        return (rest, "") if self.inside else ("", rest)


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of ``text`` that begins ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


def starts_inside(prompt_text: str, start: str, end: str) -> bool:
    """Templates of reasoning models often open the thinking block in the generation prompt."""
    return prompt_text.rfind(start) > prompt_text.rfind(end)
