"""``/admin/memory``, ``/admin/health`` and ``/admin/config/reload``."""

from __future__ import annotations

import os
import time

from starlette.requests import Request
from starlette.responses import Response

from opta_lmx.gateway.admin.control import ask, command_result, json_response, resolve, state_of, stop_timeout
from opta_lmx.gateway.metrics.live import gather
from opta_lmx.proto import GetMemory, MemoryReply, Reload

# A reload drains the models it replaces one after the other; 15 minutes, as lmxctl waits.
_RELOAD_TIMEOUT = 15 * 60.0
_HEALTH_TIMEOUT = 2.0


async def memory(request: Request) -> Response:
    """The budget, each live worker's use, and with ``?model=NAME`` the admission estimate for it."""
    state = state_of(request)
    name = request.query_params.get("model")
    reply = await ask(state, GetMemory(resolve(state, name) if name is not None else None))
    assert isinstance(reply, MemoryReply)
    return json_response(reply)


async def health(request: Request) -> Response:
    """"ok"; "degraded" (200) when a model gave up (FATAL); "unavailable" (503) when the
    supervisor does not answer or the server is shutting down."""
    state = state_of(request)
    began = time.monotonic()
    figures = await gather(state, _HEALTH_TIMEOUT)
    seconds = time.monotonic() - began
    answered, statuses, memory = figures.supervisor_up, figures.statuses, figures.memory
    verdict = "ok"
    if any(s.state == "FATAL" for s in statuses):
        verdict = "degraded"
    if not answered or state.shutting_down:
        verdict = "unavailable"
    body = {
        "status": verdict,
        "gateway": {
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - state.started_at, 3),
            "shutting_down": state.shutting_down,
            "requests_in_flight": state.link.in_flight,
        },
        "supervisor": {"answering": answered, "seconds": round(seconds, 6) if answered else None},
        "models": {s.name: {"state": s.state, "description": s.description} for s in statuses},
        "memory": {"budget": memory.budget, "used": memory.used} if memory is not None else None,
    }
    return json_response(body, 503 if verdict == "unavailable" else 200)


async def reload(request: Request) -> Response:
    """Re-read the config file as ``lmxctl reload`` does: removed models drained and dropped,
    changed ones replaced, added ones created; an invalid file is refused (422) and the old
    config stays."""
    state = state_of(request)
    result = await ask(state, Reload(), max(_RELOAD_TIMEOUT, stop_timeout(state)))
    return command_result(result)
