"""``/admin/models``: each configured model with its state, and the commands on one model.

Load, unload and restart are the supervisor's Start, Stop and Restart, as ``lmxctl`` sends them:
a load answers once the model is RUNNING (or failed), an unload once its requests drained and
the worker exited. A model already in the state asked for is a 409 (``already_started``,
``not_running``), as ``lmxctl`` reports it.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from opta_lmx.errors import InvalidRequest
from opta_lmx.gateway.admin.control import (
    ask,
    command_result,
    json_response,
    load_timeout,
    model_body,
    model_json,
    model_name,
    state_of,
    stop_timeout,
)
from opta_lmx.gateway.decoding import decode_body
from opta_lmx.gateway.metrics.live import queue_of
from opta_lmx.proto import GetModels, ModelsReply, Restart, Signal, Start, Stop, Tail, TailReply


class SignalBody(msgspec.Struct, forbid_unknown_fields=True):
    signal: str = "KILL"


_SIGNAL = msgspec.json.Decoder(SignalBody)


async def list_models(request: Request) -> Response:
    state = state_of(request)
    reply = await ask(state, GetModels())
    assert isinstance(reply, ModelsReply)
    return json_response({"models": [model_json(info, queue_of(state, info.name)) for info in reply.models]})


async def get_model(request: Request) -> Response:
    return json_response(await model_body(state_of(request), model_name(request)))


async def load(request: Request) -> Response:
    state, name = state_of(request), model_name(request)
    result = await ask(state, Start(name), load_timeout(state))
    return command_result(result, model=await model_body(state, name))


async def unload(request: Request) -> Response:
    state, name = state_of(request), model_name(request)
    result = await ask(state, Stop(name), stop_timeout(state))
    return command_result(result, model=await model_body(state, name))


async def restart(request: Request) -> Response:
    state, name = state_of(request), model_name(request)
    result = await ask(state, Restart(name), stop_timeout(state) + load_timeout(state))
    return command_result(result, model=await model_body(state, name))


async def signal(request: Request) -> Response:
    """Signal the worker's process group (default KILL); the supervisor restarts it."""
    body = decode_body(_SIGNAL, await request.body() or b"{}")
    result = await ask(state_of(request), Signal(model_name(request), body.signal.upper()))
    return command_result(result)


async def log(request: Request) -> Response:
    """The worker's log from byte ``offset`` (negative: its last ``-offset`` bytes; at most
    64 KiB a call); ``offset`` in the answer is where the next call continues."""
    raw = request.query_params.get("offset", "-1600")
    try:
        offset = int(raw)
    except ValueError:
        raise InvalidRequest(f"offset must be an integer, got {raw!r}", param="offset") from None
    reply = await ask(state_of(request), Tail(model_name(request), offset))
    assert isinstance(reply, TailReply)
    return json_response({"text": reply.text, "offset": reply.offset})
