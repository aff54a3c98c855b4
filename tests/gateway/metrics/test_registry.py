"""The gateway's registry fed by hand-made records and statuses (no processes): what one request
and one worker start add, and the text parsed back with prometheus-client's parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from opta_lmx.errors import WorkerCrashed
from opta_lmx.gateway.link import Pending
from opta_lmx.gateway.metrics.live import NO_FIGURES, LiveFigures, Queue
from opta_lmx.gateway.metrics.registry import GatewayMetrics, dialect_of
from opta_lmx.gateway.metrics.requests import RequestRecord, _final_status
from opta_lmx.proto import Finished, MemoryReply, ModelStatus, WorkerMemory


def samples(metrics: GatewayMetrics, figures: LiveFigures = NO_FIGURES) -> dict[tuple[str, frozenset], float]:
    text = metrics.render(figures).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }


def pending(request_id: int, first_at: float, ended_at: float, finished: Finished | None) -> Pending:
    result = Pending(request_id, b"m#1")
    result.first_at, result.ended_at, result.finished = first_at, ended_at, finished
    return result


def scope(path: str) -> dict:
    return {"path": path, "route": type("Route", (), {"path": path})()}


def test_a_request_with_two_choices_counts_each_generation() -> None:
    metrics = GatewayMetrics()
    record = RequestRecord(arrived=100.0)
    record.model = "m"
    record.pendings = [
        pending(1, 100.5, 101.5, Finished(1, "length", 10, 5, 4)),
        pending(2, 100.25, 100.75, Finished(2, "length", 10, 3, 0)),
    ]
    metrics.observe_request(record, scope("/v1/chat/completions"), 200)
    got = samples(metrics)
    assert got[("opta_lmx_requests_total", frozenset({"model": "m", "route": "/v1/chat/completions", "dialect": "openai", "status": "200"}.items()))] == 1
    assert got[("opta_lmx_prompt_tokens_total", frozenset({"model": "m"}.items()))] == 20
    assert got[("opta_lmx_cached_prompt_tokens_total", frozenset({"model": "m"}.items()))] == 4
    assert got[("opta_lmx_completion_tokens_total", frozenset({"model": "m"}.items()))] == 8
    # The earliest first token of the choices; one inter-token figure per choice: 1.0/4, 0.5/2.
    assert got[("opta_lmx_time_to_first_token_seconds_sum", frozenset({"model": "m"}.items()))] == 0.25
    assert got[("opta_lmx_inter_token_seconds_count", frozenset({"model": "m"}.items()))] == 2
    assert got[("opta_lmx_inter_token_seconds_sum", frozenset({"model": "m"}.items()))] == 0.5


def test_token_counting_requests_and_unfinished_generations_add_no_tokens() -> None:
    metrics = GatewayMetrics()
    counting = RequestRecord(0.0)
    counting.model, counting.count_only = "m", True
    counting.pendings = [pending(1, 0.0, 0.1, Finished(1, "stop", 50, 0))]
    cut = RequestRecord(0.0)
    cut.model = "m"
    cut.pendings = [pending(2, 0.2, 0.0, None)]  # a token came, then the worker died
    metrics.observe_request(counting, scope("/v1/messages/count_tokens"), 200)
    metrics.observe_request(cut, scope("/v1/chat/completions"), 503)
    got = samples(metrics)
    assert ("opta_lmx_prompt_tokens_total", frozenset({"model": "m"}.items())) not in got
    assert got[("opta_lmx_time_to_first_token_seconds_count", frozenset({"model": "m"}.items()))] == 1
    assert ("opta_lmx_inter_token_seconds_count", frozenset({"model": "m"}.items())) not in got


def test_the_status_counted_is_what_the_client_got() -> None:
    record = RequestRecord(0.0)
    assert _final_status(record, 200, True) == 200
    record.error = WorkerCrashed("gone")  # a stream's terminal error, after a 200
    assert _final_status(record, 200, True) == 503
    assert _final_status(record, 429, True) == 429  # refused before the headers: its own status
    record.disconnected = True
    assert _final_status(record, 200, False) == 499
    assert _final_status(RequestRecord(0.0), 0, False) == 500  # no response at all: a bug


def test_each_worker_start_is_observed_once_and_a_start_that_evicted_is_a_swap() -> None:
    metrics = GatewayMetrics()
    running = ModelStatus("m", "RUNNING", 5, generation=1, spawn_seconds=0.5, import_seconds=2.0, load_seconds=1.0)
    metrics.on_status(ModelStatus("m", "STARTING", 4, generation=1))
    metrics.on_status(running)
    metrics.on_status(ModelStatus("m", "RUNNING", 6, generation=1, active_requests=1))  # same start
    metrics.on_status(ModelStatus("m", "RUNNING", 9, generation=2, load_seconds=1.0, evicted=["x"], evict_seconds=2.0))
    got = samples(metrics)
    model = frozenset({"model": "m"}.items())
    assert got[("opta_lmx_model_load_seconds_count", model)] == 2
    assert got[("opta_lmx_model_load_seconds_sum", model)] == 4.5
    assert got[("opta_lmx_model_swap_seconds_count", model)] == 1
    assert got[("opta_lmx_model_swap_seconds_sum", model)] == 3.0


def test_live_figures_become_gauges_and_the_supervisors_counters() -> None:
    status = ModelStatus("m", "BACKOFF", 3, restarts={"crash": 2}, stops={"evicted": 1})
    memory = MemoryReply(1000, 600, 850, 950, 0, [WorkerMemory("m", "RUNNING", 7, 600, 200, 600, mlx_active=50)])
    figures = LiveFigures(True, [status], memory, {"m": Queue(5, 3, 10)})
    got = samples(GatewayMetrics(), figures)
    m = {"model": "m"}
    assert got[("opta_lmx_supervisor_up", frozenset())] == 1
    assert got[("opta_lmx_requests_queued", frozenset(m.items()))] == 3
    assert got[("opta_lmx_worker_state", frozenset({**m, "state": "BACKOFF"}.items()))] == 1
    assert got[("opta_lmx_worker_state", frozenset({**m, "state": "RUNNING"}.items()))] == 0
    assert got[("opta_lmx_worker_restarts_total", frozenset({**m, "cause": "crash"}.items()))] == 2
    assert got[("opta_lmx_worker_restarts_total", frozenset({**m, "cause": "hung"}.items()))] == 0
    assert got[("opta_lmx_worker_stops_total", frozenset({**m, "cause": "evicted"}.items()))] == 1
    assert got[("opta_lmx_worker_counted_memory_bytes", frozenset(m.items()))] == 600
    assert got[("opta_lmx_worker_mlx_active_bytes", frozenset(m.items()))] == 50
    assert got[("opta_lmx_memory_budget_bytes", frozenset())] == 1000
    down = samples(GatewayMetrics(), NO_FIGURES)
    assert down[("opta_lmx_supervisor_up", frozenset())] == 0
    assert ("opta_lmx_memory_budget_bytes", frozenset()) not in down  # unknown, not zero


def test_dialects_by_path() -> None:
    cases = {
        "/v1/chat/completions": "openai",
        "/completions": "openai",
        "/v1/messages/count_tokens": "anthropic",
        "/api/chat": "ollama",
        "/": "ollama",
        "/admin/models/x/load": "admin",
        "/metrics": "admin",
        "/health": "health",
    }
    assert {path: dialect_of(path) for path in cases} == cases
