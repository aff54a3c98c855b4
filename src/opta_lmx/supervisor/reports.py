"""What the supervisor tells operators about its models and its memory (``GetModels``,
``GetMemory``): the figures admission itself works from, so an operator sees what it sees."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from opta_lmx.proto import AdmissionEstimate, MemoryReading, MemoryReply, ModelInfo, ModelStatus, WorkerMemory
from opta_lmx.supervisor import memory_policy as policy
from opta_lmx.supervisor.states import State

if TYPE_CHECKING:
    from opta_lmx.supervisor.main import Supervisor
    from opta_lmx.supervisor.worker_process import WorkerProcess


def model_status(worker: WorkerProcess, seq: int) -> ModelStatus:
    """The worker's state as the supervisor publishes it (``seq``: the change's number)."""
    running = worker.state is State.RUNNING
    # A STOPPING worker keeps its identity: its in-flight requests drain; nothing new is routed.
    serving = worker.ready is not None and worker.state in (State.RUNNING, State.STOPPING)
    memory = worker.last_heartbeat.memory if running and worker.last_heartbeat else MemoryReading()
    return ModelStatus(
        name=worker.name,
        state=worker.state.value,
        seq=seq,
        generation=worker.generation,
        pid=worker.pid,
        identity=worker.identity if serving else "",
        ctx_len=worker.ready.ctx_len if running and worker.ready else 0,
        started_at=worker.started_at,
        description=worker.description,
        memory=memory.uss,
        mlx_active=memory.mlx_active,
        mlx_cache=memory.mlx_cache,
        active_requests=worker.active_requests if running else 0,
        spawn_seconds=worker.timings[0],
        import_seconds=worker.timings[1],
        load_seconds=worker.timings[2],
        first_token_seconds=worker.last_heartbeat.first_token_seconds if worker.last_heartbeat else 0.0,
        keep_alive=worker.keep_alive,
        last_used=time.time() - (time.monotonic() - worker.last_used),
        restarts=dict(worker.restarts),
        stops=dict(worker.stops),
        last_exit_cause=worker.last_exit[0],
        last_exit=worker.last_exit[1],
        last_exit_at=worker.last_exit[2],
        queued=max(0, worker.active_requests - worker.model.options.batch_size) if running else 0,
        evicted=list(worker.evicted),
        evict_seconds=worker.evict_seconds,
    )


def model_info(supervisor: Supervisor, worker: WorkerProcess) -> ModelInfo:
    model = worker.model
    return ModelInfo(
        name=model.name,
        path=model.path,
        engine=model.engine,
        aliases=list(model.aliases),
        pinned=model.pinned,
        load_on_start=model.load_on_start,
        batch_size=model.options.batch_size,
        request_limit=supervisor.config.request_limit(model),
        estimate=supervisor.estimate(worker),
        status=supervisor.status_of(worker),
    )


def memory_report(supervisor: Supervisor, model: WorkerProcess | None) -> MemoryReply:
    """The budget and limits, each live worker's use, and the admission estimate for ``model``."""
    limits = supervisor.limits()
    workers = [_worker_memory(supervisor, w) for w in supervisor.workers.values() if w.alive]
    return MemoryReply(
        budget=limits.budget,
        used=sum(w.counted for w in workers),
        soft_limit=limits.soft,
        hard_limit=limits.hard,
        max_loaded_models=supervisor.config.memory.max_loaded_models,
        workers=workers,
        estimate=_estimate(supervisor, model, limits.budget, {w.name: w.counted for w in workers}) if model is not None else None,
    )


def _worker_memory(supervisor: Supervisor, worker: WorkerProcess) -> WorkerMemory:
    used = worker.memory_used()
    estimate = supervisor.estimate(worker)
    beat = worker.last_heartbeat
    reading = beat.memory if beat is not None else None
    return WorkerMemory(
        name=worker.name,
        state=worker.state.value,
        pid=worker.pid,
        counted=max(used, estimate),
        used=used,
        estimate=estimate,
        uss=reading.uss if reading else 0,
        rss=reading.rss if reading else 0,
        mlx_active=reading.mlx_active if reading else 0,
        mlx_cache=reading.mlx_cache if reading else 0,
        mlx_peak=reading.mlx_peak if reading else 0,
        busy=worker.active_requests > 0,
        pinned=worker.model.pinned,
    )


def _estimate(supervisor: Supervisor, worker: WorkerProcess, budget: int, counted: dict[str, int]) -> AdmissionEstimate:
    """The decision ``Supervisor.load`` would take now (a loaded model is counted as if it were
    not), from the workers' use as the report just ``counted`` it."""
    need = supervisor.estimate(worker)
    loaded = supervisor.admission_views(worker, counted)
    decision = policy.admit(need, loaded, budget, supervisor.config.memory.max_loaded_models)
    free = max(0, budget - sum(w.used for w in loaded))
    if isinstance(decision, policy.Refuse):
        return AdmissionEstimate(worker.name, worker.alive, need, free, False, reason=decision.reason)
    return AdmissionEstimate(worker.name, worker.alive, need, free, True, evict=decision.evict)
