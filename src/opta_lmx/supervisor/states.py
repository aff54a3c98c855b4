"""Process states, named as supervisord names them, and the crash backoff rule."""

from __future__ import annotations

import enum
from collections import deque


class State(str, enum.Enum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


class Backoff:
    """Capped exponential delays (initial, 2x, 4x ... cap) over the failures inside a window.

    More than ``max_failures`` failures within ``window`` seconds means give up (FATAL).
    """

    def __init__(self, initial: float, cap: float, max_failures: int, window: float) -> None:
        self._initial = initial
        self._cap = cap
        self._max_failures = max_failures
        self._window = window
        self._failures: deque[float] = deque()

    def record_failure(self, now: float) -> float | None:
        """The delay before the next try, or None when the process should go FATAL."""
        self._failures.append(now)
        while self._failures and now - self._failures[0] > self._window:
            self._failures.popleft()
        count = len(self._failures)
        if count > self._max_failures:
            return None
        return min(self._initial * 2 ** (count - 1), self._cap)

    def reset(self) -> None:
        self._failures.clear()
