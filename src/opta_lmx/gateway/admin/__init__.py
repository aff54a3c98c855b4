"""The admin API (``/admin/...``, JSON, OpenAI's error shape) and ``/metrics``.

Every route goes through the admin access rules (``access.py``: the admin key when one is set,
else loopback clients only), ``/metrics`` too: it names the models and their traffic. Each
command is one of the supervisor's control commands, the ones ``lmxctl`` sends.
docs/admin.md describes every route.
"""

from __future__ import annotations

from starlette.routing import Route

from opta_lmx.gateway.admin import metrics, models, pulls, server
from opta_lmx.gateway.admin.events import events
from opta_lmx.gateway.endpoints import guarded, openai_error


def routes() -> list[Route]:
    # Pull jobs first, then commands on one model: a model's name may contain "/", so
    # {name:path} would also match ".../load" as a name.
    endpoints = [
        ("/admin/models/pull", pulls.start, "POST"),
        ("/admin/models/pull", pulls.list_jobs, "GET"),
        ("/admin/models/pull/{id:pull_id}", pulls.get_job, "GET"),
        ("/admin/models/pull/{id:pull_id}/cancel", pulls.cancel, "POST"),
        ("/admin/models/pull/{id:pull_id}/events", pulls.events, "GET"),
        ("/admin/models/{name:path}/load", models.load, "POST"),
        ("/admin/models/{name:path}/unload", models.unload, "POST"),
        ("/admin/models/{name:path}/restart", models.restart, "POST"),
        ("/admin/models/{name:path}/signal", models.signal, "POST"),
        ("/admin/models/{name:path}/log", models.log, "GET"),
        ("/admin/models", models.list_models, "GET"),
        ("/admin/models/{name:path}", models.get_model, "GET"),
        ("/admin/models/{name:path}", pulls.remove, "DELETE"),
        ("/admin/memory", server.memory, "GET"),
        ("/admin/health", server.health, "GET"),
        ("/admin/config/reload", server.reload, "POST"),
        ("/admin/events", events, "GET"),
        ("/admin/metrics.json", metrics.metrics_json, "GET"),
        ("/metrics", metrics.prometheus, "GET"),
    ]
    bodies = {pulls.start: pulls.PullBody}  # for the OpenAPI document
    return [
        Route(path, guarded(endpoint, openai_error, admin=True, body=bodies.get(endpoint)), methods=[method])
        for path, endpoint, method in endpoints
    ]
