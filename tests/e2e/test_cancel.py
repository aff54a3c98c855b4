"""A client that goes away cancels its generation on the worker, freeing the slot."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import NO_EOS, Server

MESSAGES = [{"role": "user", "content": "hello"}]
FAST = "[supervisor]\nheartbeat_interval = 0.1\n"


def slow_server(make_server, tiny_model: Path, engine: str) -> Server:
    server: Server = make_server(
        FAST + f'[[models]]\nname = "m"\npath = "{tiny_model}"\nengine = "tests.support.engines:{engine}"\n'
    )
    server.wait_models()
    return server


def test_closing_a_stream_cancels_it(make_server, tiny_model: Path) -> None:
    server = slow_server(make_server, tiny_model, "SlowEngine")
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    stream = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=1000, stream=True, logit_bias=NO_EOS)
    for n, _ in enumerate(stream):
        if n == 3:
            break
    server.wait_in_flight("m", 1)
    stream.close()
    server.wait_in_flight("m", 0, timeout=3)  # 1000 slow tokens would take 30 s
    client.close()


@pytest.mark.parametrize("engine", ["SlowEngine", "SlowPrefillEngine"])
def test_a_non_streaming_client_that_leaves_cancels_it(make_server, tiny_model: Path, engine: str) -> None:
    # SlowPrefillEngine: the client leaves while the prompt is still being processed.
    server = slow_server(make_server, tiny_model, engine)
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 1000, "logit_bias": NO_EOS}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=0.4)
    server.wait_in_flight("m", 0, timeout=3)  # 1000 slow tokens would take 30 s
