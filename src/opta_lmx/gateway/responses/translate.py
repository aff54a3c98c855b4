"""A Responses request as ``Generate`` fields: its items as chat messages, its tools as functions,
its tool choice and text format as constraints (through ``jobs.constraints``).

Tools the model sees are functions: a function tool as it is; a custom tool as a function of one
string parameter, ``input`` (its call comes back as a ``custom_tool_call`` with that string); a
namespace's tools under ``namespace__name``; hosted tools not at all (nothing here runs them). A
custom tool the request forces (named, or ``required`` with only that tool) needs no function: its
grammar constrains the whole output, which is the call's input.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import msgspec

from opta_lmx.errors import InvalidRequest, UnsupportedParameter
from opta_lmx.gateway.jobs import ToolMode, constraints, thinking
from opta_lmx.gateway.responses.items import (
    ContentPart,
    CustomToolCallItem,
    CustomToolCallOutputItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    InputItem,
    InputText,
    MessageItem,
    OutputText,
    ReasoningItem,
    Refusal,
)
from opta_lmx.gateway.responses.requests import CreateResponse, ResponseRequest
from opta_lmx.gateway.responses.tools import AllowedTools, CustomTool, FunctionTool, GrammarFormat, NamedTool, NamespaceTool, ToolDef
from opta_lmx.proto import ChatMessage, Tool, ToolCall

NAMESPACE_SEPARATOR = "__"


class CallTarget(NamedTuple):
    """A tool the model can call, under the name it sees."""

    kind: str  # "function" or "custom"
    name: str  # the tool's own name
    namespace: str | None
    grammar: str | None  # a custom tool's Lark grammar (None: free text)


class ToolSet(NamedTuple):
    """The tools shown to the model, and what each name it may call stands for."""

    shown: list[Tool]
    by_name: dict[str, CallTarget]

    def target(self, name: str) -> CallTarget:
        """What a call of ``name`` is; a name the request did not give is taken for a function."""
        return self.by_name.get(name) or CallTarget("function", name, None, None)


class Plan(NamedTuple):
    """What the gateway sends and how it reads the reply."""

    fields: dict[str, Any]  # Generate fields: messages and constraints
    tools: ToolSet
    forced_custom: CallTarget | None  # the whole output is this custom tool's input
    conversation: list[ChatMessage]  # the earlier turns and this request's input, without instructions


def flat_name(namespace: str | None, name: str) -> str:
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace else name


# --- messages -----------------------------------------------------------------------------------


def part_text(parts: str | list[ContentPart], path: str) -> str:
    """The text of a content list (parts joined by a blank line); media is refused."""
    if isinstance(parts, str):
        return parts
    texts = []
    for index, part in enumerate(parts):
        if isinstance(part, (InputText, OutputText)):
            texts.append(part.text)
        elif isinstance(part, Refusal):
            texts.append(part.refusal)
        else:
            kind = type(part).__name__.removeprefix("Input").lower()
            raise UnsupportedParameter(
                f"This server does not accept {kind} input: only text content is supported.", param=f"{path}[{index}]"
            )
    return "\n\n".join(texts)


class _Turns:
    """Builds chat messages from items: an assistant's text and its calls are one turn."""

    def __init__(self) -> None:
        self.messages: list[ChatMessage] = []
        self._text: str | None = None  # the assistant turn being built
        self._calls: list[ToolCall] = []

    def flush(self) -> None:
        if self._text is not None or self._calls:
            self.messages.append(ChatMessage("assistant", self._text or "", list(self._calls)))
        self._text, self._calls = None, []

    def add(self, item: InputItem, path: str) -> None:
        match item:
            case MessageItem(role="assistant"):
                self.flush()
                self._text = part_text(item.content, f"{path}.content")
            case MessageItem():
                self.flush()
                role = "user" if item.role == "user" else "system"  # templates know no "developer"
                self.messages.append(ChatMessage(role, part_text(item.content, f"{path}.content")))
            case FunctionCallItem():
                self._calls.append(ToolCall(item.call_id, flat_name(item.namespace, item.name), item.arguments))
            case CustomToolCallItem():
                arguments = json.dumps({"input": item.input}, ensure_ascii=False)
                self._calls.append(ToolCall(item.call_id, flat_name(item.namespace, item.name), arguments))
            case FunctionCallOutputItem() | CustomToolCallOutputItem():
                self.flush()
                output = part_text(item.output, f"{path}.output")
                self.messages.append(ChatMessage("tool", output, tool_call_id=item.call_id))
            case ReasoningItem():
                # Past reasoning is not shown to the model: chat templates drop it from earlier
                # turns, and ``ChatMessage`` has no place for it.
                pass


def item_messages(items: list[InputItem]) -> list[ChatMessage]:
    """Items as chat messages, in order; a tool result carries the name of the call it answers
    when an earlier item made that call."""
    turns = _Turns()
    for index, item in enumerate(items):
        turns.add(item, f"input[{index}]")
    turns.flush()
    return turns.messages


def name_tool_results(messages: list[ChatMessage]) -> list[ChatMessage]:
    names = {call.id: call.name for m in messages for call in m.tool_calls}
    return [
        msgspec.structs.replace(m, name=names[m.tool_call_id])
        if m.role == "tool" and m.name is None and m.tool_call_id in names
        else m
        for m in messages
    ]


def prompt_messages(instructions: str | None, history: list[ChatMessage]) -> list[ChatMessage]:
    """``instructions`` first, then the conversation; the system messages that open it become one
    (chat templates expect at most one, first). Later system messages stay where they are, so a
    growing conversation keeps its prefix (and the prompt cache its hits)."""
    messages = ([ChatMessage("system", instructions)] if instructions else []) + history
    leading = 0
    while leading < len(messages) and messages[leading].role == "system":
        leading += 1
    if leading > 1:
        merged = ChatMessage("system", "\n\n".join(m.content for m in messages[:leading]))
        messages = [merged, *messages[leading:]]
    return name_tool_results(messages)


# --- tools --------------------------------------------------------------------------------------


def lark_of(format: GrammarFormat) -> str:
    """A custom tool's grammar as Lark; a regular expression becomes Lark's ``start: /.../``."""
    if format.syntax == "lark":
        return format.definition
    return f"start: /{_slashes_escaped(format.definition)}/\n"


def _slashes_escaped(regex: str) -> str:
    """``regex`` with each unescaped ``/`` escaped, so it fits between Lark's slashes."""
    out = []
    escaped = False
    for char in regex:
        if char == "/" and not escaped:
            out.append("\\")
        out.append(char)
        escaped = char == "\\" and not escaped
    return "".join(out)


def _custom_function(name: str, tool: CustomTool, grammar: str | None) -> Tool:
    description = tool.description or ""
    if grammar is not None:
        description += f"\n\nThe input must be in the language of this Lark grammar:\n{grammar}"
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {"input": {"type": "string", "description": "The tool's input, as free text."}},
        "required": ["input"],
        "additionalProperties": False,
    }
    if isinstance(tool.format, GrammarFormat) and tool.format.syntax == "regex":
        # A regular expression fits in the string's schema, so the grammar of the calls holds the
        # input to it; a Lark grammar does not, and is only described to the model.
        parameters["properties"]["input"]["pattern"] = f"^(?:{tool.format.definition})$"
    return Tool(name, description.strip() or None, parameters)


def tool_set(tools: list[ToolDef]) -> ToolSet:
    shown: list[Tool] = []
    by_name: dict[str, CallTarget] = {}

    def add(tool: FunctionTool | CustomTool, namespace: str | None) -> None:
        name = flat_name(namespace, tool.name)
        if isinstance(tool, FunctionTool):
            shown.append(Tool(name, tool.description, tool.parameters or {}))
            by_name[name] = CallTarget("function", tool.name, namespace, None)
        else:
            grammar = lark_of(tool.format) if isinstance(tool.format, GrammarFormat) else None
            shown.append(_custom_function(name, tool, grammar))
            by_name[name] = CallTarget("custom", tool.name, namespace, grammar)

    for tool in tools:
        if isinstance(tool, NamespaceTool):
            for member in tool.tools:
                add(member, tool.name)
        elif isinstance(tool, (FunctionTool, CustomTool)):
            add(tool, None)
    return ToolSet(shown, by_name)


def _allowed(tools: ToolSet, allowed: AllowedTools) -> ToolSet:
    """Only the tools ``allowed_tools`` lists (by type and name)."""
    wanted = {(t.get("type"), t.get("name")) for t in allowed.tools}
    kept = {
        name: entry
        for name, entry in tools.by_name.items()
        if (entry.kind, entry.name) in wanted or (entry.kind, name) in wanted
    }
    return ToolSet([t for t in tools.shown if t.name in kept], kept)


def plan(request: ResponseRequest, history: list[ChatMessage]) -> Plan:
    """The ``Generate`` fields for a request whose earlier turns (``previous_response_id``) are
    ``history``."""
    body = request.body
    conversation = history + item_messages(request.items)
    messages = prompt_messages(body.instructions, conversation)
    tools = tool_set(request.tools)
    choice = request.tool_choice
    mode: ToolMode = "auto"
    named: str | None = None
    if isinstance(choice, AllowedTools):
        tools, mode = _allowed(tools, choice), choice.mode
    elif isinstance(choice, NamedTool):
        named = choice.name
        mode = "required"
    else:
        mode = choice
    if mode == "required" and not tools.by_name:
        raise InvalidRequest("tool_choice 'required' needs a function or custom tool the model can call.", param="tool_choice")
    forced = _forced_custom(tools, mode, named, choice)
    effort = body.reasoning.effort if body.reasoning is not None else None
    fields: dict[str, Any] = {"messages": messages, **thinking(False if effort == "none" else None)}
    if forced is not None:
        if forced.grammar is not None:
            fields["grammar"] = forced.grammar
        return Plan(fields, tools, forced, conversation)
    fields.update(constraints(_json_schema(body), tools.shown, mode, named, body.parallel_tool_calls is not False))
    return Plan(fields, tools, None, conversation)


def _forced_custom(tools: ToolSet, mode: ToolMode, named: str | None, choice: Any) -> CallTarget | None:
    """The custom tool whose input the whole output is: one named, or the only tool when a call
    is required."""
    if isinstance(choice, NamedTool) and choice.type == "custom":
        return next(entry for entry in tools.by_name.values() if entry.kind == "custom" and entry.name == named)
    if mode == "required" and len(tools.by_name) == 1:
        (entry,) = tools.by_name.values()
        return entry if entry.kind == "custom" else None
    return None


def _json_schema(body: CreateResponse) -> dict[str, Any] | None:
    text_format = body.text.format if body.text is not None else None
    if text_format is None or text_format.type == "text":
        return None
    return text_format.schema if text_format.schema is not None else {"type": "object"}
