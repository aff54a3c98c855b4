"""What the gateway knows of each model's worker, kept current by the supervisor's events.

Subscribe first, then ask for a snapshot: every status carries the supervisor's sequence number,
so whichever arrives late and stale is dropped.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
import zmq
import zmq.asyncio

from opta_lmx.errors import WorkerCrashed, WorkerUnavailable
from opta_lmx.gateway.link import WorkerLink
from opta_lmx.proto import ControlReply, GetStatus, ModelStatus, StatusReply

log = logging.getLogger("opta_lmx.gateway")

_SNAPSHOT_TIMEOUT = 5.0


class ModelTable:
    def __init__(self, context: zmq.asyncio.Context, events: str, control: str, link: WorkerLink) -> None:
        self._context = context
        self._events_address = events
        self._control_address = control
        self._link = link
        self._statuses: dict[str, ModelStatus] = {}
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        sub = self._context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self._events_address)
        self._task = asyncio.create_task(self._follow(sub), name="model-events")
        for status in await self._snapshot():
            await self._apply(status)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def get(self, name: str) -> ModelStatus | None:
        return self._statuses.get(name)

    async def wait_running(self, name: str, timeout: float) -> ModelStatus:
        """The model's status once RUNNING; ``WorkerUnavailable`` if it is not within ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(lambda: self._is_running(name))
        except TimeoutError:
            status = self._statuses.get(name)
            detail = f"{status.state}: {status.description}" if status else "unknown state"
            raise WorkerUnavailable(f"Model '{name}' is not ready ({detail}); retry shortly.") from None
        return self._statuses[name]

    def _is_running(self, name: str) -> bool:
        status = self._statuses.get(name)
        return status is not None and status.state == "RUNNING" and bool(status.identity)

    async def _snapshot(self) -> list[ModelStatus]:
        dealer = self._context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self._control_address)
        try:
            await dealer.send(msgspec.msgpack.encode(GetStatus()))
            async with asyncio.timeout(_SNAPSHOT_TIMEOUT):
                reply = msgspec.msgpack.decode(await dealer.recv(), type=ControlReply)
        except TimeoutError:
            log.warning("no status snapshot from the supervisor; waiting for events")
            return []
        finally:
            dealer.close(linger=0)
        return reply.models if isinstance(reply, StatusReply) else []

    async def _follow(self, sub: zmq.asyncio.Socket) -> None:
        decoder = msgspec.msgpack.Decoder(ModelStatus)
        try:
            while True:
                await self._apply(decoder.decode(await sub.recv()))
        finally:
            sub.close(linger=0)

    async def _apply(self, status: ModelStatus) -> None:
        old = self._statuses.get(status.name)
        if old is not None and status.seq <= old.seq:
            return
        self._statuses[status.name] = status
        if old is not None and old.identity and old.identity != status.identity:
            self._link.fail_identity(
                old.identity,
                WorkerCrashed(
                    f"The worker serving '{status.name}' stopped while generating "
                    f"({status.state}: {status.description}); retry the request."
                ),
            )
        async with self._changed:
            self._changed.notify_all()
