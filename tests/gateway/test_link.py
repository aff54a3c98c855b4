"""The data path between a worker and the gateway: the worker's ``Outbox``, the gateway's
``WorkerLink`` and its per-request ``Mailbox`` (real ZeroMQ sockets, no processes)."""

from __future__ import annotations

import asyncio
from collections import deque
from pathlib import Path

import msgspec
import pytest
import zmq
import zmq.asyncio

from opta_lmx.errors import ApiError
from opta_lmx.gateway.link import Mailbox, WorkerLink, merge_chunks
from opta_lmx.proto import (
    Cancel,
    ChatMessage,
    Failed,
    Finished,
    FromWorker,
    Generate,
    Started,
    TokenChunk,
    TokenLogprobs,
    ToolCall,
    ToWorker,
)
from opta_lmx.worker import loop
from opta_lmx.worker.loop import Outbox

IDENTITY = "tiny#1"


def chunk(text: str, n: int = 1, *, rid: int = 1, reasoning: str = "", logprobs: list | None = None) -> TokenChunk:
    return TokenChunk(rid, text, n, logprobs, reasoning)


# --- Mailbox -------------------------------------------------------------------------------


async def test_waiting_chunks_come_out_as_one_and_the_terminal_message_after_them() -> None:
    box = Mailbox()
    for item in [chunk("Hel"), chunk("lo"), chunk(", wor", 2), chunk("ld", 0), Finished(1, "stop", 3, 4)]:
        box.put_nowait(item)
    assert await box.get() == chunk("Hello, world", 4)
    assert await box.get() == Finished(1, "stop", 3, 4)
    assert box.empty()


async def test_non_chunk_messages_are_never_merged_or_reordered() -> None:
    box = Mailbox()
    items: list[FromWorker | ApiError] = [Started(1, 3), chunk("a"), Failed(1, "engine_error", "x"), chunk("b")]
    for item in items:
        box.put_nowait(item)
    assert [await box.get() for _ in items] == items


async def test_get_waits_for_a_put_and_a_cancelled_get_loses_nothing() -> None:
    box = Mailbox()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await box.get()
    reader = asyncio.ensure_future(box.get())
    await asyncio.sleep(0)
    box.put_nowait(chunk("x"))
    assert await asyncio.wait_for(reader, 1) == chunk("x")
    with pytest.raises(asyncio.QueueEmpty):
        box.get_nowait()
    box.put_nowait(chunk("y"))
    assert box.get_nowait() == chunk("y")


async def test_a_long_backlog_comes_out_in_pieces_of_at_most_16_tokens() -> None:
    box = Mailbox()
    for i in range(40):
        box.put_nowait(chunk(f"{i} "))
    box.put_nowait(chunk("", 0))
    pieces = [await box.get() for _ in range(3)]
    assert [piece.n_tokens for piece in pieces] == [16, 16, 8]
    assert "".join(piece.text for piece in pieces) == "".join(f"{i} " for i in range(40))
    assert box.empty()


def test_merged_logprobs_are_concatenated_in_order() -> None:
    a, b, c = (TokenLogprobs(t, -1.0, list(t.encode())) for t in "abc")
    items: deque = deque([chunk("b", logprobs=[b]), chunk("c", logprobs=[c]), chunk("", 0)])
    assert merge_chunks(chunk("a", logprobs=[a]), items) == chunk("abc", 3, logprobs=[a, b, c])
    assert not items


def test_reasoning_after_answer_text_is_not_merged_across() -> None:
    # Within one chunk reasoning reads as coming before the text; merging must keep that true.
    items: deque = deque([chunk("", reasoning=" more"), chunk("Answer"), chunk("!"), chunk("", reasoning="again")])
    merged = merge_chunks(chunk("", reasoning="think"), items)
    assert merged == chunk("Answer!", 4, reasoning="think more")
    assert list(items) == [chunk("", reasoning="again")]


def test_merge_knows_every_token_chunk_field() -> None:
    # A new TokenChunk field needs a merge rule in link.merge_chunks (else merging would drop it).
    assert TokenChunk.__struct_fields__ == ("request_id", "text", "n_tokens", "logprobs", "reasoning", "tool_calls")


def test_nothing_merges_past_a_chunk_with_tool_calls() -> None:
    # A chunk's tool calls come after its text; text merged in after them would change the order.
    call = ToolCall("call_1", "f", "{}")
    items: deque = deque([chunk("b"), TokenChunk(1, "c", 1, None, "", [call]), chunk("d"), chunk("e")])
    assert merge_chunks(chunk("a"), items) == TokenChunk(1, "abc", 3, None, "", [call])
    assert merge_chunks(items.popleft(), items) == chunk("de", 2)
    items = deque([chunk("b")])
    assert merge_chunks(TokenChunk(1, "a", 1, None, "", [call]), items) == TokenChunk(1, "a", 1, None, "", [call])
    assert list(items) == [chunk("b")]


# --- Outbox (the worker's side) --------------------------------------------------------------


class RecordingSocket:
    def __init__(self) -> None:
        self.sends: list[list[FromWorker]] = []
        self._decoder = msgspec.msgpack.Decoder(FromWorker)

    def send_multipart(self, frames: list[bytes]) -> None:
        self.sends.append([self._decoder.decode(frame) for frame in frames])


def test_a_step_leaves_as_one_message_and_fast_chunks_wait_for_each_other() -> None:
    socket = RecordingSocket()
    outbox = Outbox(socket, interval=60.0)  # type: ignore[arg-type]
    outbox.send([Started(1, 5), Started(2, 5)])
    outbox.send([chunk("a", rid=1), chunk("x", rid=2)])  # first chunks: at once
    outbox.send([chunk("b", rid=1), chunk("y", rid=2)])  # waits
    outbox.send([chunk("c", rid=1)])  # waits
    assert socket.sends == [
        [Started(1, 5), Started(2, 5)],
        [chunk("a", rid=1), chunk("x", rid=2)],
    ]
    outbox.send([Finished(1, "stop", 5, 3)])  # a terminal message takes everything along
    assert socket.sends[2] == [chunk("b", rid=1), chunk("y", rid=2), chunk("c", rid=1), Finished(1, "stop", 5, 3)]
    outbox.send([chunk("z", rid=2)])
    outbox.send([Started(3, 5)])  # a new request's Started too (its prefill comes next)
    assert socket.sends[3] == [chunk("z", rid=2), Started(3, 5)]
    outbox.send([])
    outbox.flush()
    assert len(socket.sends) == 4


def test_with_no_interval_every_step_leaves_at_once() -> None:
    socket = RecordingSocket()
    outbox = Outbox(socket, interval=0.0)  # type: ignore[arg-type]
    outbox.send([Started(1, 5)])
    for text in "abc":
        outbox.send([chunk(text)])
    assert socket.sends == [[Started(1, 5)], [chunk("a")], [chunk("b")], [chunk("c")]]


def test_chunks_wait_only_while_steps_are_quick_and_at_most_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock[0])
    socket = RecordingSocket()
    outbox = Outbox(socket, interval=0.0035)  # type: ignore[arg-type]
    outbox.send([chunk("first")])
    for seconds, text in [(0.001, "a"), (0.001, "b"), (0.001, "c"), (0.001, "d"), (0.001, "e"), (0.010, "f")]:
        clock[0] += seconds  # the step that produced ``text`` took ``seconds``
        outbox.send([chunk(text)])
    # a waits until it is old enough (when e comes, 4 ms later); f came from a slow step
    assert [[m.text for m in call] for call in socket.sends] == [["first"], ["a", "b", "c", "d", "e"], ["f"]]


def test_an_echoed_prompt_does_not_count_as_the_first_generated_chunk() -> None:
    socket = RecordingSocket()
    outbox = Outbox(socket, interval=60.0)  # type: ignore[arg-type]
    outbox.send([Started(1, 5), chunk("the prompt", 0)])
    outbox.send([chunk("first")])
    outbox.send([chunk("second")])
    assert socket.sends == [[Started(1, 5), chunk("the prompt", 0)], [chunk("first")]]


def test_a_request_that_ends_may_start_streaming_again_under_the_same_id() -> None:
    socket = RecordingSocket()
    outbox = Outbox(socket, interval=60.0)  # type: ignore[arg-type]
    outbox.send([chunk("a")])
    outbox.send([Failed(1, "engine_error", "x")])
    outbox.send([chunk("b")])  # a first chunk again: not held
    assert socket.sends[-1] == [chunk("b")]


# --- WorkerLink over real sockets ---------------------------------------------------------------


@pytest.fixture
async def link(tmp_path: Path):  # type: ignore[no-untyped-def]
    context = zmq.asyncio.Context()
    link = WorkerLink(context, f"ipc://{tmp_path}/data.sock")
    link.start()
    yield link
    link.close()
    context.destroy(linger=0)


@pytest.fixture
def worker(tmp_path: Path, link: WorkerLink):  # type: ignore[no-untyped-def]
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, IDENTITY.encode())
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"ipc://{tmp_path}/data.sock")
    yield dealer
    dealer.close()
    context.term()


def received(dealer: zmq.Socket) -> ToWorker:
    assert dealer.poll(2000), "the worker got nothing"
    return msgspec.msgpack.decode(dealer.recv(), type=ToWorker)


async def next_message(pending) -> FromWorker | ApiError:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(2):
        return await pending.queue.get()


async def test_a_stream_goes_through_whole_and_in_order(link: WorkerLink, worker: zmq.Socket) -> None:
    pending = await link.open(IDENTITY, messages=[ChatMessage("user", "hi")])
    request = received(worker)
    assert isinstance(request, Generate) and request.request_id == pending.request_id
    rid = pending.request_id
    outbox = Outbox(worker, interval=60.0)
    outbox.send([Started(rid, 3)])
    assert await next_message(pending) == Started(rid, 3)
    pieces = [f"t{i} " for i in range(50)]
    for piece in pieces:
        outbox.send([chunk(piece, rid=rid)])
    outbox.send([Finished(rid, "length", 3, 50)])
    text, count = "", 0
    while not isinstance(message := await next_message(pending), Finished):
        assert isinstance(message, TokenChunk)
        text, count = text + message.text, count + message.n_tokens
    assert (text, count) == ("".join(pieces), 50)
    assert message == Finished(rid, "length", 3, 50)
    assert link.in_flight == 0


async def test_cancel_reaches_the_worker_and_late_replies_are_dropped(link: WorkerLink, worker: zmq.Socket) -> None:
    first = await link.open(IDENTITY, messages=[ChatMessage("user", "a")])
    second = await link.open(IDENTITY, messages=[ChatMessage("user", "b")])
    for _ in range(2):
        received(worker)
    link.cancel(first)
    assert received(worker) == Cancel(first.request_id)
    link.cancel(first)  # idempotent: nothing more is sent
    assert not worker.poll(50)
    late = [chunk("late", rid=first.request_id), Started(second.request_id, 1)]
    worker.send_multipart([msgspec.msgpack.encode(message) for message in late])
    assert await next_message(second) == Started(second.request_id, 1)
    assert first.queue.empty()


async def test_a_reserved_place_counts_until_its_request_takes_it_over_or_gives_it_back(link: WorkerLink, worker: zmq.Socket) -> None:
    model = IDENTITY.partition("#")[0]
    sent, unsent = link.reserve(model, 2)
    assert link.in_flight_for(model) == 2 and link.in_flight == 0  # waiting for a load, say
    pending = await link.open(IDENTITY, reservation=sent, messages=[ChatMessage("user", "a")])
    received(worker)
    link.release(sent)  # the request holds the place now: nothing given back
    assert link.in_flight_for(model) == 2 and link.in_flight == 1
    link.release(unsent)
    link.release(unsent)
    assert link.in_flight_for(model) == 1
    link.cancel(pending)
    assert link.in_flight_for(model) == 0
