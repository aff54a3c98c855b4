"""The Responses API's tools and tool choices as msgspec Structs.

Tools are told apart by ``type``, and hosted tools (run on OpenAI's servers) are many types with
settings of their own: each tool is converted here by its ``type`` (``tool_defs``), hosted ones
kept only by name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from opta_lmx.errors import InvalidRequest, UnsupportedParameter
from opta_lmx.gateway.responses.items import convert_at


# --- tools --------------------------------------------------------------------------------------

FunctionName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
Callers = list[Literal["direct", "programmatic"]]


class FunctionTool(msgspec.Struct, tag="function", kw_only=True, forbid_unknown_fields=True):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; None: no arguments
    strict: bool | None = None
    # Accepted, no meaning here: who may call it, asynchronous results, tool search, output shape.
    allowed_callers: Callers | None = None
    async_: bool | None = msgspec.field(default=None, name="async")
    defer_loading: bool | None = None
    output_schema: dict[str, Any] | None = None


class TextFormat(msgspec.Struct, tag="text", forbid_unknown_fields=True):
    pass


class GrammarFormat(msgspec.Struct, tag="grammar", forbid_unknown_fields=True):
    syntax: Literal["lark", "regex"]
    definition: str


class CustomTool(msgspec.Struct, tag="custom", kw_only=True, forbid_unknown_fields=True):
    """A tool whose input is free text, or text in a grammar's language (Codex's ``apply_patch``)."""

    name: FunctionName
    description: str | None = None
    format: TextFormat | GrammarFormat | None = None
    allowed_callers: Callers | None = None
    async_: bool | None = msgspec.field(default=None, name="async")
    defer_loading: bool | None = None


class NamespaceTool(msgspec.Struct, tag="namespace", kw_only=True, forbid_unknown_fields=True):
    """Function and custom tools grouped under a name; the client runs them, as any function."""

    name: FunctionName
    description: str | None = None
    tools: list[FunctionTool | CustomTool]


class HostedTool(msgspec.Struct, kw_only=True):
    """A tool OpenAI's servers run (web search, code interpreter...): nothing here can run it.
    Its settings are not checked."""

    type: str


# The hosted tools of the API (openai-python's ``ToolParam`` union): accepted, never shown to the model.
HOSTED_TOOL_TYPES = frozenset(
    {
        "web_search",
        "web_search_2025_08_26",
        "web_search_preview",
        "web_search_preview_2025_03_11",
        "file_search",
        "code_interpreter",
        "image_generation",
        "computer",
        "computer_use",
        "computer_use_preview",
        "mcp",
        "local_shell",
        "shell",
        "apply_patch",
        "tool_search",
        "programmatic_tool_calling",
    }
)
ToolDef = FunctionTool | CustomTool | NamespaceTool | HostedTool
_TOOL_TYPES: dict[str, type[Any]] = {"function": FunctionTool, "custom": CustomTool, "namespace": NamespaceTool}


class NamedTool(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``tool_choice`` naming one tool: ``{"type": "function" | "custom", "name": ...}``."""

    type: Literal["function", "custom"]
    name: str


class AllowedTools(msgspec.Struct, tag="allowed_tools", kw_only=True, forbid_unknown_fields=True):
    """``tool_choice`` limiting the model to some of the tools (by ``type`` and ``name``)."""

    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]]


ToolChoice = Literal["none", "auto", "required"] | NamedTool | AllowedTools


def tool_defs(values: list[dict[str, Any]]) -> list[ToolDef]:
    tools: list[ToolDef] = []
    for index, raw in enumerate(values):
        kind = raw.get("type")
        if kind in HOSTED_TOOL_TYPES:
            tools.append(HostedTool(type=kind))
            continue
        tool_type = _TOOL_TYPES.get(kind) if isinstance(kind, str) else None
        if tool_type is None:
            raise InvalidRequest(f"Unknown tool type {kind!r}.", param=f"tools[{index}].type")
        tools.append(convert_at(raw, tool_type, f"tools[{index}]"))
    return tools


def tool_choice(value: str | dict[str, Any] | None, tools: list[ToolDef]) -> ToolChoice:
    """The tool choice, checked against the tools: it may force only a tool the model can call."""
    if value is None:
        return "auto"
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise InvalidRequest(f"Invalid value for 'tool_choice': {value!r}.", param="tool_choice")
        return value  # type: ignore[return-value]
    kind = value.get("type")
    if kind == "allowed_tools":
        return convert_at(value, AllowedTools, "tool_choice")
    if kind not in ("function", "custom"):
        raise UnsupportedParameter(
            f"tool_choice of type {kind!r} forces a tool that runs on OpenAI's servers; none runs here.",
            param="tool_choice",
        )
    named = convert_at(value, NamedTool, "tool_choice")
    wanted = FunctionTool if named.type == "function" else CustomTool
    if not any(isinstance(t, wanted) and t.name == named.name for t in tools):
        raise InvalidRequest(f"tool_choice names the {named.type} tool '{named.name}', which is not in 'tools'.", param="tool_choice")
    return named
