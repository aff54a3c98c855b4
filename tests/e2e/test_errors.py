"""Bad input through the real server: the right status and the OpenAI error shape."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import Server

GOOD = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def post(server: Server, content: bytes, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(
        f"{server.base_url}{path}", content=content, headers={"Content-Type": "application/json"}, timeout=30
    )


@pytest.mark.parametrize(
    ("content", "status", "code", "param"),
    [
        (b"{oops", 400, "invalid_request", None),
        (json.dumps({**GOOD, "messages": "hi"}).encode(), 400, "invalid_request", "messages"),
        (json.dumps({**GOOD, "max_tokens": "many"}).encode(), 400, "invalid_request", "max_tokens"),
        (json.dumps({"model": "tiny"}).encode(), 400, "invalid_request", "messages"),
        (json.dumps({**GOOD, "model": "gpt-17"}).encode(), 404, "model_not_found", "model"),
        (json.dumps({**GOOD, "n": 17}).encode(), 400, "invalid_request", "n"),
        (json.dumps({**GOOD, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "objekt"}}}}).encode(), 400, "invalid_request", None),
        (json.dumps({**GOOD, "tool_choice": "required"}).encode(), 400, "invalid_request", "tool_choice"),
        (json.dumps({**GOOD, "warp_speed": 9}).encode(), 400, "unsupported_parameter", "warp_speed"),
    ],
)
def test_bad_input(server: Server, content: bytes, status: int, code: str, param: str | None) -> None:
    response = post(server, content)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["code"], error["param"]) == (code, param)
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    assert error["message"]


def test_unknown_route_and_wrong_method_use_the_error_shape(server: Server) -> None:
    missing = httpx.get(f"{server.base_url}/v1/nothing-here")
    assert missing.status_code == 404 and "error" in missing.json()
    wrong = httpx.get(f"{server.base_url}/v1/chat/completions")
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_sdk_raises_typed_errors(server: Server) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=GOOD["messages"])
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.chat.completions.create(model="tiny", messages=GOOD["messages"], response_format={"type": "yaml"})  # type: ignore[typeddict-item]
    with pytest.raises(openai.BadRequestError, match="'n'"):
        client.chat.completions.create(model="tiny", messages=GOOD["messages"], stream=True, n=99)


def test_prompt_beyond_the_context_is_refused_with_both_numbers(server: Server) -> None:
    long = "the quick brown fox " * 1500  # far beyond the tiny model's 2048 tokens
    response = post(server, json.dumps({**GOOD, "messages": [{"role": "user", "content": long}]}).encode())
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "2048" in error["message"]
