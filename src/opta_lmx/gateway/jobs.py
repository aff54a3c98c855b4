"""What every dialect does to turn a request into ``Generate`` fields: resolve the model, fill
sampling values from its preset, and say what the output is constrained to (a JSON schema, tools).

A dialect decodes its own body, then calls these with the values it found; what is left unset
(None) comes from the model's preset, and then from the API's neutral defaults.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import msgspec

from opta_lmx.config import ModelConfig, Preset
from opta_lmx.errors import ModelNotFound, ServerShuttingDown
from opta_lmx.gateway.generation import Job
from opta_lmx.gateway.state import GatewayState
from opta_lmx.proto import SamplingParams, Tool

_NO_PRESET = Preset()
_json = msgspec.json.Encoder()


class Target(NamedTuple):
    """The model a request names (by name or alias), its preset, and whether it is RUNNING now."""

    model: ModelConfig
    preset: Preset
    running: bool


def resolve(state: GatewayState, name: str) -> Target:
    if state.shutting_down:
        raise ServerShuttingDown("The server is shutting down; retry shortly.")
    model = state.config.model(name)
    status = state.models.get(model.name) if model is not None else None
    if model is None or status is None:
        raise ModelNotFound(f"The model '{name}' does not exist.", param="model")
    preset = state.config.presets.get(model.preset) if model.preset else None
    return Target(model, preset or _NO_PRESET, status.state == "RUNNING")


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def sampling(
    preset: Preset,
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    stop: list[str] | None = None,
    **others: Any,
) -> SamplingParams:
    """The request's values; where it has none, the preset's; else the neutral defaults.
    ``others`` are ``SamplingParams`` fields presets do not cover (None leaves the default)."""
    return SamplingParams(
        max_tokens=_first(max_tokens, preset.max_tokens),
        temperature=_first(temperature, preset.temperature, 1.0),
        top_p=_first(top_p, preset.top_p, 1.0),
        stop=stop if stop is not None else list(preset.stop or []),
        **{name: value for name, value in others.items() if value is not None},
    )


def nth_seed(params: SamplingParams, index: int) -> SamplingParams:
    """The ``index``-th of n choices: n choices from one seeded request must differ from each
    other, and still be reproducible."""
    if params.seed is None or index == 0:
        return params
    return msgspec.structs.replace(params, seed=params.seed + index)


def choices(model: str, fields: dict[str, Any], params: SamplingParams, n: int = 1) -> list[Job]:
    """One ``Job`` per choice; with a seed, choice *i* draws with ``seed + i``."""
    return [Job(model, {**fields, "params": nth_seed(params, i)}) for i in range(n)]


def thinking(wanted: bool | None) -> dict[str, Any]:
    """The ``Generate`` field that asks a reasoning model to reason (True) or not (False, the
    chat template's ``enable_thinking``); None leaves the template's default."""
    return {} if wanted is None else {"thinking": wanted}


ToolMode = Literal["none", "auto", "required"]


def constraints(
    json_schema: dict[str, Any] | None = None,
    tools: list[Tool] | None = None,
    mode: ToolMode = "auto",
    named: str | None = None,
    parallel: bool = True,
) -> dict[str, Any]:
    """The ``Generate`` fields that constrain the output: JSON that validates against
    ``json_schema``, and the tools. ``mode`` "none" does not show the tools to the model; "auto"
    lets it choose; "required" forces a call of one of them, and ``named`` one call of that one."""
    fields: dict[str, Any] = {}
    if json_schema is not None:
        fields["json_schema"] = _json.encode(json_schema).decode()
    if not tools or mode == "none":
        return fields
    if named is not None:
        tools = [t for t in tools if t.name == named]
    fields["tools"] = tools
    fields["tool_choice"] = "required" if mode == "required" or named is not None else "auto"
    fields["parallel_tool_calls"] = parallel and named is None
    return fields
