"""The data path to the workers: one ROUTER read by the event loop, one mailbox per request.

The ROUTER is a plain (not asyncio) socket whose file descriptor the event loop watches: each
wake-up drains every message waiting, so a burst of tokens costs one wake-up and no future per
message. (There is no pending recv to cancel either, which can lose a message, pyzmq #1925.) A
worker sends what one engine step produced as one multipart message, one worker message a frame.

Tokens that pile up for a request while its consumer is busy are merged into one ``TokenChunk``
when it next reads (``Mailbox.get``): a client that falls behind gets fewer, larger events
instead of falling further behind. The text is the same, only cut in fewer pieces.

Replies for unknown request ids are dropped: a late reply to a cancelled request is normal.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque

import msgspec
import zmq
import zmq.asyncio

from opta_lmx.errors import ApiError, WorkerUnavailable
from opta_lmx.proto import Cancel, Embed, Embeddings, Failed, Finished, FromWorker, Generate, Started, TokenChunk, ToWorker

log = logging.getLogger("opta_lmx.gateway")

# A worker that is RUNNING may not have (re)connected its DEALER yet (e.g. after a gateway
# restart): retry the first send briefly before calling it unavailable.
_CONNECT_WAIT = 2.0
_CONNECT_RETRY = 0.02
# Messages handled per wake-up before the other tasks get a turn (the rest follow at once).
_DRAIN_BATCH = 256
# At most this many tokens in one merged chunk: a client that fell far behind still gets its
# text in pieces, and no event grows without bound.
_MERGE_TOKENS = 16


class Mailbox:
    """What the worker sent for one request, or the error that ended it, read by one consumer.

    Keeps ``asyncio.Queue``'s method names. ``get`` hands out the token chunks waiting in a row
    as one (``merge_chunks``); any other message comes out as it went in, in order.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[FromWorker | ApiError] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: FromWorker | ApiError) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def get(self) -> FromWorker | ApiError:
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                if self._waiter is waiter:  # cancelled (a timeout): forget it
                    self._waiter = None
        return self.get_nowait()

    def get_nowait(self) -> FromWorker | ApiError:
        """Like ``get`` when something is waiting; raises ``asyncio.QueueEmpty`` otherwise."""
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        if type(item) is TokenChunk and self._items and type(self._items[0]) is TokenChunk:
            return merge_chunks(item, self._items)
        return item

    def empty(self) -> bool:
        return not self._items


def merge_chunks(first: TokenChunk, items: deque[FromWorker | ApiError]) -> TokenChunk:
    """``first`` and the token chunks right after it in ``items`` (taken out) as one chunk.

    Texts, reasoning texts and logprobs are concatenated, token counts added, up to
    ``_MERGE_TOKENS`` tokens, and up to the first chunk with tool calls. A chunk with reasoning is left for the next read when answer text
    came before it: one chunk's reasoning is read as coming before its text, and that order must
    hold.
    """
    texts, reasoning = [first.text], [first.reasoning]
    n_tokens = first.n_tokens
    logprobs = None if first.logprobs is None else list(first.logprobs)
    answered = bool(first.text)
    calls = first.tool_calls
    while items and type(items[0]) is TokenChunk and not calls:
        chunk: TokenChunk = items[0]  # type: ignore[assignment]
        if (answered and chunk.reasoning) or n_tokens + chunk.n_tokens > _MERGE_TOKENS:
            break
        items.popleft()
        texts.append(chunk.text)
        reasoning.append(chunk.reasoning)
        n_tokens += chunk.n_tokens
        answered = answered or bool(chunk.text)
        calls = chunk.tool_calls  # a chunk's calls come after its text: nothing merges past them
        if chunk.logprobs is not None:
            logprobs = (logprobs or []) + chunk.logprobs
    return TokenChunk(first.request_id, "".join(texts), n_tokens, logprobs, "".join(reasoning), calls)


class Pending:
    """One in-flight request: what the worker sends for it, or the error that ended it."""

    __slots__ = ("request_id", "identity", "model", "queue", "silent_since", "started", "first_at", "finished", "ended_at")

    def __init__(self, request_id: int, identity: bytes) -> None:
        self.request_id = request_id
        self.identity = identity
        self.model = identity.partition(b"#")[0].decode()
        self.queue = Mailbox()
        # While a stream is kept alive without output: since when (the inter-token timeout counts
        # from there, across the keep-alive lines).
        self.silent_since: float | None = None
        self.started: Started | None = None  # the worker's acceptance: prompt and cached tokens
        # For the metrics: when its first token and its Finished were read (monotonic seconds).
        self.first_at = 0.0
        self.finished: Finished | None = None
        self.ended_at = 0.0


class Reservation:
    """A request's place in its model's count from admission until its ``Pending`` takes it over
    (``WorkerLink.open``), or until released: so requests waiting for their model to load count
    against the queue bound too."""

    __slots__ = ("model", "held")

    def __init__(self, model: str, held: bool = True) -> None:
        self.model = model
        self.held = held


class WorkerLink:
    def __init__(self, context: zmq.asyncio.Context, address: str) -> None:
        # A plain socket on the asyncio context: the event loop watches its FD (``start``).
        self._router = zmq.Socket(context, zmq.ROUTER)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.SNDHWM, 0)
        self._router.setsockopt(zmq.RCVHWM, 0)
        self._router.bind(address)
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(FromWorker)
        self._pending: dict[int, Pending] = {}
        self._per_model: dict[str, int] = {}  # requests in flight or reserved, by model name
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._router.FD, self._drain)
        self._loop.call_soon(self._drain)  # anything that came before the reader was added

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._router.FD)
        self._router.close(linger=0)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def in_flight_for(self, model: str) -> int:
        """Requests of ``model`` sent and not ended, and those admitted and not yet sent."""
        return self._per_model.get(model, 0)

    def reserve(self, model: str, count: int) -> list[Reservation]:
        self._count(model, count)
        return [Reservation(model) for _ in range(count)]

    def release(self, reservation: Reservation) -> None:
        """Give a place back (idempotent; a no-op once a ``Pending`` has taken it over)."""
        if reservation.held:
            reservation.held = False
            self._count(reservation.model, -1)

    def _count(self, model: str, change: int) -> None:
        left = self._per_model.get(model, 0) + change
        if left:
            self._per_model[model] = left
        else:
            del self._per_model[model]

    def _add(self, pending: Pending, reservation: Reservation | None) -> None:
        self._pending[pending.request_id] = pending
        if reservation is not None and reservation.held and reservation.model == pending.model:
            reservation.held = False  # its place is the request's now
        else:
            self._count(pending.model, 1)

    def _drop(self, request_id: int) -> Pending | None:
        """Forget a request (every way one ends comes through here, so the counts stay right)."""
        pending = self._pending.pop(request_id, None)
        if pending is not None:
            self._count(pending.model, -1)
        return pending

    async def open(
        self, identity: str, kind: type[Generate | Embed] = Generate, reservation: Reservation | None = None, **fields: object
    ) -> Pending:
        """Register a request and send it: a ``Generate``, or an ``Embed``, built from ``fields``
        with a fresh request id; it takes over ``reservation``'s place."""
        pending = Pending(next(self._ids), identity.encode())
        request = kind(request_id=pending.request_id, **fields)  # type: ignore[arg-type]
        self._add(pending, reservation)
        try:
            await self._send_when_connected(pending.identity, request)
        except BaseException:
            self._drop(pending.request_id)
            raise
        return pending

    async def _send_when_connected(self, identity: bytes, message: ToWorker) -> None:
        payload = self._encoder.encode(message)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CONNECT_WAIT
        while True:
            try:
                self._send([identity, payload])
                return
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH or loop.time() > deadline:
                    raise WorkerUnavailable(
                        "The model's worker is not reachable; retry shortly."
                    ) from None
            await asyncio.sleep(_CONNECT_RETRY)

    def _send(self, frames: list[bytes]) -> None:
        try:
            self._router.send_multipart(frames, zmq.NOBLOCK)
        finally:
            # A send may take the socket's edge-triggered readable signal along with its own
            # commands: look for input again rather than wait for a signal that will not come.
            if self._loop is not None:
                self._loop.call_soon(self._drain)

    def cancel(self, pending: Pending) -> None:
        """Forget the request and tell its worker to stop (idempotent on both sides)."""
        if self._drop(pending.request_id) is None:
            return
        try:
            self._send([pending.identity, self._encoder.encode(Cancel(pending.request_id))])
        except zmq.ZMQError:
            pass  # the worker is gone: nothing left to cancel

    def finish(self, pending: Pending) -> None:
        self._drop(pending.request_id)

    def fail_identity(self, identity: str, error: ApiError) -> None:
        """End every request served by ``identity`` (its worker died)."""
        target = identity.encode()
        for pending in [p for p in self._pending.values() if p.identity == target]:
            self._drop(pending.request_id)
            pending.queue.put_nowait(error)

    def fail_all(self, error: ApiError) -> None:
        for pending in list(self._pending.values()):
            self._drop(pending.request_id)
            pending.queue.put_nowait(error)

    def _drain(self) -> None:
        """Hand every waiting message to its request (called when the socket is readable)."""
        if self._router.closed:
            return
        for _ in range(_DRAIN_BATCH):
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity = frames[0]
            for payload in frames[1:]:
                self._deliver(identity, payload)
        assert self._loop is not None
        self._loop.call_soon(self._drain)  # more may be waiting; no new signal will say so

    def _deliver(self, identity: bytes, payload: bytes) -> None:
        try:
            message = self._decoder.decode(payload)
        except msgspec.DecodeError as exc:
            log.warning("undecodable message from %r: %s", identity, exc)
            return
        pending = self._pending.get(message.request_id)
        if pending is None or pending.identity != identity:
            return
        if isinstance(message, (Finished, Failed, Embeddings)):
            self._drop(message.request_id)
        pending.queue.put_nowait(message)
