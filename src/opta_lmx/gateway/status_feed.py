"""The supervisor's events fanned out to the gateway's subscribers: model statuses
(``/admin/events``) and pull jobs (a pull's progress stream, in the admin API and Ollama's).

A subscriber holds at most one waiting item per key (a model's name, a job's id): a newer item
replaces one it has not read yet, so a slow reader costs memory bounded by the number of models
or jobs, and the latest state always arrives.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Generic, TypeVar

from opta_lmx.proto import ModelStatus, PullJob

T = TypeVar("T")


class Subscription(Generic[T]):
    """One client's items waiting to be sent, at most one per key; with ``only``, just the
    items of that key."""

    def __init__(self, key: Callable[[T], str], only: str | None = None) -> None:
        self._key = key
        self._only = only
        self._waiting: dict[str, T] = {}
        self._wake = asyncio.Event()
        self.closed = False

    def put(self, item: T) -> None:
        key = self._key(item)
        if self._only is not None and key != self._only:
            return
        self._waiting.pop(key, None)  # re-inserted last: items go out in order of change
        self._waiting[key] = item
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def next(self, timeout: float) -> list[T] | None:
        """The items waiting (at least one), or None after ``timeout`` seconds without any or
        once closed."""
        if self.closed and not self._waiting:
            return None
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            return None
        self._wake.clear()
        waiting = list(self._waiting.values())
        self._waiting.clear()
        return waiting or None


class Feed(Generic[T]):
    """Fans every item published out to the subscribed clients."""

    def __init__(self, key: Callable[[T], str]) -> None:
        self._key = key
        self._subscriptions: set[Subscription[T]] = set()
        self.closed = False

    def publish(self, item: T) -> None:
        for subscription in self._subscriptions:
            subscription.put(item)

    def subscribe(self, only: str | None = None) -> Subscription[T]:
        subscription = Subscription(self._key, only)
        if self.closed:
            subscription.close()
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription[T]) -> None:
        self._subscriptions.discard(subscription)

    def close(self) -> None:
        """End every stream (the server is shutting down)."""
        self.closed = True
        for subscription in self._subscriptions:
            subscription.close()


class StatusFeed(Feed[ModelStatus]):
    """Every status the gateway's model table accepts, one waiting per model."""

    def __init__(self) -> None:
        super().__init__(lambda status: status.name)


class PullFeed(Feed[PullJob]):
    """Every pull job the supervisor publishes, one waiting per job."""

    def __init__(self) -> None:
        super().__init__(lambda job: job.id)
