"""Figures read fresh at each scrape: the supervisor's view of its workers and memory, and the
gateway's own count of requests in flight.

Worker state, memory, restarts and stops are the supervisor's own figures (its ``GetStatus``
and ``GetMemory`` replies, asked for at the scrape): the events the gateway follows carry memory
only as of a model's last state change, and counts kept by the supervisor survive a restart of
the gateway. Restarts and stops are counters the supervisor keeps since it started; they reset
when it does, which Prometheus's ``rate`` and ``increase`` handle as any counter reset.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Iterable, NamedTuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from opta_lmx.errors import ApiError
from opta_lmx.proto import RESTART_CAUSES, STOP_CAUSES, GetMemory, GetStatus, MemoryReply, ModelStatus, StatusReply

if TYPE_CHECKING:
    from opta_lmx.gateway.state import GatewayState

STATES = ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL")
# A scrape does not wait longer than this for the supervisor (Prometheus's own timeout is 10 s).
_ASK_TIMEOUT = 2.0


class Queue(NamedTuple):
    """The gateway's requests for one model: sent to its worker and not ended (each choice
    counts), those beyond its batch_size (waiting for a slot), and the limit past which new
    ones get 429."""

    in_flight: int
    queued: int
    limit: int


class LiveFigures(NamedTuple):
    supervisor_up: bool
    statuses: list[ModelStatus]
    memory: MemoryReply | None
    queues: dict[str, Queue]


NO_FIGURES = LiveFigures(False, [], None, {})


async def gather(state: GatewayState, timeout: float = _ASK_TIMEOUT) -> LiveFigures:
    """Ask the supervisor (both questions at once); without an answer within ``timeout`` seconds,
    the statuses of the last events stand in and ``supervisor_up`` is false."""
    try:
        status, memory = await asyncio.gather(
            state.models.command(GetStatus(), timeout), state.models.command(GetMemory(), timeout)
        )
    except ApiError:
        status = memory = None
    up = isinstance(status, StatusReply) and isinstance(memory, MemoryReply)
    statuses = status.models if isinstance(status, StatusReply) else state.models.statuses()
    return LiveFigures(up, statuses, memory if isinstance(memory, MemoryReply) else None, queues(state))


def queues(state: GatewayState) -> dict[str, Queue]:
    return {model.name: queue_of(state, model.name) for model in state.config.models}


def queue_of(state: GatewayState, name: str) -> Queue:
    """``name``'s queue now (all zero for a model no longer configured)."""
    model = state.config.model(name)
    if model is None:
        return Queue(0, 0, 0)
    in_flight = state.link.in_flight_for(model.name)
    return Queue(in_flight, max(0, in_flight - model.options.batch_size), state.config.request_limit(model))


class LiveCollector(Collector):
    """Turns the figures of the scrape in progress (``figures``, set just before the registry is
    read, with no await in between) into metric families."""

    def __init__(self) -> None:
        self.figures = NO_FIGURES

    def describe(self) -> Iterable[Metric]:
        return _families(NO_FIGURES)

    def collect(self) -> Iterable[Metric]:
        return _families(self.figures)


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels or [])


def _families(figures: LiveFigures) -> list[Metric]:
    up = _gauge("opta_lmx_supervisor_up", "1 if the supervisor answered this scrape; 0: worker figures are missing.")
    up.add_metric([], 1.0 if figures.supervisor_up else 0.0)
    return [up, *_queue_families(figures.queues), *_worker_families(figures), *_memory_families(figures.memory)]


def _queue_families(queues: dict[str, Queue]) -> list[Metric]:
    in_flight = _gauge(
        "opta_lmx_requests_in_flight", "Requests the gateway has admitted for the model and not ended: sent to its worker, or waiting for it to load (each choice counts).", ["model"]
    )
    queued = _gauge("opta_lmx_requests_queued", "Requests in flight beyond the model's batch_size: waiting for a batch slot.", ["model"])
    limit = _gauge("opta_lmx_request_queue_limit", "Requests in flight past which new ones get 429 (batch_size + max_queued).", ["model"])
    for name, queue in queues.items():
        in_flight.add_metric([name], queue.in_flight)
        queued.add_metric([name], queue.queued)
        limit.add_metric([name], queue.limit)
    return [in_flight, queued, limit]


def _worker_families(figures: LiveFigures) -> list[Metric]:
    state = _gauge("opta_lmx_worker_state", "1 for the worker's current state (supervisord's names), 0 for the others.", ["model", "state"])
    active = _gauge("opta_lmx_worker_active_requests", "Requests the worker reported holding at its last heartbeat.", ["model"])
    started = _gauge("opta_lmx_worker_start_time_seconds", "Unix time the running worker was started.", ["model"])
    phases = _gauge(
        "opta_lmx_model_last_load_seconds",
        "The last start's split: process spawn, imports, weights, and the first request's time to first token.",
        ["model", "phase"],
    )
    restarts = CounterMetricFamily(
        "opta_lmx_worker_restarts", "Unplanned worker exits the supervisor answered with a restart, by cause.", labels=["model", "cause"]
    )
    stops = CounterMetricFamily("opta_lmx_worker_stops", "Planned worker stops, by cause.", labels=["model", "cause"])
    for status in figures.statuses:
        for name in STATES:
            state.add_metric([status.name, name], 1.0 if status.state == name else 0.0)
        active.add_metric([status.name], status.active_requests)
        if status.state == "RUNNING":
            started.add_metric([status.name], status.started_at)
        split = (
            ("spawn", status.spawn_seconds),
            ("imports", status.import_seconds),
            ("weights", status.load_seconds),
            ("first_token", status.first_token_seconds),
        )
        for phase, seconds in split:
            phases.add_metric([status.name, phase], seconds)
        for cause in RESTART_CAUSES:
            restarts.add_metric([status.name, cause], status.restarts.get(cause, 0))
        for cause in STOP_CAUSES:
            stops.add_metric([status.name, cause], status.stops.get(cause, 0))
    return [state, active, started, phases, restarts, stops]


def _memory_families(memory: MemoryReply | None) -> list[Metric]:
    totals = [
        ("opta_lmx_memory_budget_bytes", "The memory all workers together may use.", "budget"),
        ("opta_lmx_memory_used_bytes", "What admission counts as used: the sum of the workers' counted memory.", "used"),
        ("opta_lmx_memory_soft_limit_bytes", "Above this, workers are asked to release cached memory.", "soft_limit"),
        ("opta_lmx_memory_hard_limit_bytes", "Above this for hard_readings readings, a worker is evicted or killed.", "hard_limit"),
    ]
    per_worker = [
        ("opta_lmx_worker_memory_bytes", "Measured: the larger of the worker's own USS and its process tree's.", "used"),
        ("opta_lmx_worker_counted_memory_bytes", "What admission counts: the larger of measured and estimated.", "counted"),
        ("opta_lmx_worker_mlx_active_bytes", "MLX arrays in use (weights, KV caches, prompt cache).", "mlx_active"),
        ("opta_lmx_worker_mlx_cache_bytes", "Freed buffers MLX's allocator keeps for reuse.", "mlx_cache"),
        ("opta_lmx_worker_mlx_peak_bytes", "MLX's peak memory since the worker started.", "mlx_peak"),
    ]
    families: list[Metric] = []
    for name, doc, field in totals:
        family = _gauge(name, doc)
        if memory is not None:
            family.add_metric([], getattr(memory, field))
        families.append(family)
    for name, doc, field in per_worker:
        family = _gauge(name, doc, ["model"])
        for worker in memory.workers if memory is not None else ():
            family.add_metric([worker.name], getattr(worker, field))
        families.append(family)
    return families
