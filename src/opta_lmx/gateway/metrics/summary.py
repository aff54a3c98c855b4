"""``/admin/metrics.json``: the same registry as ``/metrics``, summed up per model for people
and dashboards that do not speak PromQL. Quantiles are estimated from the histogram buckets by
linear interpolation, as Prometheus's ``histogram_quantile`` does."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable

from prometheus_client.core import Metric

QUANTILES = (0.5, 0.9, 0.99)

# Per-model histograms: JSON key, metric name.
_HISTOGRAMS = (
    ("time_to_first_token_seconds", "opta_lmx_time_to_first_token_seconds"),
    ("inter_token_seconds", "opta_lmx_inter_token_seconds"),
    ("request_duration_seconds", "opta_lmx_request_duration_seconds"),
    ("load_seconds", "opta_lmx_model_load_seconds"),
    ("swap_seconds", "opta_lmx_model_swap_seconds"),
)
_GAUGES = (
    ("in_flight", "opta_lmx_requests_in_flight"),
    ("queued", "opta_lmx_requests_queued"),
    ("queue_limit", "opta_lmx_request_queue_limit"),
    ("worker_active_requests", "opta_lmx_worker_active_requests"),
    ("memory_bytes", "opta_lmx_worker_memory_bytes"),
    ("counted_memory_bytes", "opta_lmx_worker_counted_memory_bytes"),
    ("mlx_active_bytes", "opta_lmx_worker_mlx_active_bytes"),
    ("mlx_cache_bytes", "opta_lmx_worker_mlx_cache_bytes"),
)
_TOKENS = (
    ("prompt", "opta_lmx_prompt_tokens_total"),
    ("cached", "opta_lmx_cached_prompt_tokens_total"),
    ("completion", "opta_lmx_completion_tokens_total"),
)
_MEMORY = ("budget", "used", "soft_limit", "hard_limit")


class _Samples:
    """Every sample of one scrape, by name: a list of (labels, value)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.by_name: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for family in families:
            for sample in family.samples:
                self.by_name[sample.name].append((sample.labels, sample.value))

    def per_model(self, name: str) -> dict[str, float]:
        """The samples of ``name`` summed by their ``model`` label."""
        sums: dict[str, float] = defaultdict(float)
        for labels, value in self.by_name.get(name, ()):
            sums[labels.get("model", "")] += value
        return sums


def summary(families: Iterable[Metric]) -> dict[str, Any]:
    samples = _Samples(families)
    up = samples.by_name.get("opta_lmx_supervisor_up", [({}, 0.0)])[0][1] == 1.0
    memory = {key: _only(samples, f"opta_lmx_memory_{key}_bytes") for key in _MEMORY}
    models: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(dict))
    for labels, value in samples.by_name.get("opta_lmx_worker_state", ()):
        if value == 1.0:
            models[labels["model"]]["state"] = labels["state"]
    for labels, value in samples.by_name.get("opta_lmx_requests_total", ()):
        entry = models[labels["model"]]["requests"]
        by_status = entry.setdefault("by_status", {})
        by_status[labels["status"]] = by_status.get(labels["status"], 0) + int(value)
        entry["total"] = entry.get("total", 0) + int(value)
    for key, name in _TOKENS:
        for model, value in samples.per_model(name).items():
            models[model]["tokens"][key] = int(value)
    for key, name in _GAUGES:
        for model, value in samples.per_model(name).items():
            models[model][key] = int(value)
    for key, name in (("restarts", "opta_lmx_worker_restarts_total"), ("stops", "opta_lmx_worker_stops_total")):
        for labels, value in samples.by_name.get(name, ()):
            if value:
                models[labels["model"]][key][labels["cause"]] = int(value)
    for key, name in _HISTOGRAMS:
        for model, stats in _histograms(samples, name).items():
            models[model][key] = stats
    unresolved = models.pop("", {})  # admin, health, and requests refused before a model was known
    return {
        "supervisor_up": up,
        "memory_bytes": memory,
        "models": {m: dict(v) for m, v in sorted(models.items())},
        "requests_without_model": dict(unresolved.get("requests", {})),
    }


def _only(samples: _Samples, name: str) -> int | None:
    values = samples.by_name.get(name)
    return int(values[0][1]) if values else None


def _histograms(samples: _Samples, name: str) -> dict[str, dict[str, float | int | None]]:
    """Per model (summed over other labels): count, mean and the ``QUANTILES`` estimates."""
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for labels, value in samples.by_name.get(f"{name}_bucket", ()):
        buckets[labels.get("model", "")][float(labels["le"])] += value
    sums = samples.per_model(f"{name}_sum")
    result = {}
    for model, cumulative in buckets.items():
        ordered = sorted(cumulative.items())
        count = ordered[-1][1] if ordered else 0.0
        if not count:
            continue
        stats: dict[str, float | int | None] = {"count": int(count), "mean": sums.get(model, 0.0) / count}
        for q in QUANTILES:
            stats[f"p{round(q * 100)}"] = quantile(q, ordered)
        result[model] = stats
    return result


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile from cumulative ``(upper bound, count)`` buckets, ``+Inf`` last,
    interpolated linearly inside the bucket it falls in (from 0 for the first). A quantile in
    the ``+Inf`` bucket is the highest finite bound, as in Prometheus; None without samples."""
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower
