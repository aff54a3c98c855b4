"""The admin routes' one way to act: the supervisor's control commands (the ones ``lmxctl``
sends), their replies as JSON, and their failures as errors in OpenAI's shape."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from opta_lmx.errors import (
    ApiError,
    ConfigRefused,
    InvalidRequest,
    ModelNotFound,
    StateConflict,
    WorkerUnavailable,
    failure_to_error,
)
from opta_lmx.gateway.metrics.live import Queue, queue_of
from opta_lmx.proto import CommandResult, ControlReply, ControlRequest, GetModels, ModelInfo, ModelsReply

if TYPE_CHECKING:
    from opta_lmx.gateway.state import GatewayState

# Beyond the supervisor's own bounds (load_timeout, drain_grace + stop_grace): its reply is late,
# not lost.
_MARGIN = 10.0


def state_of(request: Request) -> GatewayState:
    return request.app.state.gateway


def model_name(request: Request) -> str:
    """The ``{name}`` of the route, an alias resolved to its model's name."""
    return resolve(state_of(request), request.path_params["name"])


def resolve(state: GatewayState, name: str) -> str:
    """The model's name for ``name`` or an alias of it (an unknown name as it is: the supervisor
    answers that it does not know it)."""
    model = state.config.model(name)
    return model.name if model is not None else name


def load_timeout(state: GatewayState) -> float:
    return state.config.supervisor.load_timeout + _MARGIN


def stop_timeout(state: GatewayState) -> float:
    settings = state.config.supervisor
    return settings.drain_grace + settings.stop_grace + _MARGIN


async def ask(state: GatewayState, command: ControlRequest, timeout: float = _MARGIN) -> ControlReply:
    """The supervisor's reply; a failed ``CommandResult`` is raised as its error."""
    reply = await state.models.command(command, timeout)
    if isinstance(reply, CommandResult) and not reply.ok:
        raise result_error(reply)
    return reply


def result_error(result: CommandResult) -> ApiError:
    """The HTTP error for a failed command, by its code."""
    match result.code:
        case "model_not_found":
            return ModelNotFound(result.message, param="name")
        case "already_started" | "not_running":
            return StateConflict(result.message, result.code)
        case "invalid_config":
            return ConfigRefused(result.message)
        case "bad_signal":
            return InvalidRequest(result.message, param="signal")
        case "spawn_error" | "model_unavailable":
            error = WorkerUnavailable(result.message)
            error.code = result.code
            return error
        case "insufficient_memory":
            return failure_to_error(result.code, result.message)
    return ApiError(result.message)


async def model_info(state: GatewayState, name: str) -> ModelInfo:
    reply = await ask(state, GetModels(name))
    assert isinstance(reply, ModelsReply) and reply.models
    return reply.models[0]


def model_json(info: ModelInfo, queue: Queue) -> dict[str, Any]:
    """A model as the admin API shows it: its ``ModelInfo`` (settings, estimate, ``status``),
    the gateway's requests for it, and the running worker's uptime."""
    body: dict[str, Any] = msgspec.to_builtins(info)
    body["requests"] = {"in_flight": queue.in_flight, "queued": queue.queued, "limit": queue.limit}
    running = info.status.state == "RUNNING"
    body["uptime_seconds"] = round(time.time() - info.status.started_at, 3) if running else 0.0
    return body


async def model_body(state: GatewayState, name: str) -> dict[str, Any]:
    return model_json(await model_info(state, name), queue_of(state, name))


def json_response(value: Any, status: int = 200) -> Response:
    """``value`` (builtins or msgspec Structs) as JSON."""
    return Response(msgspec.json.encode(value), status_code=status, media_type="application/json")


def command_result(result: ControlReply, **extra: Any) -> Response:
    assert isinstance(result, CommandResult)
    return json_response({"ok": True, "message": result.message, **extra})
