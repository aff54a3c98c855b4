"""The JSON summary's quantile estimates, against what Prometheus's histogram_quantile gives."""

from __future__ import annotations

import math

import pytest

from opta_lmx.gateway.metrics.registry import GatewayMetrics
from opta_lmx.gateway.metrics.live import NO_FIGURES
from opta_lmx.gateway.metrics.summary import quantile, summary
from opta_lmx.proto import ModelStatus

INF = math.inf


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, [(1.0, 10.0), (2.0, 20.0), (INF, 20.0)], 1.0),  # the 10th of 20 ends the first bucket
        (0.75, [(1.0, 10.0), (2.0, 20.0), (INF, 20.0)], 1.5),  # halfway through the second
        (0.25, [(1.0, 10.0), (2.0, 20.0), (INF, 20.0)], 0.5),  # the first bucket starts at 0
        (0.99, [(1.0, 1.0), (2.0, 1.0), (INF, 4.0)], 2.0),  # in +Inf: the highest finite bound
        (0.5, [(1.0, 0.0), (INF, 0.0)], None),
    ],
)
def test_quantile(q: float, buckets: list[tuple[float, float]], expected: float | None) -> None:
    assert quantile(q, buckets) == expected


def test_summary_sums_up_each_model() -> None:
    metrics = GatewayMetrics()
    metrics.requests.labels("m", "/v1/chat/completions", "openai", "200").inc(3)
    metrics.requests.labels("m", "/api/chat", "ollama", "200").inc(1)
    metrics.requests.labels("m", "/v1/chat/completions", "openai", "429").inc(2)
    metrics.requests.labels("", "/admin/models", "admin", "200").inc(1)
    metrics.completion_tokens.labels("m").inc(42)
    for seconds in (0.1, 0.2, 0.3, 3.0):
        metrics.ttft.labels("m").observe(seconds)
    metrics.on_status(ModelStatus("m", "RUNNING", 1, generation=1, load_seconds=1.5))
    metrics.live.figures = NO_FIGURES
    result = summary(metrics.registry.collect())
    m = result["models"]["m"]
    assert m["requests"] == {"total": 6, "by_status": {"200": 4, "429": 2}}
    assert m["tokens"]["completion"] == 42
    assert m["time_to_first_token_seconds"]["count"] == 4
    assert m["time_to_first_token_seconds"]["mean"] == pytest.approx(0.9)
    assert 0.1 <= m["time_to_first_token_seconds"]["p50"] <= 0.25
    assert m["load_seconds"]["count"] == 1
    assert result["requests_without_model"] == {"total": 1, "by_status": {"200": 1}}
    assert result["supervisor_up"] is False and result["memory_bytes"]["budget"] is None
