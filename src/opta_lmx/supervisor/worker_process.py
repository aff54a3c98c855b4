"""One configured model's worker process and its life: start, ready, crash, backoff, stop."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Callable

from opta_lmx.config import ModelConfig, SupervisorConfig
from opta_lmx.proto import PROTO_VERSION, Heartbeat, LoadFailed, ModelStatus, Ready, WorkerReport
from opta_lmx.supervisor.spawn import DeathPipe, describe_exit, log_tail, spawn, terminate
from opta_lmx.supervisor.states import Backoff, State

log = logging.getLogger("opta_lmx.supervisor")


class WorkerAddresses:
    def __init__(self, data: str, control: str) -> None:
        self.data = data
        self.control = control


class WorkerProcess:
    """Keeps one model's worker running until told to stop.

    A worker is RUNNING only after its ``Ready``; a crash restarts it after a backoff delay; too
    many failures within the window leave it FATAL until ``start()`` is called again.
    """

    def __init__(
        self,
        model: ModelConfig,
        settings: SupervisorConfig,
        addresses: WorkerAddresses,
        death: DeathPipe,
        log_dir: Path,
        on_change: Callable[[WorkerProcess], None],
    ) -> None:
        self.model = model
        self._settings = settings
        self._addresses = addresses
        self._death = death
        self.log_path = log_dir / f"{model.name.replace('/', '_')}.log"
        self._on_change = on_change
        self._backoff = Backoff(
            settings.backoff_initial, settings.backoff_max, settings.max_failures, settings.failure_window
        )
        self.state = State.STOPPED
        self.description = "Not started"
        self.generation = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.ready: Ready | None = None
        self.last_heartbeat: Heartbeat | None = None
        self._report: asyncio.Future[WorkerReport] | None = None
        self._life: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def identity(self) -> str:
        return f"{self.name}#{self.generation}"

    def status(self, seq: int) -> ModelStatus:
        running = self.state is State.RUNNING
        return ModelStatus(
            name=self.name,
            state=self.state.value,
            seq=seq,
            generation=self.generation,
            pid=self.proc.pid if self.proc and self.proc.returncode is None else 0,
            identity=self.identity if running else "",
            ctx_len=self.ready.ctx_len if running and self.ready else 0,
            started_at=self.started_at,
            description=self.description,
        )

    def start(self) -> None:
        """Start (or, from FATAL, start again); a no-op while already alive."""
        if self._life is not None and not self._life.done():
            return
        self._backoff.reset()
        self._life = asyncio.create_task(self._supervise(), name=f"worker:{self.name}")

    async def stop(self) -> None:
        """Operator stop: never restarted afterwards."""
        life, self._life = self._life, None
        if life is not None:
            life.cancel()
            try:
                await life
            except asyncio.CancelledError:
                pass
        if self.proc is not None and self.proc.returncode is None:
            self._set(State.STOPPING, "stopping")
            await terminate(self.proc, self._settings.stop_grace)
        if self.state is not State.FATAL:
            self._set(State.STOPPED, "stopped")

    def on_report(self, generation: int, report: WorkerReport) -> None:
        if generation != self.generation:
            return  # a message from an earlier incarnation
        match report:
            case Heartbeat():
                self.last_heartbeat = report
            case Ready() | LoadFailed():
                if self._report is not None and not self._report.done():
                    self._report.set_result(report)

    async def _supervise(self) -> None:
        while True:
            failure = await self._run_once()
            delay = self._backoff.record_failure(time.monotonic())
            if delay is None:
                self._set(State.FATAL, f"{failure} (gave up after repeated failures)")
                return
            self._set(State.BACKOFF, f"{failure}; restarting in {delay:g}s")
            await asyncio.sleep(delay)

    async def _run_once(self) -> str:
        """Spawn, wait for Ready, serve until exit; returns why it ended."""
        self.generation += 1
        self.ready = None
        self.last_heartbeat = None
        self._report = asyncio.get_running_loop().create_future()
        self.proc = await spawn(self._argv(), self.log_path, self._death)
        self.started_at = time.time()
        self._set(State.STARTING, "loading")
        failure = await self._wait_ready(self.proc)
        if failure is not None:
            await terminate(self.proc, self._settings.stop_grace)
            return failure
        assert self.ready is not None
        self._set(State.RUNNING, f"load {self.ready.load_seconds:.2f}s")
        returncode = await self.proc.wait()
        return f"exited unexpectedly ({describe_exit(returncode)}): {log_tail(self.log_path)}"

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> str | None:
        assert self._report is not None
        exited = asyncio.ensure_future(proc.wait())
        try:
            done, _ = await asyncio.wait(
                {self._report, exited},
                timeout=self._settings.load_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            exited.cancel()
        if self._report in done:
            report = self._report.result()
            if isinstance(report, LoadFailed):
                return f"load failed: {report.message}"
            assert isinstance(report, Ready)
            if report.proto_version != PROTO_VERSION:
                return f"worker speaks proto {report.proto_version}, supervisor {PROTO_VERSION}"
            self.ready = report
            return None
        if exited in done:
            return f"exited while loading ({describe_exit(proc.returncode or 0)}): {log_tail(self.log_path)}"
        return f"not ready after load_timeout={self._settings.load_timeout:g}s"

    def _argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "opta_lmx.worker",
            "--model",
            self.name,
            "--path",
            self.model.path,
            "--generation",
            str(self.generation),
            "--data",
            self._addresses.data,
            "--control",
            self._addresses.control,
            "--death-fd",
            str(self._death.read_fd),
            "--heartbeat-interval",
            str(self._settings.heartbeat_interval),
        ]

    def _set(self, state: State, description: str) -> None:
        self.state = state
        self.description = description
        log.info("%s: %s (%s)", self.name, state.value, description)
        self._on_change(self)
