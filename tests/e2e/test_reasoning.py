"""A reasoning model's thinking arrives as reasoning_content, through the openai SDK."""

from __future__ import annotations

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
    finally:
        client.close()
