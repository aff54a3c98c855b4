"""``GET /openapi.json``: an OpenAPI 3.1 document of every route, its request body's schema made
from the msgspec Struct the route decodes with (``guarded(..., body=Struct)``), never by hand.

Replies are described loosely (the dialects' reply shapes are written as dicts, not Structs):
every operation answers JSON, or an event stream where it streams, with its status. What the
document pins down is what the server accepts, which is what a client (or a fuzzer) needs.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from opta_lmx import __version__

_PATH_PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")
_MEDIA = {
    "application/json": {"schema": {}},
    "text/event-stream": {"schema": {"type": "string"}},
    "application/x-ndjson": {"schema": {"type": "string"}},
    "text/plain": {"schema": {"type": "string"}},
}


def openapi_document(routes: list[BaseRoute], models: list[str] = []) -> dict[str, Any]:
    """The document of ``routes``; ``models`` (the names served) are the ``model`` fields' examples."""
    described = [r for r in routes if isinstance(r, Route) and r.methods]
    bodies = sorted({b for r in described if (b := _body(r)) is not None}, key=lambda t: t.__name__)
    schemas, components = msgspec.json.schema_components(bodies, ref_template="#/components/schemas/{name}")
    body_schema = dict(zip(bodies, schemas))
    for schema in schemas:
        model_field = components[schema["$ref"].rsplit("/", 1)[1]].get("properties", {}).get("model")
        if model_field is not None and models:
            model_field["examples"] = list(models)
    paths: dict[str, dict[str, Any]] = {}
    for route in described:
        for method in sorted(m for m in route.methods or () if m != "HEAD"):
            # Starlette's {name:path} is OpenAPI's {name}.
            paths.setdefault(_PATH_PARAM.sub(r"{\1}", route.path), {})[method.lower()] = _operation(route, method, body_schema)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Opta-LMX", "version": __version__},
        "paths": paths,
        "components": {"schemas": components},
    }


def _body(route: Route) -> type | None:
    return getattr(route.endpoint, "request_body", None)


def _operation(route: Route, method: str, body_schema: dict[type, Any]) -> dict[str, Any]:
    name = re.sub(r"[^A-Za-z0-9]+", "_", route.path).strip("_") or "root"
    operation: dict[str, Any] = {
        "operationId": f"{method.lower()}_{name}",
        "responses": {"default": {"description": "The reply, or an error in the route's dialect's shape.", "content": _MEDIA}},
    }
    if getattr(route.endpoint, "not_implemented", False):
        operation["description"] = "Not implemented by this server: always 501."
    parameters = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in _PATH_PARAM.findall(route.path)
    ]
    if parameters:
        operation["parameters"] = parameters
    body = _body(route)
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body_schema[body]}}}
    return operation


async def openapi_json(request: Request) -> Response:
    config = request.app.state.gateway.config
    names = [name for model in config.models for name in (model.name, *model.aliases)]
    return JSONResponse(openapi_document(request.app.routes, names))
