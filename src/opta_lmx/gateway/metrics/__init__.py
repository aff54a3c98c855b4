"""Prometheus metrics: what the gateway counts per request (``requests.py``, ``registry.py``),
what the supervisor reports at each scrape (``live.py``), and the JSON summary (``summary.py``).
docs/admin.md lists every metric."""
