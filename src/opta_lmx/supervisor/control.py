"""The supervisor's control socket: lmxctl's and the gateway's commands, one handler each."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import TYPE_CHECKING

import msgspec
import zmq
import zmq.asyncio

from opta_lmx.errors import ConfigError
from opta_lmx.proto import (
    CancelPull,
    CommandResult,
    ControlReply,
    ControlRequest,
    EnsureLoaded,
    GetMemory,
    GetModels,
    GetPulls,
    GetStatus,
    KeepAlive,
    ModelsReply,
    PullModel,
    Reload,
    RemoveModel,
    Rescan,
    Restart,
    ShutdownServer,
    Signal,
    Start,
    StatusReply,
    Stop,
    Tail,
    TailReply,
)
from opta_lmx.supervisor.removal import remove_model
from opta_lmx.supervisor.reports import memory_report, model_info
from opta_lmx.supervisor.states import State

if TYPE_CHECKING:
    from opta_lmx.supervisor.main import Supervisor
    from opta_lmx.supervisor.worker_process import WorkerProcess

log = logging.getLogger("opta_lmx.supervisor")

_TAIL_MAX = 64 * 1024


async def serve_control(supervisor: Supervisor, sock: zmq.asyncio.Socket) -> None:
    """Each request is handled in its own task: a slow load never blocks ``status``."""
    decoder = msgspec.msgpack.Decoder(ControlRequest)
    encoder = msgspec.msgpack.Encoder()
    tasks: set[asyncio.Task[None]] = set()

    async def answer(client: bytes, request: ControlRequest) -> None:
        try:
            reply = await handle(supervisor, request)
            if isinstance(reply, CommandResult):
                reply = msgspec.structs.replace(reply, seq=supervisor.seq)
        except Exception as exc:  # a handler bug answers as an error instead of a silent client
            log.exception("control command %r failed", request)
            reply = CommandResult(ok=False, message=f"internal error: {exc}", code="internal")
        try:
            await sock.send_multipart([client, encoder.encode(reply)])
        except zmq.ZMQError:
            pass  # the client left before its reply

    while True:
        client, payload = await sock.recv_multipart()
        try:
            request = decoder.decode(payload)
        except msgspec.DecodeError as exc:
            log.warning("control: undecodable request: %s", exc)
            continue
        task = asyncio.create_task(answer(client, request))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def handle(supervisor: Supervisor, request: ControlRequest) -> ControlReply:
    if isinstance(request, GetStatus):
        models = [s for s in supervisor.statuses() if request.name is None or s.name == request.name]
        return StatusReply(models=models)
    if isinstance(request, Reload):
        return await _reload(supervisor)
    if isinstance(request, Rescan):
        return await supervisor.rescan()
    if isinstance(request, ShutdownServer):
        supervisor.request_stop()
        return CommandResult(ok=True, message="Shut down")
    if isinstance(request, GetModels) and request.name is None:
        return ModelsReply([model_info(supervisor, w) for w in supervisor.workers.values()])
    if isinstance(request, GetMemory) and request.model is None:
        return memory_report(supervisor, None)
    if isinstance(request, PullModel | GetPulls | CancelPull | RemoveModel):
        return await _store_command(supervisor, request)
    target = request.model if isinstance(request, GetMemory) else request.name
    worker = supervisor.workers.get(target) if target is not None else None
    if worker is None:
        return CommandResult(ok=False, message=f"{target}: ERROR (no such process)", code="model_not_found")
    match request:
        case EnsureLoaded():
            return await _ensure_loaded(supervisor, worker)
        case KeepAlive(seconds=seconds):
            worker.set_keep_alive(seconds)
            supervisor.publish(worker)
            return CommandResult(ok=True, message=f"{worker.name}: keep_alive {seconds:g}s")
        case Start():
            return await _start(supervisor, worker)
        case Stop():
            if not worker.alive:
                return CommandResult(ok=False, message=f"{worker.name}: ERROR (not running)", code="not_running")
            await worker.stop()
            return CommandResult(ok=True, message=f"{worker.name}: stopped")
        case Restart():
            if worker.alive:
                await worker.stop()
            return await _start(supervisor, worker)
        case Signal(signal=name):
            return _signal(worker, name)
        case Tail(offset=offset):
            return _tail(worker, offset)
        case GetModels():
            return ModelsReply([model_info(supervisor, worker)])
        case GetMemory():
            return memory_report(supervisor, worker)
    return CommandResult(ok=False, message=f"unknown command {request!r}", code="unknown_command")


async def _store_command(supervisor: Supervisor, request: PullModel | GetPulls | CancelPull | RemoveModel) -> ControlReply:
    pulls = supervisor.pulls
    if pulls is None:
        return CommandResult(ok=False, message="this server has no model store", code="unsupported")
    match request:
        case PullModel():
            return pulls.start(request)
        case GetPulls(id=job_id):
            return pulls.get(job_id)
        case CancelPull(id=job_id):
            return pulls.cancel(job_id)
    return await remove_model(supervisor, request.name)


async def _ensure_loaded(supervisor: Supervisor, worker: WorkerProcess) -> CommandResult:
    if worker.state is State.FATAL:
        return CommandResult(
            ok=False,
            message=f"Model '{worker.name}' failed repeatedly and waits for an operator "
            f"(`lmxctl start {worker.name}`): {worker.description}",
            code="model_unavailable",
        )
    return await supervisor.load(worker)


async def _start(supervisor: Supervisor, worker: WorkerProcess) -> CommandResult:
    if worker.state is State.RUNNING:
        return CommandResult(ok=False, message=f"{worker.name}: ERROR (already started)", code="already_started")
    result = await supervisor.load(worker)
    if not result.ok:
        return result
    state = await worker.wait_settled(supervisor.config.supervisor.load_timeout)
    if state is State.RUNNING:
        return CommandResult(ok=True, message=f"{worker.name}: started")
    return CommandResult(ok=False, message=f"{worker.name}: ERROR (spawn error) {worker.description}", code="spawn_error")


def _signal(worker: WorkerProcess, name: str) -> CommandResult:
    try:
        sig = signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except KeyError:
        return CommandResult(ok=False, message=f"{worker.name}: ERROR (bad signal name {name!r})", code="bad_signal")
    if not worker.kill(sig, f"sent {sig.name} by operator"):
        return CommandResult(ok=False, message=f"{worker.name}: ERROR (not running)", code="not_running")
    return CommandResult(ok=True, message=f"{worker.name}: signalled")


def _tail(worker: WorkerProcess, offset: int) -> TailReply:
    try:
        with open(worker.log_path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size + offset) if offset < 0 else min(offset, size)
            f.seek(start)
            data = f.read(_TAIL_MAX)
    except OSError:
        return TailReply(text="", offset=0)
    return TailReply(text=data.decode("utf-8", errors="replace"), offset=start + len(data))


async def _reload(supervisor: Supervisor) -> CommandResult:
    if supervisor.reload_source is None:
        return CommandResult(ok=False, message="no config file to reload", code="invalid_config")
    try:
        config = supervisor.reload_source()
    except ConfigError as exc:
        return CommandResult(ok=False, message=f"config refused, keeping the old one: {exc}", code="invalid_config")
    return await supervisor.reload(config)
