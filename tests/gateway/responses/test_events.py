"""The Responses API's output writer, fed worker messages by hand: the items it makes and the
events it sends, in their order, with growing sequence numbers."""

from __future__ import annotations

import json
from typing import Any

from opta_lmx.errors import WorkerCrashed
from opta_lmx.gateway.responses.events import OutputWriter
from opta_lmx.gateway.responses.objects import Envelope
from opta_lmx.gateway.responses.requests import decode_request
from opta_lmx.gateway.responses.translate import CallTarget, ToolSet, plan
from opta_lmx.proto import Finished, SamplingParams, TokenChunk, TokenLogprobs, ToolCall

STOP = Finished(1, "stop", 10, 6, 4)
PATCH_TOOL = {"type": "custom", "name": "apply_patch", "format": {"type": "grammar", "syntax": "lark", "definition": 'start: "x"'}}


def writer(streaming: bool = True, **request: Any) -> OutputWriter:
    parsed = decode_request(json.dumps({"model": "m", "input": "hi", **request}).encode())
    planned = plan(parsed, [])
    return OutputWriter(Envelope(parsed, "m", SamplingParams()), planned.tools, planned.forced_custom, streaming)


def chunk(text: str = "", reasoning: str = "", calls: list[ToolCall] | None = None, n: int = 1, **kw: Any) -> TokenChunk:
    return TokenChunk(1, text, n, kw.get("logprobs"), reasoning, calls or [])


def events(data: bytes) -> list[dict[str, Any]]:
    """The events of an SSE body; each ``event:`` line names the type its data repeats."""
    out = []
    for block in data.decode().split("\n\n"):
        if not block:
            continue
        name, payload = block.split("\n")
        assert name.startswith("event: ") and payload.startswith("data: "), block
        event = json.loads(payload.removeprefix("data: "))
        assert event["type"] == name.removeprefix("event: ")
        out.append(event)
    return out


def run(w: OutputWriter, *chunks: TokenChunk, finished: Finished = STOP) -> list[dict[str, Any]]:
    data = w.start() + b"".join(w.feed(c) for c in chunks) + w.finish(finished)
    seen = events(data)
    assert [e["sequence_number"] for e in seen] == list(range(len(seen)))
    return seen


def types(seen: list[dict[str, Any]]) -> list[str]:
    return [e["type"].removeprefix("response.") for e in seen]


def test_text_is_one_message_with_its_events_in_order() -> None:
    w = writer()
    seen = run(w, chunk("Hel"), chunk("lo"))
    assert types(seen) == [
        "created",
        "in_progress",
        "output_item.added",
        "content_part.added",
        "output_text.delta",
        "output_text.delta",
        "output_text.done",
        "content_part.done",
        "output_item.done",
        "completed",
    ]
    assert seen[0]["response"]["status"] == "in_progress" and seen[0]["response"]["output"] == []
    added, done = seen[2]["item"], seen[8]["item"]
    assert added["status"] == "in_progress" and added["content"] == []
    assert done == {
        "id": added["id"],
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}],
    }
    assert all(e["item_id"] == added["id"] for e in seen[3:8])
    assert seen[6]["text"] == "Hello"
    final = seen[-1]["response"]
    assert final == w.final and final["status"] == "completed" and final["output"] == [done]
    assert final["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
        "output_tokens": 6,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 16,
    }


def test_reasoning_then_answer_are_two_items_and_reasoning_tokens_are_counted() -> None:
    w = writer()
    seen = run(w, chunk(reasoning="think", n=2), chunk(reasoning=" more"), chunk("\n\n"), chunk("Yes", n=3))
    assert types(seen)[2:-1] == [
        "output_item.added",
        "content_part.added",
        "reasoning_text.delta",
        "reasoning_text.delta",
        "reasoning_text.done",
        "content_part.done",
        "output_item.done",
        "output_item.added",
        "content_part.added",
        "output_text.delta",
        "output_text.done",
        "content_part.done",
        "output_item.done",
    ]
    reasoning, message = w.final["output"]
    assert reasoning["type"] == "reasoning" and reasoning["summary"] == [] and reasoning["encrypted_content"] is None
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "think more"}]
    assert message["content"][0]["text"] == "\n\nYes"  # the held line break goes with the text
    assert [e["output_index"] for e in seen if e["type"] == "response.output_item.done"] == [0, 1]
    assert w.final["usage"]["output_tokens_details"]["reasoning_tokens"] == 3


def test_a_tool_call_after_reasoning_opens_no_empty_message() -> None:
    w = writer(tools=[{"type": "function", "name": "add", "parameters": {"type": "object"}}])
    call = ToolCall("call_1", "add", '{"a": 1}')
    seen = run(w, chunk(reasoning="hm"), chunk("\n"), chunk(calls=[call]), finished=Finished(1, "tool_calls", 5, 3))
    assert [item["type"] for item in w.final["output"]] == ["reasoning", "function_call"]
    assert types(seen)[-7:] == [
        "content_part.done",
        "output_item.done",
        "output_item.added",
        "function_call_arguments.delta",
        "function_call_arguments.done",
        "output_item.done",
        "completed",
    ]
    added = next(e for e in seen if e["type"] == "response.output_item.added" and e["item"]["type"] == "function_call")
    assert added["item"]["arguments"] == "" and added["item"]["status"] == "in_progress"
    done = next(e for e in seen if e["type"] == "response.function_call_arguments.done")
    assert done["arguments"] == '{"a": 1}' and done["name"] == "add" and done["item_id"] == added["item"]["id"]
    assert w.final["output"][1] == {
        "id": added["item"]["id"],
        "type": "function_call",
        "status": "completed",
        "call_id": "call_1",
        "name": "add",
        "arguments": '{"a": 1}',
    }
    assert w.final["status"] == "completed"


def test_text_between_calls_makes_separate_items_in_output_order() -> None:
    w = writer(tools=[{"type": "function", "name": "f"}])
    run(w, chunk("a"), chunk(calls=[ToolCall("c1", "f", "{}"), ToolCall("c2", "f", "{}")]), chunk(" b"))
    assert [(i["type"], i.get("call_id")) for i in w.final["output"]] == [
        ("message", None),
        ("function_call", "c1"),
        ("function_call", "c2"),
        ("message", None),
    ]


def test_calls_of_custom_and_namespaced_tools_come_back_as_theirs() -> None:
    namespace = {"type": "namespace", "name": "crm", "description": "CRM", "tools": [{"type": "function", "name": "lookup"}]}
    w = writer(tools=[PATCH_TOOL, namespace])
    calls = [ToolCall("c1", "apply_patch", '{"input": "*** Begin Patch"}'), ToolCall("c2", "crm__lookup", "{}")]
    seen = run(w, chunk(calls=calls), finished=Finished(1, "tool_calls", 5, 3))
    custom, namespaced = w.final["output"]
    assert custom == {"id": custom["id"], "type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": "*** Begin Patch"}
    assert namespaced["type"] == "function_call" and namespaced["name"] == "lookup" and namespaced["namespace"] == "crm"
    input_events = [e for e in seen if e["type"].startswith("response.custom_tool_call_input")]
    assert [(e["type"], e.get("delta"), e.get("input")) for e in input_events] == [
        ("response.custom_tool_call_input.delta", "*** Begin Patch", None),
        ("response.custom_tool_call_input.done", None, "*** Begin Patch"),
    ]


def test_a_custom_call_whose_arguments_are_not_an_input_object_keeps_them_raw() -> None:
    w = writer(tools=[PATCH_TOOL])
    run(w, chunk(calls=[ToolCall("c1", "apply_patch", '{"patch": 1}')]))
    assert w.final["output"][0]["input"] == '{"patch": 1}'


def test_a_forced_custom_tool_gets_the_whole_text_as_its_input() -> None:
    w = writer(tools=[PATCH_TOOL], tool_choice={"type": "custom", "name": "apply_patch"})
    seen = run(w, chunk(" *** "), chunk("Begin"))
    assert types(seen)[2:-1] == [
        "output_item.added",
        "custom_tool_call_input.delta",
        "custom_tool_call_input.delta",
        "custom_tool_call_input.done",
        "output_item.done",
    ]
    (item,) = w.final["output"]
    assert item["type"] == "custom_tool_call" and item["name"] == "apply_patch" and item["input"] == " *** Begin"
    assert item["call_id"].startswith("call_")


def test_the_output_limit_makes_the_response_and_its_open_item_incomplete() -> None:
    w = writer(max_output_tokens=2)
    seen = run(w, chunk("ab", n=2), finished=Finished(1, "length", 3, 2))
    assert seen[-1]["type"] == "response.incomplete"
    final = w.final
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["completed_at"] is None and final["output"][0]["status"] == "incomplete"


def test_an_empty_reply_is_still_one_message() -> None:
    w = writer()
    run(w, chunk("  "))
    (item,) = w.final["output"]
    assert item["type"] == "message" and item["content"][0]["text"] == "  "


def test_a_failure_after_the_start_ends_with_error_and_response_failed() -> None:
    w = writer()
    data = w.start() + w.feed(chunk("par")) + w.fail(WorkerCrashed("the worker died"))
    seen = events(data)
    assert types(seen)[-5:] == ["output_text.done", "content_part.done", "output_item.done", "error", "failed"]
    assert seen[-2] == {"type": "error", "code": "worker_crashed", "message": "the worker died", "param": None, "sequence_number": len(seen) - 2}
    failed = seen[-1]["response"]
    assert failed["status"] == "failed" and failed["error"] == {"code": "worker_crashed", "message": "the worker died"}
    assert failed["output"][0]["status"] == "incomplete" and failed["output"][0]["content"][0]["text"] == "par"


def test_logprobs_go_with_their_text() -> None:
    w = writer()
    logprobs = [TokenLogprobs("a", -0.5, [97])]
    seen = run(w, chunk(" ", logprobs=logprobs), chunk("a", logprobs=logprobs))
    delta = next(e for e in seen if e["type"] == "response.output_text.delta")
    assert delta["delta"] == " a" and len(delta["logprobs"]) == 2
    assert delta["logprobs"][0] == {"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": []}
    assert len(w.final["output"][0]["content"][0]["logprobs"]) == 2


def test_without_streaming_there_are_no_events_and_the_same_response() -> None:
    w = writer(streaming=False)
    assert w.start() == b"" and w.feed(chunk("Hi")) == b"" and w.finish(STOP) == b""
    assert w.final["output"][0]["content"][0]["text"] == "Hi"


def test_the_response_echoes_the_request() -> None:
    w = writer(
        instructions="Be brief.",
        max_output_tokens=7,
        metadata={"k": "v"},
        text={"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}, "strict": True}},
        reasoning={"effort": "low", "summary": "auto"},
        parallel_tool_calls=False,
        store=False,
    )
    run(w, chunk("{}"))
    final = w.final
    assert final["id"].startswith("resp_") and final["object"] == "response" and final["model"] == "m"
    assert final["instructions"] == "Be brief." and final["max_output_tokens"] == 7 and final["metadata"] == {"k": "v"}
    assert final["text"]["format"] == {"type": "json_schema", "name": "n", "schema": {"type": "object"}, "strict": True}
    assert final["reasoning"] == {"effort": "low", "summary": "auto"}
    assert final["parallel_tool_calls"] is False and final["store"] is False
    assert final["tool_choice"] == "auto" and final["tools"] == []


def test_unknown_call_names_are_functions() -> None:
    tools = ToolSet([], {})
    assert tools.target("nope") == CallTarget("function", "nope", None, None)
