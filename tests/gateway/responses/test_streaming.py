"""The streaming endpoint's load-then-stream (the load through generation.load_with_keepalives), with the generation path replaced by stand-ins
(the real one runs in tests/e2e/test_responses.py): what a client sees while a model loads, and
when loading fails."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import pytest

from opta_lmx.errors import WorkerUnavailable
from opta_lmx.gateway import generation
from opta_lmx.gateway.responses import endpoints
from opta_lmx.gateway.responses.events import KEEPALIVE_LINE, OutputWriter
from opta_lmx.proto import Finished, TokenChunk
from tests.gateway.responses.test_events import events, writer


@pytest.fixture(autouse=True)
def quick_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(endpoints, "KEEPALIVE_SECONDS", 0.05)  # a quiet stream's
    monkeypatch.setattr(generation, "KEEPALIVE_SECONDS", 0.05)  # a load's


async def lines_of(w: OutputWriter, kept: list[OutputWriter]) -> list[bytes]:
    return [line async for line in endpoints._events(None, [], None, w, kept.append)]  # type: ignore[arg-type]


async def test_a_loading_model_gets_created_keep_alives_then_the_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    async def prepare_all(state: Any, jobs: Any) -> list[Any]:
        await asyncio.sleep(0.3)
        return []

    async def merged(state: Any, pendings: Any, keepalive: float | None = None) -> AsyncIterator[Any]:
        yield 0, TokenChunk(1, "Hi", 1)
        yield 0, None  # two seconds without output
        yield 0, Finished(1, "stop", 3, 1)

    monkeypatch.setattr(generation, "prepare_all", prepare_all)
    monkeypatch.setattr(endpoints, "merged", merged)
    w, kept = writer(), []
    lines = await lines_of(w, kept)
    created = events(lines[0])
    assert [e["type"] for e in created] == ["response.created", "response.in_progress"]
    reply = next(i for i, line in enumerate(lines[1:], 1) if line != KEEPALIVE_LINE)
    assert reply > 1  # keep-alives while the model loads
    assert lines[reply + 1] == KEEPALIVE_LINE  # and while the stream is quiet
    final = events(b"".join(line for line in lines if line != KEEPALIVE_LINE))
    assert final[-1]["type"] == "response.completed" and final[-1]["response"]["output"][0]["content"][0]["text"] == "Hi"
    assert kept == [w]


async def test_a_load_that_fails_ends_the_stream_with_response_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    async def prepare_all(state: Any, jobs: Any) -> list[Any]:
        await asyncio.sleep(0.12)
        raise WorkerUnavailable("The model 'm' failed to load.")

    monkeypatch.setattr(generation, "prepare_all", prepare_all)
    w, kept = writer(), []
    lines = await lines_of(w, kept)
    assert lines[1] == KEEPALIVE_LINE
    seen = events(b"".join(line for line in lines if line != KEEPALIVE_LINE))
    assert [e["type"] for e in seen] == ["response.created", "response.in_progress", "error", "response.failed"]
    assert seen[-1]["response"]["error"] == {"code": "model_unavailable", "message": "The model 'm' failed to load."}
    assert kept == []  # a failed response is not stored
