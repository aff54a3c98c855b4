"""Policing, every heartbeat interval: liveness (silent or hung workers are killed, and the crash
path restarts them), ``keep_alive`` idle unloads, and memory (trim above the soft limit; evict,
then kill, above the hard limit: ``memory_policy.police``)."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import TYPE_CHECKING

from opta_lmx.proto import Trim
from opta_lmx.supervisor import memory_policy as policy
from opta_lmx.supervisor.states import State

if TYPE_CHECKING:
    from opta_lmx.supervisor.main import Supervisor
    from opta_lmx.supervisor.worker_process import WorkerProcess

log = logging.getLogger("opta_lmx.supervisor")

# A worker asked to trim is not asked again for this long.
_TRIM_COOLDOWN = 10.0


class Policing:
    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._trimmed_at: dict[str, float] = {}
        self._over_hard = 0  # consecutive readings over the hard limit

    async def forever(self) -> None:
        while True:
            await asyncio.sleep(self._supervisor.config.supervisor.heartbeat_interval)
            try:
                self.once(time.monotonic())
            except Exception:  # a policing bug must not stop supervision
                log.exception("policing failed")

    def once(self, now: float) -> None:
        running = [w for w in self._supervisor.workers.values() if w.state is State.RUNNING and w.name not in self._supervisor.stopping]
        for worker in running:
            problem = worker.liveness_problem(now)
            if problem is not None:
                cause, words = problem
                log.error("%s: %s; killing it", worker.name, words)
                worker.kill(signal.SIGKILL, words, cause)
            elif self._idle_expired(worker, now):
                reason = f"unloaded after {worker.idle_for(now):.0f}s idle (keep_alive)"
                self._supervisor.stop_in_background(worker, reason, "idle")
        self._police_memory([w for w in running if w.name not in self._supervisor.stopping], now)

    def _idle_expired(self, worker: WorkerProcess, now: float) -> bool:
        keep_alive = worker.keep_alive
        if keep_alive < 0:
            return False
        # Never less than two heartbeats: a request sent right after Ready must show up first.
        return worker.idle_for(now) > max(keep_alive, 2 * self._supervisor.config.supervisor.heartbeat_interval)

    def _police_memory(self, running: list[WorkerProcess], now: float) -> None:
        limits = self._supervisor.limits()
        views = [w.view(w.memory_used(), admission=False) for w in running]
        actions, self._over_hard = policy.police(views, limits, self._over_hard)
        for action in actions:
            worker = self._supervisor.workers[action.name]
            match action:
                case policy.Trim() if now - self._trimmed_at.get(worker.name, -_TRIM_COOLDOWN) >= _TRIM_COOLDOWN:
                    self._trimmed_at[worker.name] = now
                    self._supervisor.send_to_worker(worker.identity, Trim())
                case policy.Evict(reason=reason):
                    self._supervisor.stop_in_background(worker, f"evicted: {reason}", "evicted")
                case policy.Kill(reason=reason):
                    log.error("%s: %s; killing it", worker.name, reason)
                    worker.kill(signal.SIGKILL, reason, "memory")
