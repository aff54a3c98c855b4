"""The supervisor's status events, fanned out to the gateway's subscribers (``/admin/events``).

A subscriber holds at most one waiting status per model: a newer status of a model replaces one
it has not read yet, so a slow reader costs memory bounded by the number of models.
"""

from __future__ import annotations

import asyncio

from opta_lmx.proto import ModelStatus


class Subscription:
    """One client's statuses waiting to be sent, at most one per model."""

    def __init__(self) -> None:
        self._waiting: dict[str, ModelStatus] = {}
        self._wake = asyncio.Event()
        self.closed = False

    def put(self, status: ModelStatus) -> None:
        self._waiting.pop(status.name, None)  # re-inserted last: statuses go out in order of change
        self._waiting[status.name] = status
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def next(self, timeout: float) -> list[ModelStatus] | None:
        """The statuses waiting (at least one), or None after ``timeout`` seconds without any or
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


class StatusFeed:
    """Fans every status the gateway's model table accepts out to the subscribed clients."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()
        self.closed = False

    def publish(self, status: ModelStatus) -> None:
        for subscription in self._subscriptions:
            subscription.put(status)

    def subscribe(self) -> Subscription:
        subscription = Subscription()
        if self.closed:
            subscription.close()
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def close(self) -> None:
        """End every stream (the server is shutting down)."""
        self.closed = True
        for subscription in self._subscriptions:
            subscription.close()
