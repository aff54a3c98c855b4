"""One configured model's worker process and its life: start, ready, crash, backoff, stop.

Why a worker stopped is kept apart, because operators read it: a crash (exit status or signal,
with the tail of its log), a kill by the supervisor (hung, silent, memory), an eviction, an idle
unload, or an operator stop. Only crashes and supervisor kills are restarted.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import msgspec

from opta_lmx.config import ModelConfig, SupervisorConfig
from opta_lmx.proto import (
    PROTO_VERSION,
    Heartbeat,
    Load,
    LoadFailed,
    Ready,
    Shutdown,
    WorkerCommand,
    WorkerReport,
)
from opta_lmx.supervisor.memory_policy import WorkerView
from opta_lmx.supervisor.spawn import DeathPipe, describe_exit, log_tail, process_tree_uss, signal_group, spawn, terminate
from opta_lmx.supervisor.states import Backoff, State

log = logging.getLogger("opta_lmx.supervisor")

# A busy worker using at least this much CPU (cores, averaged between two heartbeats) is working,
# even while no token or prompt chunk completes. A worker stuck waiting uses almost none (its
# heartbeat thread about 1-3 % of a core); one computing on a machine with more busy processes
# than cores gets its share, which can be far under half a core, and must not be taken for hung.
# A thread spinning without end would pass too; the gateway's inter_token_timeout still ends
# its requests.
_COMPUTING_CORES = 0.1
# A worker loaded or used within this many heartbeats counts as busy for eviction: the requests
# it was loaded for reach it before its next heartbeat can show them.
_FRESH_HEARTBEATS = 3


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
        send: Callable[[str, WorkerCommand], None],
        take_spare: Callable[[], tuple[asyncio.subprocess.Process, str] | None] = lambda: None,
        kv_root: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.model = model
        self._env = env  # the worker's environment (None: the supervisor's)
        self._kv_root = kv_root  # the disk tier's default root: <data_dir>/kv
        self._settings = settings
        self._addresses = addresses
        self._death = death
        self.log_path = log_dir / f"{model.name.replace('/', '_')}.log"
        self._on_change = on_change
        self._send = send
        self._take_spare = take_spare
        self.timings = (0.0, 0.0, 0.0)  # spawn, imports, load of the last start
        self._backoff = Backoff(
            settings.backoff_initial, settings.backoff_max, settings.max_failures, settings.failure_window
        )
        self.state = State.STOPPED
        self.description = "Not started" if model.load_on_start else "Not loaded (loads on first request)"
        self.generation = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.ready: Ready | None = None
        self.last_heartbeat: Heartbeat | None = None
        self.last_used = time.monotonic()
        # A client's keep-alive for this load (``KeepAlive``); None: the config's.
        self.keep_alive_override: float | None = None
        self._heard_at = 0.0
        self._progress_at = 0.0
        self._beat_at = 0.0  # when the last heartbeat came
        self._kill_reason: str | None = None
        self._kill_cause = "signal"
        # Counts by cause (proto.RESTART_CAUSES, STOP_CAUSES) and the last exit, for operators.
        self.restarts: dict[str, int] = {}
        self.stops: dict[str, int] = {}
        self.last_exit = ("", "", 0.0)  # cause, description, wall-clock time
        # What the coming start evicted to make room, and how long that took (a swap).
        self.evicted: list[str] = []
        self.evict_seconds = 0.0
        self._report: asyncio.Future[WorkerReport] | None = None
        self._life: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def identity(self) -> str:
        return f"{self.name}#{self.generation}"

    @property
    def alive(self) -> bool:
        """Started and not given up: STARTING, RUNNING or BACKOFF."""
        return self._life is not None and not self._life.done()

    @property
    def active_requests(self) -> int:
        return self.last_heartbeat.active_requests if self.last_heartbeat else 0

    @property
    def pid(self) -> int:
        """The worker process's pid while it runs; 0 when there is none."""
        return self.proc.pid if self.proc and self.proc.returncode is None else 0

    def memory_used(self) -> int:
        """The larger of the worker's own report and the OS view of its process tree (USS)."""
        reported = self.last_heartbeat.memory.uss if self.last_heartbeat else 0
        return max(reported, process_tree_uss(self.pid) if self.pid else 0)

    @property
    def keep_alive(self) -> float:
        """Seconds idle before an unload; negative: never (a pinned model never goes idle)."""
        if self.model.pinned:
            return -1.0
        return self.model.keep_alive if self.keep_alive_override is None else self.keep_alive_override

    def set_keep_alive(self, seconds: float) -> None:
        """A request's keep-alive, counted from now (the request about to run is activity)."""
        self.keep_alive_override = seconds
        self.last_used = time.monotonic()

    def view(self, used: int, admission: bool = True) -> WorkerView:
        """The worker as the memory policy sees it. Busy: serving by its last heartbeat; for an
        admission also while still loading or loaded or used moments ago, when requests waiting
        for it may not show in a heartbeat yet (evicting it to load another model would strand
        them). Policing memory over the hard limit goes by the heartbeat alone: else a fresh idle
        worker would be killed instead of evicted."""
        fresh = admission and (
            self.state is State.STARTING
            or (self.state is State.RUNNING and time.monotonic() - self.last_used < _FRESH_HEARTBEATS * self._settings.heartbeat_interval)
        )
        return WorkerView(self.name, used, self.active_requests > 0 or fresh, self.model.pinned, self.last_used)

    def start(self, evicted: list[str] | None = None, evict_seconds: float = 0.0) -> None:
        """Start (or, from FATAL, start again); a no-op while already alive. ``evicted``: the
        models stopped to make room for this start, in ``evict_seconds``."""
        if self.alive:
            return
        self.evicted, self.evict_seconds = evicted or [], evict_seconds
        self._backoff.reset()
        self.last_used = time.monotonic()
        self._life = asyncio.create_task(self._supervise(), name=f"worker:{self.name}")
        # Published before the caller answers anyone, so "not loaded" is never read as "gave up".
        self._set(State.STARTING, "spawning")

    async def wait_settled(self, timeout: float) -> State:
        """Wait until the worker is RUNNING or has stopped trying (FATAL/STOPPED); returns the state."""
        deadline = time.monotonic() + timeout
        while self.state not in (State.RUNNING, State.FATAL, State.STOPPED) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.state

    async def stop(self, reason: str = "stopped by operator", drain: bool = True, cause: str = "operator") -> None:
        """Stop for good (never restarted): drain in-flight requests first when asked to.
        ``cause`` is counted (``proto.STOP_CAUSES``, or "shutdown", which is not)."""
        was_alive = self.alive
        life, self._life = self._life, None
        if life is not None:
            life.cancel()
            try:
                await life
            except asyncio.CancelledError:
                pass
        proc = self.proc
        was_running = proc is not None and proc.returncode is None
        if proc is not None and was_running:
            self._set(State.STOPPING, reason)
            if drain and self.ready is not None:
                self._send(self.identity, Shutdown(drain=True))
                try:
                    await asyncio.wait_for(proc.wait(), self._settings.drain_grace)
                except asyncio.TimeoutError:
                    log.warning("%s: requests still running after drain_grace; stopping anyway", self.name)
            await terminate(proc, self._settings.stop_grace)
        self.keep_alive_override = None  # it was for this load
        if was_running:
            self.last_exit = (cause, reason, time.time())
        if was_alive or was_running:
            if cause != "shutdown":
                self.stops[cause] = self.stops.get(cause, 0) + 1
            self._set(State.STOPPED, reason)

    def kill(self, sig: signal.Signals, reason: str, cause: str = "signal") -> bool:
        """Signal the worker's process group; the exit is then handled as a failure (restart),
        counted under ``cause`` (``proto.RESTART_CAUSES``)."""
        if self.proc is None or self.proc.returncode is not None:
            return False
        self._kill_reason = reason
        self._kill_cause = cause
        signal_group(self.proc.pid, sig)
        return True

    def on_report(self, generation: int, report: WorkerReport) -> None:
        if generation != self.generation:
            return  # a message from an earlier incarnation
        now = time.monotonic()
        self._heard_at = now
        match report:
            case Heartbeat():
                previous = self.last_heartbeat
                was_idle = previous is None or previous.active_requests == 0
                # The hang clock runs only while busy: it restarts when work arrives after idling,
                # and while the worker computes (one step can outlast hang_timeout: a big prompt
                # chunk on a CPU backend); a worker stuck waiting uses no CPU.
                if was_idle or report.progress != previous.progress or self._computing(previous, report, now):
                    self._progress_at = now
                self._beat_at = now
                if report.active_requests > 0 or (previous and report.progress != previous.progress):
                    self.last_used = now
                self.last_heartbeat = report
            case Ready() | LoadFailed():
                if self._report is not None and not self._report.done():
                    self._report.set_result(report)

    def _computing(self, previous: Heartbeat, report: Heartbeat, now: float) -> bool:
        """Whether the worker used at least ``_COMPUTING_CORES`` of CPU since its last heartbeat."""
        elapsed = now - self._beat_at
        return elapsed > 0 and report.cpu_seconds - previous.cpu_seconds >= _COMPUTING_CORES * elapsed

    def liveness_problem(self, now: float) -> tuple[str, str] | None:
        """Why a RUNNING worker must be killed, as (cause, words): "unresponsive" (silent) or
        "hung" (busy without progress); else None."""
        if self.state is not State.RUNNING:
            return None
        silent = now - self._heard_at
        if silent > self._settings.heartbeat_misses * self._settings.heartbeat_interval:
            return "unresponsive", f"no heartbeat for {silent:.1f}s"
        if self.active_requests > 0 and now - self._progress_at > self._settings.hang_timeout:
            return "hung", f"hung: {self.active_requests} requests and no progress for {now - self._progress_at:.1f}s"
        return None

    def idle_for(self, now: float) -> float:
        return 0.0 if self.active_requests else now - self.last_used

    async def _supervise(self) -> None:
        while True:
            cause, failure = await self._run_once()
            self.evicted, self.evict_seconds = [], 0.0  # they made room for the first start only
            self.last_exit = (cause, failure, time.time())
            delay = self._backoff.record_failure(time.monotonic())
            if delay is None:
                self._set(State.FATAL, f"{failure} (gave up after repeated failures)")
                return
            self.restarts[cause] = self.restarts.get(cause, 0) + 1
            self._set(State.BACKOFF, f"{failure}; restarting in {delay:g}s")
            await asyncio.sleep(delay)

    async def _run_once(self) -> tuple[str, str]:
        """Spawn, wait for Ready, serve until exit; returns why it ended: (cause, words)."""
        self.generation += 1
        self.ready = None
        self.last_heartbeat = None
        self._kill_reason = None
        self._report = asyncio.get_running_loop().create_future()
        began = time.monotonic()
        spare = self._take_spare()
        if spare is not None:
            self.proc, spare_identity = spare
            self._send(spare_identity, self._load_command())
        else:
            self.proc = await spawn(self._argv(), self.log_path, self._death, self._env)
        self.started_at = time.time()
        self._set(State.STARTING, "loading" + (" (warm spare)" if spare else ""))
        failure = await self._wait_ready(self.proc)
        if failure is not None:
            await terminate(self.proc, self._settings.stop_grace)
            return "load_failed", failure
        assert self.ready is not None
        self._heard_at = self._progress_at = self.last_used = time.monotonic()
        total = self._heard_at - began
        imports, load = self.ready.import_seconds, self.ready.load_seconds
        self.timings = (max(0.0, total - imports - load), imports, load)
        self._set(
            State.RUNNING,
            f"ready in {total:.2f}s (spawn {self.timings[0]:.2f}s, imports {imports:.2f}s, load {load:.2f}s"
            + (", warm spare)" if spare else ")"),
        )
        returncode = await self.proc.wait()
        return self._exit_reason(returncode)

    def _exit_reason(self, returncode: int) -> tuple[str, str]:
        if self._kill_reason is not None:
            return self._kill_cause, f"killed by the supervisor: {self._kill_reason} ({describe_exit(returncode)})"
        how = describe_exit(returncode)
        if returncode == -signal.SIGKILL:
            how += ": the kernel's out-of-memory killer, or another process"
        return "crash", f"exited unexpectedly ({how}): {log_tail(self.log_path)}"

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

    def _load_command(self) -> Load:
        return Load(
            model=self.name,
            path=self.model.path,
            engine=self.model.engine,
            generation=self.generation,
            heartbeat_interval=self._settings.heartbeat_interval,
            log_path=str(self.log_path),
            options=self._options_json(),
        )

    def _options_json(self) -> bytes:
        """The model's engine options for the worker, the disk tier's root filled in."""
        options = self.model.options
        if not options.kv_disk_dir and self._kv_root is not None:
            options = msgspec.structs.replace(options, kv_disk_dir=str(self._kv_root))
        return msgspec.json.encode(options)

    def _argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "opta_lmx.worker",
            "--model",
            self.name,
            "--path",
            self.model.path,
            "--engine",
            self.model.engine,
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
            "--options",
            self._options_json().decode(),
        ]

    def _set(self, state: State, description: str) -> None:
        self.state = state
        self.description = description
        log.info("%s: %s (%s)", self.name, state.value, description)
        self._on_change(self)
