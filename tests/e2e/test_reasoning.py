"""A reasoning model's thinking arrives as reasoning_content, through the openai SDK."""

from __future__ import annotations

import json
from pathlib import Path

import openai

from opta_lmx.demo.builder import build_demo_model
from tests.conftest import Server


def test_reasoning_content(make_server, tmp_path: Path) -> None:
    model = build_demo_model(tmp_path / "thinker", "tiny", thinking=True)
    server: Server = make_server(f'[[models]]\nname = "thinker"\npath = "{model}"\n')
    server.wait_models()
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    try:
        messages = [{"role": "user", "content": "why?"}]
        reply = client.chat.completions.create(model="thinker", messages=messages, max_tokens=10, temperature=0)
        message = reply.choices[0].message
        thinking = message.model_extra["reasoning_content"]
        assert thinking and message.content == ""  # this model never closes its thinking block
        chunks = list(
            client.chat.completions.create(model="thinker", messages=messages, max_tokens=10, temperature=0, stream=True)
        )
        streamed = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices)
        assert streamed == thinking
        assert "<think>" not in thinking and "</think>" not in thinking
        # reasoning_effort "none": the template writes the thinking block closed, the reply is the answer.
        direct = client.chat.completions.create(
            model="thinker", messages=messages, max_tokens=10, temperature=0, reasoning_effort="none"
        )
        assert direct.usage.prompt_tokens > reply.usage.prompt_tokens
        assert direct.choices[0].message.content and not (direct.choices[0].message.model_extra or {}).get("reasoning_content")
    finally:
        client.close()


def test_structured_output_of_a_thinking_model_is_the_answer(make_server, tmp_path: Path) -> None:
    # The template opens the thinking block; a grammar from the first token would put the JSON
    # inside it. The block is closed for constrained requests, so the JSON is the content.
    model = build_demo_model(tmp_path / "thinker", "tiny", thinking=True)
    server: Server = make_server(f'[[models]]\nname = "thinker"\npath = "{model}"\n')
    server.wait_models()
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
    try:
        reply = client.chat.completions.create(
            model="thinker",
            messages=[{"role": "user", "content": "ok?"}],
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
            max_tokens=50,
        )
        message = reply.choices[0].message
        assert json.loads(message.content or "") in ({"ok": True}, {"ok": False})
        assert not (message.model_extra or {}).get("reasoning_content")
    finally:
        client.close()
