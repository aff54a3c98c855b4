"""The data path to the workers: one ROUTER, one reader task, one queue per request.

The reader task never stops while the gateway lives (cancelling a pending recv can lose a
message, pyzmq #1925). Replies for unknown request ids are dropped: a late reply to a cancelled
request is normal, not an error.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import msgspec
import zmq
import zmq.asyncio

from opta_lmx.errors import ApiError, WorkerUnavailable
from opta_lmx.proto import Cancel, Failed, Finished, FromWorker, Generate, ToWorker

log = logging.getLogger("opta_lmx.gateway")

# A worker that is RUNNING may not have (re)connected its DEALER yet (e.g. after a gateway
# restart): retry the first send briefly before calling it unavailable.
_CONNECT_WAIT = 2.0
_CONNECT_RETRY = 0.02


class Pending:
    """One in-flight request: what the worker sends for it, or the error that ended it."""

    __slots__ = ("request_id", "identity", "queue")

    def __init__(self, request_id: int, identity: bytes) -> None:
        self.request_id = request_id
        self.identity = identity
        self.queue: asyncio.Queue[FromWorker | ApiError] = asyncio.Queue()


class WorkerLink:
    def __init__(self, context: zmq.asyncio.Context, address: str) -> None:
        self._router = context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.SNDHWM, 0)
        self._router.setsockopt(zmq.RCVHWM, 0)
        self._router.bind(address)
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(FromWorker)
        self._pending: dict[int, Pending] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read(), name="worker-link-reader")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self._router.close(linger=0)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def open(self, identity: str, **fields: object) -> Pending:
        """Register a request and send its ``Generate`` (built with a fresh request id)."""
        pending = Pending(next(self._ids), identity.encode())
        request = Generate(request_id=pending.request_id, **fields)  # type: ignore[arg-type]
        self._pending[pending.request_id] = pending
        try:
            await self._send_when_connected(pending.identity, request)
        except BaseException:
            self._pending.pop(pending.request_id, None)
            raise
        return pending

    async def _send_when_connected(self, identity: bytes, message: ToWorker) -> None:
        payload = self._encoder.encode(message)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CONNECT_WAIT
        while True:
            try:
                await self._router.send_multipart([identity, payload])
                return
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH or loop.time() > deadline:
                    raise WorkerUnavailable(
                        "The model's worker is not reachable; retry shortly."
                    ) from None
            await asyncio.sleep(_CONNECT_RETRY)

    def cancel(self, pending: Pending) -> None:
        """Forget the request and tell its worker to stop (idempotent on both sides)."""
        if self._pending.pop(pending.request_id, None) is None:
            return
        try:
            self._router.send_multipart(
                [pending.identity, self._encoder.encode(Cancel(pending.request_id))],
                flags=zmq.NOBLOCK,
            )
        except zmq.ZMQError:
            pass  # the worker is gone: nothing left to cancel

    def finish(self, pending: Pending) -> None:
        self._pending.pop(pending.request_id, None)

    def fail_identity(self, identity: str, error: ApiError) -> None:
        """End every request served by ``identity`` (its worker died)."""
        target = identity.encode()
        for pending in [p for p in self._pending.values() if p.identity == target]:
            self._pending.pop(pending.request_id, None)
            pending.queue.put_nowait(error)

    def fail_all(self, error: ApiError) -> None:
        for pending in list(self._pending.values()):
            pending.queue.put_nowait(error)
        self._pending.clear()

    async def _read(self) -> None:
        while True:
            identity, payload = await self._router.recv_multipart()
            try:
                message = self._decoder.decode(payload)
            except msgspec.DecodeError as exc:
                log.warning("undecodable message from %r: %s", identity, exc)
                continue
            pending = self._pending.get(message.request_id)
            if pending is None or pending.identity != identity:
                continue
            if isinstance(message, (Finished, Failed)):
                del self._pending[message.request_id]
            pending.queue.put_nowait(message)
