"""The status feed behind /admin/events: a slow subscriber holds one waiting status per model."""

from __future__ import annotations

from opta_lmx.gateway.status_feed import StatusFeed
from opta_lmx.proto import ModelStatus


async def test_a_slow_reader_gets_the_latest_status_of_each_model_in_order_of_change() -> None:
    feed = StatusFeed()
    slow = feed.subscribe()
    for seq in range(1, 1001):  # a thousand changes while the reader is away
        feed.publish(ModelStatus("a" if seq % 2 else "b", "RUNNING", seq))
    feed.publish(ModelStatus("a", "BACKOFF", 1001, restarts={"crash": 1}))
    waiting = await slow.next(timeout=1)
    assert waiting is not None
    assert [(s.name, s.seq, s.state) for s in waiting] == [("b", 1000, "RUNNING"), ("a", 1001, "BACKOFF")]
    assert waiting[1].restarts == {"crash": 1}
    assert await slow.next(timeout=0.01) is None  # nothing more: a keep-alive is due


async def test_closing_the_feed_ends_every_subscription() -> None:
    feed = StatusFeed()
    first = feed.subscribe()
    feed.unsubscribe(gone := feed.subscribe())
    feed.publish(ModelStatus("a", "RUNNING", 1))
    assert await gone.next(timeout=0.01) is None
    feed.close()
    assert first.closed and (await first.next(timeout=1))[0].seq == 1  # type: ignore[index]
    assert await first.next(timeout=1) is None
    assert feed.subscribe().closed  # a late subscriber ends at once
