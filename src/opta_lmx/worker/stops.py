"""Stop strings over a token stream: never emit a stop string, even when tokens split it."""

from __future__ import annotations


class StopMatcher:
    """Feed text pieces; get back the text that is safe to emit.

    Text that could still grow into a stop string is held back until the next piece decides it.
    """

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""
        self.matched: str | None = None  # the stop string that ended the text

    @property
    def stopped(self) -> bool:
        return self.matched is not None

    def feed(self, text: str) -> str:
        """Safe text to emit now; sets ``matched`` when a stop string appeared (it is cut off)."""
        if not self._stops:
            return text
        self._pending += text
        found = [(at, stop) for stop in self._stops if (at := self._pending.find(stop)) >= 0]
        if found:
            cut, self.matched = min(found, key=lambda item: item[0])  # the first to appear
            out, self._pending = self._pending[:cut], ""
            return out
        keep = self._longest_stop_prefix_suffix()
        out = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(out) :]
        return out

    def flush(self) -> str:
        """Whatever is held back, at the end of generation."""
        out, self._pending = self._pending, ""
        return out

    def _longest_stop_prefix_suffix(self) -> int:
        pending = self._pending
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(pending)), best, -1):
                if pending.endswith(stop[:n]):
                    best = n
                    break
        return best
