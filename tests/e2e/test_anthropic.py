"""The anthropic SDK against a real server: Anthropic's Messages API on the same generation path."""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import httpx
import jsonschema
import pytest

from opta_lmx.demo.builder import build_demo_model
from tests.conftest import Server, model_config

USER = [{"role": "user", "content": "Tell me about the quick brown fox."}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"],
    },
}
# Newer anthropic SDKs have no temperature argument; the API (and this server) still take it.
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def client(server: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="none", max_retries=0)


def test_create_and_stream_give_the_same_text(client: anthropic.Anthropic) -> None:
    reply = client.messages.create(model="tiny", max_tokens=24, messages=USER, extra_body=GREEDY, system="Be terse.")
    assert reply.type == "message" and reply.role == "assistant" and reply.model == "tiny"
    assert reply.id.startswith("msg_")
    assert [block.type for block in reply.content] == ["text"]
    assert reply.stop_reason in ("max_tokens", "end_turn")
    assert reply.usage.output_tokens <= 24
    with client.messages.stream(model="tiny", max_tokens=24, messages=USER, extra_body=GREEDY, system="Be terse.") as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert final.content[0].text == reply.content[0].text
    assert final.stop_reason == reply.stop_reason
    assert final.usage.output_tokens == reply.usage.output_tokens
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds[1] == "content_block_start" and "content_block_stop" in kinds
    assert kinds[-2] == "message_delta"
    prompt = events[0].message.usage.input_tokens + (events[0].message.usage.cache_read_input_tokens or 0)
    assert prompt == reply.usage.input_tokens + (reply.usage.cache_read_input_tokens or 0)


def test_stop_sequence_is_reported(client: anthropic.Anthropic) -> None:
    full = client.messages.create(model="tiny", max_tokens=40, messages=USER, extra_body=GREEDY)
    text = full.content[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    reply = client.messages.create(model="tiny", max_tokens=40, messages=USER, extra_body=GREEDY, stop_sequences=[stop, "\x00"])
    assert reply.stop_reason == "stop_sequence"
    assert reply.stop_sequence == stop
    assert reply.content[0].text == text[: text.index(stop)]


def test_forced_tool_use_validates_and_streams_as_input_json(client: anthropic.Anthropic) -> None:
    for choice in ({"type": "any"}, {"type": "tool", "name": "get_weather"}):
        reply = client.messages.create(
            model="tiny", max_tokens=200, messages=USER, tools=[WEATHER], tool_choice=choice, extra_body=GREEDY
        )
        assert reply.stop_reason == "tool_use", reply
        calls = [block for block in reply.content if block.type == "tool_use"]
        assert calls and all(call.name == "get_weather" for call in calls)
        for call in calls:
            jsonschema.validate(call.input, WEATHER["input_schema"])
    with client.messages.stream(
        model="tiny", max_tokens=200, messages=USER, tools=[WEATHER], tool_choice={"type": "any"}, extra_body=GREEDY
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    partial = "".join(e.delta.partial_json for e in events if e.type == "content_block_delta" and e.delta.type == "input_json_delta")
    call = next(block for block in final.content if block.type == "tool_use")
    assert json.loads(partial) == call.input
    assert final.stop_reason == "tool_use"


def test_tool_result_round_trip(client: anthropic.Anthropic) -> None:
    first = client.messages.create(
        model="tiny", max_tokens=200, messages=USER, tools=[WEATHER], tool_choice={"type": "any"}, extra_body=GREEDY
    )
    call = next(block for block in first.content if block.type == "tool_use")
    history = [
        *USER,
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": [{"type": "text", "text": "Sunny, 21 C"}]},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    count = client.messages.count_tokens(model="tiny", messages=history, tools=[WEATHER])
    reply = client.messages.create(model="tiny", max_tokens=8, messages=history, tools=[WEATHER], extra_body=GREEDY)
    assert reply.usage.input_tokens + reply.usage.cache_read_input_tokens == count.input_tokens
    # The first turn's prompt and answer are the start of this one: the cache supplies them.
    assert reply.usage.cache_read_input_tokens > 0
    shorter = client.messages.count_tokens(model="tiny", messages=USER, tools=[WEATHER])
    assert count.input_tokens > shorter.input_tokens + len("Sunny, 21 C") // 4


def test_count_tokens_folds_system_turns_into_the_system_prompt(client: anthropic.Anthropic) -> None:
    folded = client.messages.count_tokens(
        model="tiny", system="Rule one.", messages=[*USER, {"role": "system", "content": "Rule two."}]
    )
    written = client.messages.count_tokens(model="tiny", system="Rule one.\n\nRule two.", messages=USER)
    plain = client.messages.count_tokens(model="tiny", messages=USER)
    assert folded.input_tokens == written.input_tokens > plain.input_tokens


def test_a_changing_billing_line_keeps_the_prompt_cache(client: anthropic.Anthropic) -> None:
    """Claude Code's first system line changes every request; the second turn still reuses the first's KV."""
    system = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=1.0.0; cc_entrypoint=cli; n=1;"},
        {"type": "text", "text": "You are a coding agent. " * 20, "cache_control": {"type": "ephemeral"}},
    ]
    first = client.messages.create(model="tiny", max_tokens=6, system=system, messages=USER, extra_body=GREEDY)
    system[0] = {"type": "text", "text": "x-anthropic-billing-header: cc_version=1.0.0; cc_entrypoint=cli; n=2;"}
    history = [*USER, {"role": "assistant", "content": first.content[0].text}, {"role": "user", "content": "Go on."}]
    second = client.messages.create(model="tiny", max_tokens=6, system=system, messages=history, extra_body=GREEDY)
    prompt = first.usage.input_tokens + first.usage.cache_read_input_tokens
    assert second.usage.cache_read_input_tokens >= prompt  # the whole first prompt, at least
    without = client.messages.count_tokens(model="tiny", system=system[1:], messages=USER)
    assert without.input_tokens == prompt


def test_errors_have_anthropics_shape(client: anthropic.Anthropic, server: Server) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="nope", max_tokens=4, messages=USER)
    assert missing.value.body["error"]["type"] == "not_found_error"
    url = f"{server.base_url}/v1/messages"
    cases = [
        (b"{not json", "invalid_request_error", None),
        (json.dumps({"model": "tiny", "messages": USER}).encode(), "invalid_request_error", "max_tokens"),
        (json.dumps({"model": "tiny", "max_tokens": 4, "messages": USER, "frobnicate": 1}).encode(), "invalid_request_error", "frobnicate"),
        (
            json.dumps({"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}).encode(),
            "invalid_request_error",
            "images",
        ),
        (
            json.dumps({"model": "tiny", "max_tokens": 4, "messages": USER, "tool_choice": {"type": "any"}}).encode(),
            "invalid_request_error",
            "tools",
        ),
        (json.dumps({"model": "tiny", "max_tokens": 4, "messages": [{"role": "robot", "content": "x"}]}).encode(), "invalid_request_error", "role"),
    ]
    for body, kind, words in cases:
        response = httpx.post(url, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, (body, response.text)
        payload = response.json()
        assert payload["type"] == "error" and payload["error"]["type"] == kind, payload
        if words:
            assert words in payload["error"]["message"], payload


def test_a_context_overflow_is_a_400(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as error:
        client.messages.create(model="tiny", max_tokens=4, messages=[{"role": "user", "content": "fox " * 5000}])
    assert "context" in error.value.body["error"]["message"]


def test_thinking_blocks_only_when_asked(make_server, tmp_path: Path) -> None:
    model = build_demo_model(tmp_path / "thinking", "tiny", seed=0, thinking=True)
    server = make_server(model_config({"thinker": model}))
    server.wait_models()
    client = anthropic.Anthropic(base_url=server.base_url, api_key="none", max_retries=0)
    asked = client.messages.create(
        model="thinker", max_tokens=16, messages=USER, extra_body=GREEDY, thinking={"type": "enabled", "budget_tokens": 1024}
    )
    plain = client.messages.create(model="thinker", max_tokens=16, messages=USER, extra_body=GREEDY)
    # Thinking disabled reaches the template (enable_thinking): it writes the block closed.
    enabled = client.messages.count_tokens(model="thinker", messages=USER, thinking={"type": "enabled", "budget_tokens": 1024})
    disabled = client.messages.count_tokens(model="thinker", messages=USER, thinking={"type": "disabled"})
    assert disabled.input_tokens > enabled.input_tokens
    off = client.messages.create(model="thinker", max_tokens=16, messages=USER, thinking={"type": "disabled"}, extra_body=GREEDY)
    assert off.content[0].type == "text" and off.content[0].text
    # The template opens the thinking block; the random model rarely closes it within 16 tokens.
    assert asked.content[0].type == "thinking" and asked.content[0].thinking
    assert all(block.type != "thinking" for block in plain.content)
    with client.messages.stream(
        model="thinker", max_tokens=16, messages=USER, extra_body=GREEDY, thinking={"type": "enabled", "budget_tokens": 1024}
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert final.content[0].thinking == asked.content[0].thinking
    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert "thinking_delta" in deltas and "signature_delta" in deltas


def test_a_slow_prefill_streams_ping_events(make_server, tiny_model: Path) -> None:
    engine = 'engine = "tests.support.engines:SpinningStepEngine"'
    server = make_server(f'[[models]]\nname = "spin"\npath = "{tiny_model}"\n{engine}\n')
    server.wait_models()
    body = {"model": "spin", "max_tokens": 3, "messages": USER, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/messages", json=body, timeout=60) as response:
        text = response.read().decode()
    events = [line.removeprefix("event: ") for line in text.splitlines() if line.startswith("event: ")]
    assert events[0] == "message_start" and "ping" in events and events[-1] == "message_stop", events
    assert events.index("ping") < events.index("content_block_start")
