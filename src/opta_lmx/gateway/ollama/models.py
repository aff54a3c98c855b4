"""Ollama's model routes: ``/api/tags`` (configured models), ``/api/show`` (one model's files),
``/api/ps`` (loaded models, from the supervisor), ``/api/version``, and the ``/`` probe."""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from opta_lmx.config import ModelConfig, Preset
from opta_lmx.gateway.ollama.facts import ModelFacts, human_number
from opta_lmx.gateway.ollama.model_files import read_model_files
from opta_lmx.gateway.ollama.replies import timestamp
from opta_lmx.gateway.ollama.requests import decode_show
from opta_lmx.gateway.ollama.serving import resolve_ollama
from opta_lmx.gateway.state import GatewayState
from opta_lmx.proto import ModelStatus

# The Ollama release whose API (api/types.go, docs/api.md) these routes follow; clients compare
# it with the versions they need (the newest features they use are older than it).
OLLAMA_VERSION = "0.32.15"
# What Ollama reports for a model kept loaded forever: now + the longest Go duration (~292 years).
_FOREVER_SECONDS = (2**63 - 1) / 1e9


async def root(request: Request) -> Response:
    return PlainTextResponse("Ollama is running")


async def version(request: Request) -> Response:
    return JSONResponse({"version": OLLAMA_VERSION})


async def tags(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    models = []
    for model in state.config.models:
        facts = await _facts(model)
        for name in (model.name, *model.aliases):
            models.append(
                {
                    "name": name,
                    "model": name,
                    "modified_at": timestamp(facts.modified),
                    "size": facts.size,
                    "digest": digest(model, facts),
                    "details": details(facts),
                    "capabilities": facts.capabilities,
                }
            )
    return JSONResponse({"models": models})


async def show(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    target = resolve_ollama(state, decode_show(await request.body()))
    facts = await _facts(target.model)
    parameters = _parameters(target.preset)
    return JSONResponse(
        {
            "modelfile": _modelfile(target.model, facts, parameters),
            "parameters": parameters,
            "template": facts.template,
            "details": details(facts),
            "model_info": facts.info,
            "capabilities": facts.capabilities,
            "modified_at": timestamp(facts.modified),
        }
    )


async def ps(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    now = time.time()
    loaded: list[tuple[float, dict[str, Any]]] = []
    for status in await state.models.live_statuses():
        model = state.config.model(status.name)
        if status.state != "RUNNING" or model is None:
            continue
        facts = await _facts(model)
        size = status.memory or facts.size
        expires = expires_at(status, now)
        loaded.append(
            (
                expires,
                {
                    "name": model.name,
                    "model": model.name,
                    "size": size,
                    "digest": digest(model, facts),
                    "details": details(facts),
                    "expires_at": timestamp(expires),
                    # MLX on Apple silicon keeps the whole model in GPU (unified) memory.
                    "size_vram": size if sys.platform == "darwin" and facts.format == "safetensors" else 0,
                    "context_length": status.ctx_len,
                },
            )
        )
    loaded.sort(key=lambda entry: entry[0], reverse=True)  # longest left first, as Ollama lists
    return JSONResponse({"models": [entry for _, entry in loaded]})


def expires_at(status: ModelStatus, now: float) -> float:
    """When the supervisor unloads the model if nothing uses it (wall-clock seconds): its
    keep-alive after its last activity, or after now while it is busy."""
    if status.keep_alive < 0:
        return now + _FOREVER_SECONDS
    since = now if status.active_requests else max(status.last_used, 0.0)
    return since + status.keep_alive


async def _facts(model: ModelConfig) -> ModelFacts:
    return await asyncio.to_thread(read_model_files, model.path)


def details(facts: ModelFacts) -> dict[str, Any]:
    family = facts.architecture
    return {
        "parent_model": "",
        "format": facts.format,
        "family": family,
        "families": [family] if family else None,
        "parameter_size": human_number(facts.parameter_count) if facts.parameter_count else "",
        "quantization_level": facts.quantization,
    }


def digest(model: ModelConfig, facts: ModelFacts) -> str:
    """A stable identity of the model's files (Ollama's is its manifest's sha256): changes when
    the files do."""
    return hashlib.sha256(f"{model.path}\0{facts.size}\0{facts.modified}".encode()).hexdigest()


def _parameters(preset: Preset) -> str:
    """The preset as Ollama's Modelfile parameters (one ``name value`` a line)."""
    lines = []
    for name, value in (
        ("temperature", preset.temperature),
        ("top_p", preset.top_p),
        ("num_predict", preset.max_tokens),
    ):
        if value is not None:
            lines.append(f"{name:<30} {value}")
    lines += [f'{"stop":<30} "{stop}"' for stop in preset.stop or ()]
    return "\n".join(lines)


def _modelfile(model: ModelConfig, facts: ModelFacts, parameters: str) -> str:
    lines = [f"# Modelfile of {model.name}, served by Opta-LMX", f"FROM {model.path}"]
    if facts.template:
        lines.append(f'TEMPLATE """{facts.template}"""')
    lines += [f"PARAMETER {line}" for line in parameters.splitlines()]
    return "\n".join(lines) + "\n"
