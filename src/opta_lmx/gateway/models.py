"""What the gateway knows of each model's worker, kept current by the supervisor's events.

Subscribe first, then ask for a snapshot: every status carries the supervisor's sequence number,
so whichever arrives late and stale is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import msgspec
import zmq
import zmq.asyncio

from opta_lmx.errors import ApiError, ModelNotFound, WorkerCrashed, WorkerUnavailable, failure_to_error
from opta_lmx.gateway.link import WorkerLink
from opta_lmx.proto import (
    CommandResult,
    ControlReply,
    ControlRequest,
    EnsureLoaded,
    Event,
    GetStatus,
    KeepAlive,
    ModelStatus,
    PullJob,
    StatusReply,
)

log = logging.getLogger("opta_lmx.gateway")

_SNAPSHOT_TIMEOUT = 5.0
_CONTROL_TIMEOUT = 30.0


# Times a request asks again for a model stopped (evicted) before it could serve that request.
_EVICTED_RETRIES = 3


class ModelTable:
    def __init__(
        self,
        context: zmq.asyncio.Context,
        events: str,
        control: str,
        link: WorkerLink,
        on_config_version: Callable[[int], None],
    ) -> None:
        self._context = context
        self._on_config_version = on_config_version
        self._config_version = 0
        self._events_address = events
        self._control_address = control
        self._link = link
        self._statuses: dict[str, ModelStatus] = {}
        self._seen_seq = 0
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[ModelStatus], None]] = []
        self._pull_listeners: list[Callable[[PullJob], None]] = []

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

    def statuses(self) -> list[ModelStatus]:
        """Every model's status as of its last event."""
        return list(self._statuses.values())

    def listen(self, listener: Callable[[ModelStatus], None]) -> None:
        """Call ``listener`` with every status that changes what the table holds (newer than
        the one it had; ``removed`` ones too), from the snapshot and the events alike."""
        self._listeners.append(listener)

    def listen_pulls(self, listener: Callable[[PullJob], None]) -> None:
        """Call ``listener`` with every pull job the supervisor publishes, after the statuses
        published before it (a job ``done`` comes after the statuses of its rescan)."""
        self._pull_listeners.append(listener)

    async def caught_up(self, seq: int, timeout: float) -> None:
        """Until the events up to ``seq`` are applied (at most ``timeout`` seconds): what a
        command's reply says happened is then visible here too."""
        await self.wait_until(lambda: self._seen_seq >= seq, timeout)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Until ``predicate`` holds, checked at each status change (at most ``timeout``
        seconds); whether it holds."""
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(predicate)
        except TimeoutError:
            pass
        return predicate()

    async def command(self, request: ControlRequest, timeout: float = _CONTROL_TIMEOUT) -> ControlReply:
        """The supervisor's reply to one control command; ``WorkerUnavailable`` if none comes
        within ``timeout`` seconds."""
        reply = await self._control(request, timeout)
        if reply is None:
            raise WorkerUnavailable("The supervisor did not answer; retry shortly.")
        return reply

    async def ready(self, name: str, ready_wait: float, load_timeout: float) -> ModelStatus:
        """The RUNNING status of ``name``, loading it first if it is not loaded.

        Raises ``ModelNotFound``, ``InsufficientMemory`` (no room even after evicting idle models),
        or ``WorkerUnavailable`` (FATAL, or not ready in time).
        """
        deadline = asyncio.get_running_loop().time() + load_timeout
        for attempt in range(_EVICTED_RETRIES + 1):
            status = self._statuses.get(name)
            if status is None:
                raise ModelNotFound(f"The model '{name}' does not exist.", param="model")
            if status.state == "RUNNING" and status.identity:
                return status
            # A draining worker is waited out and its model loaded again: a load's wait either way.
            cold = status.state in ("STOPPED", "EXITED", "STARTING", "STOPPING")
            after_seq = 0
            if status.state != "STARTING":
                result = await self._control(EnsureLoaded(name), load_timeout)
                if not isinstance(result, CommandResult) or not result.ok:
                    raise self._refusal(result)
                after_seq = result.seq
            left = deadline - asyncio.get_running_loop().time()
            try:
                return await self.wait_running(name, min(left, load_timeout if cold else ready_wait), after_seq)
            except WorkerUnavailable:
                # Stopped before it served, mostly evicted to make room for another model (a
                # crashed worker waiting out its backoff may be): the request still wants it,
                # and a request for a stopped model loads it, so ask again.
                status = self._statuses.get(name)
                stopped = status is not None and status.state == "STOPPED"
                if not stopped or attempt == _EVICTED_RETRIES or deadline - asyncio.get_running_loop().time() <= 0:
                    raise
        raise AssertionError("unreachable")

    async def keep_alive(self, name: str, seconds: float) -> None:
        """Have the supervisor unload ``name`` after ``seconds`` idle from now (negative: never)."""
        result = await self._control(KeepAlive(name, seconds))
        if not isinstance(result, CommandResult) or not result.ok:
            raise self._refusal(result)

    async def live_statuses(self) -> list[ModelStatus]:
        """Every model's status as the supervisor sees it now (events carry memory and activity
        only as of the model's last state change)."""
        reply = await self._control(GetStatus(), _SNAPSHOT_TIMEOUT)
        if not isinstance(reply, StatusReply):
            raise WorkerUnavailable("The supervisor did not answer; retry shortly.")
        return reply.models

    @staticmethod
    def _refusal(result: ControlReply | None) -> ApiError:
        if isinstance(result, CommandResult):
            return failure_to_error(result.code, result.message)
        return WorkerUnavailable("The supervisor did not answer; retry shortly.")

    async def wait_running(self, name: str, timeout: float, after_seq: int = 0) -> ModelStatus:
        """The model's status once RUNNING; ``WorkerUnavailable`` if it is not within ``timeout``
        or stops trying (FATAL, STOPPED) in an event at or after ``after_seq``."""

        def settled() -> bool:
            return self._is_running(name) or (self._seen_seq >= after_seq and self._gave_up(name))

        await self.wait_until(settled, timeout)
        if not self._is_running(name):
            status = self._statuses.get(name)
            detail = f"{status.state}: {status.description}" if status else "unknown state"
            raise WorkerUnavailable(f"Model '{name}' is not ready ({detail}); retry shortly.") from None
        return self._statuses[name]

    async def wait_draining(self, name: str, identity: str, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until the worker ``identity`` no longer serves
        ``name`` as RUNNING: a worker that refused a request as draining says so before its
        STOPPING event may have reached this table."""

        def left() -> bool:
            status = self._statuses.get(name)
            return status is None or status.state != "RUNNING" or status.identity != identity

        await self.wait_until(left, timeout)

    def _gave_up(self, name: str) -> bool:
        status = self._statuses.get(name)
        return status is None or status.state in ("FATAL", "STOPPED")

    def _is_running(self, name: str) -> bool:
        status = self._statuses.get(name)
        return status is not None and status.state == "RUNNING" and bool(status.identity)

    async def _control(self, request: ControlRequest, timeout: float = _CONTROL_TIMEOUT) -> ControlReply | None:
        """One request to the supervisor on a fresh DEALER (cold path only: loads, snapshots)."""
        dealer = self._context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self._control_address)
        try:
            await dealer.send(msgspec.msgpack.encode(request))
            async with asyncio.timeout(timeout):
                return msgspec.msgpack.decode(await dealer.recv(), type=ControlReply)
        except TimeoutError:
            return None
        finally:
            dealer.close(linger=0)

    async def _snapshot(self) -> list[ModelStatus]:
        reply = await self._control(GetStatus(), _SNAPSHOT_TIMEOUT)
        if reply is None:
            log.warning("no status snapshot from the supervisor; waiting for events")
        return reply.models if isinstance(reply, StatusReply) else []

    async def _follow(self, sub: zmq.asyncio.Socket) -> None:
        decoder = msgspec.msgpack.Decoder(Event)
        try:
            while True:
                event = decoder.decode(await sub.recv())
                if isinstance(event, PullJob):
                    self._tell_pull(event)
                else:
                    await self._apply(event)
        finally:
            sub.close(linger=0)

    def _tell_pull(self, job: PullJob) -> None:
        for listener in self._pull_listeners:
            try:
                listener(job)
            except Exception:  # a listener's bug must not stop the table following events
                log.exception("pull listener failed")

    async def _apply(self, status: ModelStatus) -> None:
        old = self._statuses.get(status.name)
        self._seen_seq = max(self._seen_seq, status.seq)
        if status.config_version > self._config_version:
            self._config_version = status.config_version
            self._on_config_version(status.config_version)
        if old is not None and status.seq <= old.seq:
            return
        if status.removed:
            self._statuses.pop(status.name, None)
        else:
            self._statuses[status.name] = status
        for listener in self._listeners:
            try:
                listener(status)
            except Exception:  # a listener's bug must not stop the table following events
                log.exception("status listener failed")
        if old is not None and old.identity and old.identity != status.identity:
            self._link.fail_identity(
                old.identity,
                WorkerCrashed(
                    f"The worker serving '{status.name}' stopped while serving this request "
                    f"({status.state}: {status.description}); retry the request."
                ),
            )
        async with self._changed:
            self._changed.notify_all()
