"""The Responses API through the real server and the openai SDK's ``client.responses``, on the tiny
random-weight model: event order, tools, custom tools with a Lark grammar, stored responses,
errors. The model writes gibberish; every valid call or patch here is the grammar's doing."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any, Iterator

import httpx
import jsonschema
import openai
import pytest

from opta_lmx.demo.builder import build_demo_model
from tests.conftest import Server, served
from tests.support.grammars import PATCH, PATCH_GRAMMAR

ADD = {
    "type": "function",
    "name": "add",
    "description": "Adds two integers.",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99}, "b": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
    "strict": True,
}
PATCH_TOOL = {"type": "custom", "name": "apply_patch", "description": "Edits files.", "format": {"type": "grammar", "syntax": "lark", "definition": PATCH_GRAMMAR}}
LOOKUP = {
    "type": "namespace",
    "name": "crm",
    "description": "The customer database.",
    "tools": [
        {
            "type": "function",
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["id"], "additionalProperties": False},
        }
    ],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Server]:
    """The tiny model as ``tiny``, a reasoning model as ``thinker``, ``slow`` (each step 30 ms
    longer: a stream surely still going when the test acts on it), and ``cold``, loaded only
    when asked for."""
    home = tmp_path_factory.mktemp("responses")
    thinker = build_demo_model(home / "thinker", "tiny", thinking=True)
    config = (
        "[supervisor]\nheartbeat_interval = 0.1\n"
        f'[[models]]\nname = "tiny"\npath = "{tiny_model}"\n'
        f'[[models]]\nname = "thinker"\npath = "{thinker}"\n'
        f'[[models]]\nname = "slow"\npath = "{tiny_model}"\nengine = "tests.support.engines:SlowEngine"\n'
        f'[[models]]\nname = "cold"\npath = "{tiny_model}"\nload_on_start = false\n'
    )
    with served(home, config, {"tiny": "RUNNING", "thinker": "RUNNING", "slow": "RUNNING"}) as srv:
        yield srv
    assert "Traceback" not in srv.log_path.read_text(), "the server logged an unexpected error"


@pytest.fixture
def client(server: Server) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    yield client
    client.close()


def check_order(events: list[Any]) -> None:
    """The order clients rely on: sequence numbers 0, 1, 2...; created and in_progress first;
    each item added before its deltas and done after them; one terminal event, last."""
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert sum(e.type.startswith(("response.completed", "response.incomplete", "response.failed")) for e in events) == 1
    open_items: dict[int, str] = {}
    done: set[int] = set()
    for event in events[2:-1]:
        index = getattr(event, "output_index", None)
        if event.type == "response.output_item.added":
            assert index not in open_items and index == len(done), "items come one after another"
            open_items[index] = event.item.id
        elif event.type == "response.output_item.done":
            assert open_items.pop(index) == event.item.id
            done.add(index)
        else:
            assert index in open_items and event.item_id == open_items[index], event
    assert not open_items


def test_create_gives_one_message_and_its_usage(client: openai.OpenAI) -> None:
    response = client.responses.create(model="tiny", input="Say hi.", instructions="Be brief.", max_output_tokens=8)
    assert response.id.startswith("resp_") and response.model == "tiny" and response.instructions == "Be brief."
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant"
    assert response.output_text == message.content[0].text
    usage = response.usage
    assert usage is not None and usage.input_tokens > 0 and 0 < usage.output_tokens <= 8
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    # Stopped by the limit or by the model's own end: the status says which.
    if response.status == "incomplete":
        assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
        assert usage.output_tokens == 8 and message.status == "incomplete"
    else:
        assert response.status == "completed" and response.incomplete_details is None and message.status == "completed"


def test_stream_events_come_in_order_and_add_up_to_the_stored_response(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="tiny", input="Tell a story.", max_output_tokens=24, stream=True))
    check_order(events)
    final = events[-1].response
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.output_text == next(e.text for e in events if e.type == "response.output_text.done")
    assert final.usage is not None and final.usage.output_tokens > 0
    stored = client.responses.retrieve(final.id)
    assert stored.output_text == text and stored.status == final.status and stored.usage == final.usage


def test_a_forced_custom_tool_call_is_in_its_lark_grammars_language(client: openai.OpenAI) -> None:
    for seed_text, choice in [("Fix it.", {"type": "custom", "name": "apply_patch"}), ("Patch it.", "required")]:
        response = client.responses.create(model="tiny", input=seed_text, tools=[PATCH_TOOL], tool_choice=choice, max_output_tokens=400)  # type: ignore[arg-type]
        assert response.status == "completed"
        (call,) = response.output
        assert call.type == "custom_tool_call" and call.name == "apply_patch" and call.call_id.startswith("call_")
        assert PATCH.fullmatch(call.input), call.input


def test_the_sdk_stream_helper_builds_the_custom_call_from_its_events(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model="tiny", input="Patch.", tools=[PATCH_TOOL], tool_choice={"type": "custom", "name": "apply_patch"}, max_output_tokens=400  # type: ignore[list-item]
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    check_order(events)
    streamed = "".join(e.delta for e in events if e.type == "response.custom_tool_call_input.delta")
    (call,) = final.output
    assert call.type == "custom_tool_call" and call.input == streamed
    assert next(e.input for e in events if e.type == "response.custom_tool_call_input.done") == streamed
    assert PATCH.fullmatch(streamed), streamed


def test_a_regex_custom_tool(client: openai.OpenAI) -> None:
    tool = {"type": "custom", "name": "code", "format": {"type": "grammar", "syntax": "regex", "definition": r"[A-Z]{3}/[0-9]{2}"}}
    response = client.responses.create(model="tiny", input="Code?", tools=[tool], tool_choice="required", max_output_tokens=20)  # type: ignore[list-item]
    (call,) = response.output
    assert call.type == "custom_tool_call" and re.fullmatch(r"[A-Z]{3}/[0-9]{2}", call.input), call


def test_function_call_round_trip(client: openai.OpenAI) -> None:
    first = client.responses.create(model="tiny", input="What is 2 + 3?", tools=[ADD], tool_choice="required", parallel_tool_calls=False, max_output_tokens=100)  # type: ignore[list-item]
    assert first.status == "completed"
    (call,) = first.output
    assert call.type == "function_call" and call.name == "add" and call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), ADD["parameters"])
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "5"}
    explicit = client.responses.create(
        model="tiny", input=[{"role": "user", "content": "What is 2 + 3?"}, *first.output, result], tools=[ADD], max_output_tokens=4, store=False  # type: ignore[list-item]
    )
    chained = client.responses.create(model="tiny", previous_response_id=first.id, input=[result], tools=[ADD], max_output_tokens=4)  # type: ignore[list-item]
    assert explicit.usage is not None and chained.usage is not None and first.usage is not None
    # The call and its result are in the prompt: the same prompt either way.
    assert explicit.usage.input_tokens == chained.usage.input_tokens > first.usage.input_tokens
    assert chained.previous_response_id == first.id


def test_a_streamed_function_call(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="tiny", input="Add.", tools=[ADD], tool_choice={"type": "function", "name": "add"}, max_output_tokens=100, stream=True))  # type: ignore[list-item]
    check_order(events)
    assert events[-1].type == "response.completed"
    (call,) = events[-1].response.output
    delta = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert call.type == "function_call" and delta == done.arguments == call.arguments and done.name == "add"
    added = next(e for e in events if e.type == "response.output_item.added")
    assert added.item.type == "function_call" and added.item.arguments == "" and added.item.call_id == call.call_id


def test_required_among_functions_and_custom_tools_calls_either_kind(client: openai.OpenAI) -> None:
    # Among functions a custom tool is shown as a function of one string; a regular expression
    # still holds that string (a free one could run on past any token limit).
    code = {"type": "custom", "name": "code", "format": {"type": "grammar", "syntax": "regex", "definition": r"[A-Z]{3}/[0-9]{2}"}}
    kinds = set()
    for n in range(4):
        response = client.responses.create(model="tiny", input=f"Go {n}.", tools=[ADD, code], tool_choice="required", max_output_tokens=300)  # type: ignore[list-item]
        assert response.status == "completed" and response.output
        for item in response.output:
            kinds.add(item.type)
            if item.type == "function_call":
                assert item.name == "add"
                jsonschema.validate(json.loads(item.arguments), ADD["parameters"])
            else:  # its input comes back raw, not as the function's JSON
                assert item.type == "custom_tool_call" and item.name == "code" and re.fullmatch(r"[A-Z]{3}/[0-9]{2}", item.input), item
    assert kinds <= {"function_call", "custom_tool_call"}


def test_namespace_tools_are_callable_and_hosted_tools_are_accepted(client: openai.OpenAI) -> None:
    tools = [{"type": "web_search"}, LOOKUP]
    response = client.responses.create(model="tiny", input="Find customer 3.", tools=tools, tool_choice="required", max_output_tokens=100)  # type: ignore[arg-type]
    assert response.status == "completed"
    for call in response.output:
        assert call.type == "function_call" and call.name == "lookup" and call.namespace == "crm"
        jsonschema.validate(json.loads(call.arguments), LOOKUP["tools"][0]["parameters"])  # type: ignore[index]
    assert [t.type for t in response.tools] == ["web_search", "namespace"]


def test_text_format_json_schema(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
    response = client.responses.create(
        model="tiny", input="ok?", text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}}, max_output_tokens=50
    )
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), schema)


def test_logprobs_when_included(client: openai.OpenAI) -> None:
    args: dict[str, Any] = dict(model="tiny", input="hi", include=["message.output_text.logprobs"], top_logprobs=2, max_output_tokens=5, temperature=0)
    response = client.responses.create(**args)
    part = response.output[0].content[0]  # type: ignore[union-attr]
    assert response.usage is not None and 0 < len(part.logprobs) <= response.usage.output_tokens
    if response.status == "incomplete":  # one entry per generated token
        assert len(part.logprobs) == 5
    assert all(len(lp.top_logprobs) == 2 and lp.logprob <= 0 and lp.bytes for lp in part.logprobs)
    events = list(client.responses.create(**args, stream=True))
    streamed = [lp for e in events if e.type == "response.output_text.delta" for lp in e.logprobs]
    assert [(lp.token, lp.logprob) for lp in streamed] == [(lp.token, lp.logprob) for lp in part.logprobs]
    plain = client.responses.create(model="tiny", input="hi", max_output_tokens=2)
    assert plain.output[0].content[0].logprobs == []  # type: ignore[union-attr]


def test_previous_response_id_carries_the_conversation_but_not_the_instructions(client: openai.OpenAI) -> None:
    first = client.responses.create(model="tiny", input="My name is Ada.", instructions="Be brief.", max_output_tokens=6)
    chained = client.responses.create(model="tiny", previous_response_id=first.id, input="What is my name?", max_output_tokens=1)
    history = [{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": first.output_text}, {"role": "user", "content": "What is my name?"}]
    explicit = client.responses.create(model="tiny", input=history, max_output_tokens=1, store=False)  # type: ignore[arg-type]
    assert chained.usage is not None and explicit.usage is not None
    assert chained.usage.input_tokens == explicit.usage.input_tokens
    assert chained.instructions is None
    with pytest.raises(openai.NotFoundError, match="store=false"):
        client.responses.retrieve(explicit.id)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="tiny", previous_response_id=explicit.id, input="again")
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_get_and_delete(client: openai.OpenAI, server: Server) -> None:
    response = client.responses.create(model="tiny", input="hi", max_output_tokens=3, metadata={"run": "7"})
    assert client.responses.retrieve(response.id) == response
    assert httpx.get(f"{server.base_url}/responses/{response.id}").json()["id"] == response.id  # also without /v1
    deleted = httpx.delete(f"{server.base_url}/v1/responses/{response.id}")
    assert deleted.status_code == 200 and deleted.json() == {"id": response.id, "object": "response", "deleted": True}
    for method in ("GET", "DELETE"):
        missing = httpx.request(method, f"{server.base_url}/v1/responses/{response.id}")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(response.id)


def test_a_reasoning_models_thinking_is_a_reasoning_item(client: openai.OpenAI) -> None:
    response = client.responses.create(model="thinker", input="why?", max_output_tokens=10, temperature=0)
    reasoning = response.output[0]
    assert reasoning.type == "reasoning" and reasoning.summary == [] and reasoning.content
    thinking = reasoning.content[0].text
    assert thinking and "<think>" not in thinking
    assert response.usage is not None and 0 < response.usage.output_tokens_details.reasoning_tokens <= response.usage.output_tokens
    events = list(client.responses.create(model="thinker", input="why?", max_output_tokens=10, temperature=0, stream=True))
    check_order(events)
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == thinking
    assert events[-1].response.output[0].content[0].text == thinking


def test_a_model_that_must_load_first_streams_from_the_start(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="cold", input="hi", max_output_tokens=5, stream=True))
    check_order(events)
    assert events[-1].response.model == "cold"


POST_ERRORS = [
    (b"{oops", 400, "invalid_request", None),
    (json.dumps({"model": "tiny", "input": "hi", "warp": 9}).encode(), 400, "unsupported_parameter", "warp"),
    (json.dumps({"model": "gpt-17", "input": "hi"}).encode(), 404, "model_not_found", "model"),
    (json.dumps({"model": "tiny", "input": [{"type": "item_reference", "id": "x"}]}).encode(), 400, "unsupported_parameter", "input[0].type"),
    (json.dumps({"model": "tiny", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}).encode(), 400, "unsupported_parameter", "input[0].content[0]"),
    (json.dumps({"model": "tiny", "input": "hi", "tool_choice": {"type": "file_search"}}).encode(), 400, "unsupported_parameter", "tool_choice"),
    (json.dumps({"model": "tiny", "input": "hi", "previous_response_id": "resp_nope"}).encode(), 404, "response_not_found", "previous_response_id"),
    (json.dumps({"model": "tiny", "input": "hi", "stream": True, "top_p": 0}).encode(), 400, "invalid_request", "top_p"),
    (
        json.dumps({"model": "tiny", "input": "hi", "stream": True, "tools": [{**PATCH_TOOL, "format": {"type": "grammar", "syntax": "lark", "definition": "start: oops("}}], "tool_choice": "required"}).encode(),
        400,
        "invalid_request",
        None,
    ),
    (json.dumps({"model": "tiny", "input": "the quick brown fox " * 1500}).encode(), 400, "context_length_exceeded", None),
]


@pytest.mark.parametrize(("content", "status", "code", "param"), POST_ERRORS)
def test_bad_input_gets_openais_error_shape(server: Server, content: bytes, status: int, code: str, param: str | None) -> None:
    response = httpx.post(f"{server.base_url}/v1/responses", content=content, headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")  # never a started stream
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["code"], error["param"]) == (code, param)
    assert error["type"] == "invalid_request_error" and error["message"]


# 3000 letters: at least 334 tokens (the demo vocabulary's longest all-letter token has 9), so
# more than 10 s on the slow model.
LETTERS = {"type": "custom", "name": "letters", "format": {"type": "grammar", "syntax": "regex", "definition": "[a-z]{3000}"}}


def first_delta(stream: Any) -> list[Any]:
    events = []
    for event in stream:
        events.append(event)
        if event.type == "response.custom_tool_call_input.delta":
            return events
    raise AssertionError(f"the stream ended before any input: {events}")


def test_closing_a_stream_cancels_its_generation(client: openai.OpenAI, server: Server) -> None:
    stream = client.responses.create(model="slow", input="go", tools=[LETTERS], tool_choice="required", stream=True)  # type: ignore[list-item]
    first_delta(stream)
    server.wait_in_flight("slow", 1)
    stream.close()
    server.wait_in_flight("slow", 0, timeout=3)


def test_a_worker_dying_mid_stream_ends_it_with_response_failed(client: openai.OpenAI, server: Server) -> None:
    pid = server.worker_pid("slow")
    stream = client.responses.create(model="slow", input="go", tools=[LETTERS], tool_choice="required", stream=True)  # type: ignore[list-item]
    events = first_delta(stream)
    os.kill(pid, signal.SIGKILL)
    events += list(stream)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    error, failed = events[-2:]
    assert error.type == "error" and error.code == "worker_crashed"
    assert failed.type == "response.failed" and failed.response.status == "failed"
    assert failed.response.error.code == "worker_crashed"  # type: ignore[union-attr]
    (partial,) = failed.response.output
    assert partial.type == "custom_tool_call" and partial.input == "".join(e.delta for e in events if e.type.endswith("input.delta"))
    server.wait_new_worker("slow", pid)
