"""The Responses API's input items and content parts as msgspec Structs.

A message item may leave ``type`` out, so ``input`` is decoded as plain objects first and each
item converted here by its ``type`` (``input_items``); an error still names its path
(``input[2].content[0].text``).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import msgspec

from opta_lmx.errors import UnsupportedParameter
from opta_lmx.gateway.decoding import validation_error

T = TypeVar("T")
Status = Literal["in_progress", "completed", "incomplete"]


# --- content parts ------------------------------------------------------------------------------


class InputText(msgspec.Struct, tag="input_text", forbid_unknown_fields=True):
    text: str


class OutputText(msgspec.Struct, tag="output_text", forbid_unknown_fields=True):
    text: str
    annotations: list[Any] = []
    logprobs: list[Any] | None = None


class Refusal(msgspec.Struct, tag="refusal", forbid_unknown_fields=True):
    refusal: str


# Media parts are decoded only to be refused by name; their fields are not checked.
class InputImage(msgspec.Struct, tag="input_image"):
    pass


class InputFile(msgspec.Struct, tag="input_file"):
    pass


class InputAudio(msgspec.Struct, tag="input_audio"):
    pass


ContentPart = InputText | OutputText | Refusal | InputImage | InputFile | InputAudio


# --- input items --------------------------------------------------------------------------------


class MessageItem(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    type: Literal["message"] = "message"
    id: str | None = None
    status: Status | None = None
    phase: str | None = None  # "commentary" or "final_answer" on assistant messages: no meaning here


class FunctionCallItem(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    call_id: str
    name: str
    arguments: str
    type: Literal["function_call"] = "function_call"
    namespace: str | None = None
    id: str | None = None
    status: Status | None = None
    caller: dict[str, Any] | None = None


class FunctionCallOutputItem(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    call_id: str
    output: str | list[ContentPart]
    type: Literal["function_call_output"] = "function_call_output"
    name: str | None = None
    namespace: str | None = None
    id: str | None = None
    status: Status | None = None
    caller: dict[str, Any] | None = None


class CustomToolCallItem(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    call_id: str
    name: str
    input: str
    type: Literal["custom_tool_call"] = "custom_tool_call"
    namespace: str | None = None
    id: str | None = None
    status: Status | None = None
    caller: dict[str, Any] | None = None


class CustomToolCallOutputItem(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    call_id: str
    output: str | list[ContentPart]
    type: Literal["custom_tool_call_output"] = "custom_tool_call_output"
    name: str | None = None
    namespace: str | None = None
    id: str | None = None
    status: Status | None = None
    caller: dict[str, Any] | None = None


class ReasoningPart(msgspec.Struct, forbid_unknown_fields=True):
    text: str
    type: Literal["summary_text", "reasoning_text", "text"]


class ReasoningItem(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    summary: list[ReasoningPart] = []
    type: Literal["reasoning"] = "reasoning"
    id: str | None = None
    content: list[ReasoningPart] | None = None
    encrypted_content: str | None = None
    status: Status | None = None


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem | CustomToolCallItem | CustomToolCallOutputItem | ReasoningItem
_ITEM_TYPES: dict[str, type[Any]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
    "custom_tool_call": CustomToolCallItem,
    "custom_tool_call_output": CustomToolCallOutputItem,
    "reasoning": ReasoningItem,
}


def convert_at(value: Any, kind: type[T], path: str) -> T:
    """``msgspec.convert``, with a validation error's path rooted at ``path``."""
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if " - at `$" in message:
            message = message.replace(" - at `$", f" - at `$.{path}", 1)
        else:
            message = f"{message} - at `$.{path}`"
        raise validation_error(message) from None


def input_items(value: str | list[dict[str, Any]] | None) -> list[InputItem]:
    """``input`` as items: a string is one user message."""
    if value is None:
        return []
    if isinstance(value, str):
        return [MessageItem(role="user", content=value)]
    items = []
    for index, raw in enumerate(value):
        kind = raw.get("type", "message")
        item_type = _ITEM_TYPES.get(kind) if isinstance(kind, str) else None
        if item_type is None:
            raise UnsupportedParameter(
                f"Input items of type {kind!r} are not supported here (supported: {', '.join(_ITEM_TYPES)}).",
                param=f"input[{index}].type",
            )
        items.append(convert_at(raw, item_type, f"input[{index}]"))
    return items
