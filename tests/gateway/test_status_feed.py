"""The feeds behind /admin/events and the pull streams: a slow subscriber holds one waiting item per model or job."""

from __future__ import annotations

from opta_lmx.gateway.status_feed import PullFeed, StatusFeed
from opta_lmx.proto import ModelStatus, PullJob


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


async def test_a_pull_follower_holds_only_its_jobs_latest_state() -> None:
    feed = PullFeed()
    mine = feed.subscribe(only="aaaaaaaaaaaa")
    for done in range(0, 1000, 10):
        feed.publish(PullJob("aaaaaaaaaaaa", "org/a", "main", "downloading", done_bytes=done, total_bytes=1000))
        feed.publish(PullJob("bbbbbbbbbbbb", "org/b", "main", "downloading", done_bytes=done))
    waiting = await mine.next(timeout=1)
    assert waiting is not None and [(j.id, j.done_bytes) for j in waiting] == [("aaaaaaaaaaaa", 990)]
    feed.publish(PullJob("aaaaaaaaaaaa", "org/a", "main", "done", done_bytes=1000, total_bytes=1000))
    [last] = await mine.next(timeout=1)  # type: ignore[misc]
    assert last.state == "done"
