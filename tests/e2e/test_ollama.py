"""Ollama's API through the real ``ollama`` Python client against a real server: the tiny demo
model, and a thinking one (random weights: the text is gibberish, the protocol is tested)."""

from __future__ import annotations

import json
import random
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import httpx
import jsonschema
import ollama
import pytest
from mlx_lm.utils import load_tokenizer

from opta_lmx.demo.builder import build_demo_model
from tests.conftest import Server, model_config, served
from tests.support.schemas import random_schema

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Tell me about the quick brown fox."},
]
GREEDY = {"temperature": 0}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Adds two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


@pytest.fixture(scope="module")
def thinker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("models") / "thinker", "tiny", thinking=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, thinker: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("ollama")
    config = model_config({"tiny": tiny_model, "thinker": thinker}).replace(
        'name = "tiny"', 'name = "tiny"\naliases = ["tiny-alias"]'
    )
    with served(home, config) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[ollama.Client]:
    client = ollama.Client(host=server.base_url, timeout=120)
    yield client
    client.close()


def prompt_tokens(model: Path, messages: list[dict], **template_args: object) -> int:
    return len(load_tokenizer(model).apply_chat_template(messages, add_generation_prompt=True, **template_args))


def test_probe_and_version(server: Server) -> None:
    for method in ("GET", "HEAD"):
        response = httpx.request(method, f"{server.base_url}/")
        assert response.status_code == 200
    assert httpx.get(f"{server.base_url}/").text == "Ollama is running"
    version = httpx.get(f"{server.base_url}/api/version").json()["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)


def test_list_names_every_model_and_alias(client: ollama.Client, tiny_model: Path) -> None:
    models = {m.model: m for m in client.list().models}
    assert set(models) == {"tiny", "tiny-alias", "thinker"}
    tiny = models["tiny"]
    assert tiny.size == sum(f.stat().st_size for f in tiny_model.iterdir())
    assert tiny.details.format == "safetensors" and tiny.details.family == "llama"
    assert tiny.digest == models["tiny-alias"].digest != models["thinker"].digest
    assert tiny.modified_at is not None and tiny.modified_at.tzinfo is not None


def test_show_reads_the_model_files(client: ollama.Client, tiny_model: Path) -> None:
    shown = client.show("tiny")
    config = json.loads((tiny_model / "config.json").read_text())
    info = shown.modelinfo
    assert info["general.architecture"] == "llama"
    assert info["llama.context_length"] == config["max_position_embeddings"]
    assert info["llama.block_count"] == config["num_hidden_layers"]
    assert shown.template == json.loads((tiny_model / "tokenizer_config.json").read_text())["chat_template"]
    assert shown.capabilities == ["completion", "tools"]
    assert client.show("thinker").capabilities == ["completion", "tools", "thinking"]
    assert client.show("tiny:latest").modelinfo == info  # Ollama's default tag names the same model
    with pytest.raises(ollama.ResponseError) as error:
        client.show("nope")
    assert error.value.status_code == 404 and error.value.error == "model 'nope' not found"


def test_chat(client: ollama.Client, tiny_model: Path) -> None:
    reply = client.chat(model="tiny", messages=MESSAGES, options={**GREEDY, "num_predict": 12}, stream=False)
    assert reply.model == "tiny" and reply.done and reply.done_reason == "length"
    assert reply.message.role == "assistant" and reply.message.content
    assert reply.eval_count == 12
    assert reply.prompt_eval_count == prompt_tokens(tiny_model, MESSAGES)
    assert reply.total_duration >= reply.load_duration + reply.prompt_eval_duration + reply.eval_duration > 0
    assert reply.created_at and reply.created_at.endswith("Z")


def test_chat_stream_matches_the_whole_reply(client: ollama.Client) -> None:
    options = {**GREEDY, "num_predict": 30}
    whole = client.chat(model="tiny", messages=MESSAGES, options=options, stream=False)
    parts = list(client.chat(model="tiny", messages=MESSAGES, options=options, stream=True))
    assert len(parts) >= 2  # pieces (tokens are coalesced while the client reads), then done
    assert all(not p.done and p.done_reason is None for p in parts[:-1])
    last = parts[-1]
    assert last.done and last.done_reason == "length" and last.eval_count == 30
    assert last.prompt_eval_count == whole.prompt_eval_count
    assert "".join(p.message.content or "" for p in parts) == whole.message.content


def test_generate_renders_the_template_and_raw_does_not(client: ollama.Client, tiny_model: Path) -> None:
    options = {**GREEDY, "num_predict": 20}
    reply = client.generate(
        model="tiny", prompt="Tell me about the quick brown fox.", system="You are terse.", options=options
    )
    assert reply.done and reply.done_reason == "length" and reply.eval_count == 20 and reply.response
    assert reply.prompt_eval_count == prompt_tokens(tiny_model, MESSAGES)
    chat = client.chat(model="tiny", messages=MESSAGES, options=options)
    assert reply.response == chat.message.content  # the same prompt through the same template
    parts = list(
        client.generate(model="tiny", prompt="Tell me about", system="You are terse.", options=options, stream=True)
    )
    assert parts[-1].done and parts[-1].eval_count == 20
    assert "".join(p.response or "" for p in parts[:-1]) and parts[-1].response == ""
    raw = client.generate(model="tiny", prompt="the quick brown fox", raw=True, options=options)
    assert raw.prompt_eval_count == len(load_tokenizer(tiny_model).encode("the quick brown fox"))


def test_options_are_honoured(client: ollama.Client) -> None:
    seeded = {"temperature": 1.0, "top_k": 20, "top_p": 0.9, "min_p": 0.05, "seed": 7, "num_predict": 16}
    first = client.chat(model="tiny", messages=MESSAGES, options=seeded)
    assert client.chat(model="tiny", messages=MESSAGES, options=seeded).message.content == first.message.content
    greedy = client.chat(model="tiny", messages=MESSAGES, options={**GREEDY, "num_predict": 40})
    text = greedy.message.content
    stop = next(
        text[i : i + 2]
        for i in range(10, len(text) - 2)
        if text[i : i + 2].strip() and text.count(text[i : i + 2]) == 1
    )
    stopped = client.chat(model="tiny", messages=MESSAGES, options={**GREEDY, "num_predict": 40, "stop": [stop]})
    assert stopped.done_reason == "stop" and stopped.message.content == text[: text.index(stop)]
    penalised = {**GREEDY, "num_predict": 40, "repeat_penalty": 1.5, "repeat_last_n": -1, "num_thread": 2}
    assert client.chat(model="tiny", messages=MESSAGES, options=penalised).message.content != text


def test_format_json_and_schema(client: ollama.Client) -> None:
    reply = client.chat(model="tiny", messages=MESSAGES, format="json", options={"num_predict": 50, "seed": 1})
    assert reply.message.content.startswith("{")
    if reply.done_reason == "stop":
        assert isinstance(json.loads(reply.message.content), dict)
    rng = random.Random(5)
    for seed in range(3):
        schema = random_schema(rng)
        reply = client.chat(model="tiny", messages=MESSAGES, format=schema, options={"num_predict": 1500, "seed": seed})
        assert reply.done_reason == "stop"
        jsonschema.validate(json.loads(reply.message.content), schema)
    schema = random_schema(rng)
    generated = client.generate(
        model="tiny", prompt="JSON please", format=schema, options={"num_predict": 1500, "seed": 9}
    )
    jsonschema.validate(json.loads(generated.response), schema)


def test_tools_reach_the_template_and_a_tool_round_trip_runs(client: ollama.Client, tiny_model: Path) -> None:
    question = [{"role": "user", "content": "What is 2 + 3?"}]
    plain = client.chat(model="tiny", messages=question, options={"num_predict": 1})
    with_tools = client.chat(model="tiny", messages=question, tools=[ADD], options={"num_predict": 1})
    assert with_tools.prompt_eval_count == prompt_tokens(tiny_model, question, tools=[ADD]) > plain.prompt_eval_count
    history = [
        *question,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "add", "arguments": {"a": 2, "b": 3}}}],
        },
        {"role": "tool", "content": "5", "tool_name": "add"},
    ]
    answer = client.chat(model="tiny", messages=history, tools=[ADD], options={"num_predict": 1})
    assert answer.done and answer.prompt_eval_count > with_tools.prompt_eval_count


def test_logprobs(client: ollama.Client) -> None:
    options = {**GREEDY, "num_predict": 5}
    reply = client.chat(model="tiny", messages=MESSAGES, options=options, logprobs=True, top_logprobs=2)
    assert len(reply.logprobs) == 5
    assert all(len(entry.top_logprobs) == 2 and entry.logprob <= 0 for entry in reply.logprobs)
    parts = list(
        client.chat(model="tiny", messages=MESSAGES, options=options, logprobs=True, top_logprobs=2, stream=True)
    )
    streamed = [(e.token, e.logprob) for p in parts for e in p.logprobs or ()]
    assert streamed == [(e.token, e.logprob) for e in reply.logprobs]
    assert client.chat(model="tiny", messages=MESSAGES, options=options).logprobs is None


def test_thinking_comes_back_as_thinking(client: ollama.Client) -> None:
    options = {**GREEDY, "num_predict": 10}
    reply = client.chat(model="thinker", messages=MESSAGES, options=options, think=True)
    thinking = reply.message.thinking
    assert thinking and reply.message.content == ""  # this model never closes its thinking block
    assert "<think>" not in thinking and "</think>" not in thinking
    assert client.chat(model="thinker", messages=MESSAGES, options=options).message.thinking == thinking  # the default
    parts = list(client.chat(model="thinker", messages=MESSAGES, options=options, think=True, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == thinking
    generated = client.generate(
        model="thinker",
        prompt="Tell me about the quick brown fox.",
        system="You are terse.",
        options=options,
        think="high",
    )
    assert generated.thinking == thinking
    hidden = client.chat(model="thinker", messages=MESSAGES, options=options, think=False)
    assert hidden.message.thinking is None and hidden.eval_count == 10
    # think=False reaches the template (enable_thinking): it writes the thinking block closed.
    assert hidden.prompt_eval_count > reply.prompt_eval_count
    assert hidden.message.content
    with pytest.raises(ollama.ResponseError) as error:
        client.chat(model="tiny", messages=MESSAGES, think=True)
    assert error.value.status_code == 400 and "does not support thinking" in error.value.error


def test_ps_lists_loaded_models(client: ollama.Client, tiny_model: Path) -> None:
    loaded = {m.model: m for m in client.ps().models}
    assert {"tiny", "thinker"} <= set(loaded)
    tiny = loaded["tiny"]
    assert tiny.context_length == 2048
    assert tiny.size > 0 and tiny.details.family == "llama"
    assert tiny.expires_at.year > 2300  # the config's keep_alive -1: never unloaded


def post(server: Server, path: str, body: object) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{server.base_url}{path}", content=content, headers={"Content-Type": "application/json"}, timeout=60
    )


CHAT = {
    "model": "tiny",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": False,
    "options": {"num_predict": 2},
}


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/api/chat", b"{oops", 400, "not valid JSON"),
        ("/api/chat", b"", 400, "not valid JSON"),
        ("/api/chat", {**CHAT, "model": "nope"}, 404, "model 'nope' not found"),
        ("/api/chat", {**CHAT, "model": ""}, 400, "model is required"),
        ("/api/chat", {**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
        ("/api/chat", {**CHAT, "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, 400, "images"),
        ("/api/chat", {**CHAT, "options": {"num_ctx": 4096}}, 400, "2048"),
        ("/api/chat", {**CHAT, "options": {"temperature": "hot"}}, 400, "options.temperature"),
        ("/api/chat", {**CHAT, "options": {"warp": 9}}, 400, "options.warp"),
        ("/api/chat", {**CHAT, "options": {"typical_p": 0.5}}, 400, "typical_p"),
        ("/api/chat", {**CHAT, "options": {"repeat_penalty": 1.2, "repeat_last_n": 64}}, 400, "repeat_last_n"),
        ("/api/chat", {**CHAT, "format": "yaml"}, 400, "format"),
        ("/api/chat", {**CHAT, "format": {"type": "objekt"}}, 400, ""),
        ("/api/chat", {**CHAT, "keep_alive": "soon"}, 400, "keep_alive"),
        ("/api/chat", {**CHAT, "think": "extreme"}, 400, "think"),
        ("/api/chat", {**CHAT, "tools": [{"type": "function", "function": {"name": ""}}]}, 400, "tools"),
        ("/api/chat", {**CHAT, "truncate": True}, 400, "truncate"),
        (
            "/api/chat",
            {
                **CHAT,
                "messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "add", "arguments": "2, 3"}}]}],
            },
            400,
            "arguments",
        ),
        ("/api/chat", {**CHAT, "top_logprobs": 21}, 400, "top_logprobs"),
        ("/api/chat", {**CHAT, "messages": [{"role": "user", "content": "fox " * 3000}]}, 400, "2048"),
        ("/api/generate", {"model": "tiny", "prompt": "x", "suffix": "y"}, 400, "insert"),
        ("/api/generate", {"model": "tiny", "prompt": "x", "raw": True, "system": "s"}, 400, "raw mode"),
        ("/api/generate", {"model": "tiny", "prompt": "x", "context": [1, 2]}, 400, "context"),
        ("/api/show", {"model": "nope"}, 404, "not found"),
        ("/api/show", {}, 400, "model is required"),
        ("/api/pull", {"model": "llama3"}, 400, "only Hugging Face models"),
        ("/api/pull", {"model": "hf.co/org/x", "quantize": "q4"}, 400, "quantize"),
        ("/api/create", {"model": "x"}, 501, "not implemented"),
        ("/api/embed", {"model": "tiny", "input": "x"}, 400, "makes no embeddings"),
        ("/api/embed", {"input": "x"}, 400, "model is required"),
        ("/api/embed", {"model": "nope", "input": "x"}, 404, "not found"),
        ("/api/embeddings", {"model": "tiny", "prompt": "x"}, 400, "makes no embeddings"),
    ],
)
def test_bad_input_in_ollamas_error_shape(server: Server, path: str, body: object, status: int, words: str) -> None:
    response = post(server, path, body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and words in response.json()["error"]


def test_unknown_routes_and_methods_in_ollamas_error_shape(server: Server) -> None:
    missing = httpx.get(f"{server.base_url}/api/nothing-here")
    assert missing.status_code == 404 and isinstance(missing.json()["error"], str)
    wrong = httpx.get(f"{server.base_url}/api/chat")
    assert wrong.status_code == 405 and isinstance(wrong.json()["error"], str)
    deleted = httpx.request("DELETE", f"{server.base_url}/api/delete", json={"model": "tiny"})
    assert deleted.status_code == 409 and "configured model" in deleted.json()["error"]


def test_client_raises_on_a_refused_stream(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as error:
        list(client.chat(model="nope", messages=MESSAGES, stream=True))
    assert error.value.status_code == 404


def loaded(client: ollama.Client) -> dict[str, ollama.ProcessResponse.Model]:
    return {m.model: m for m in client.ps().models}


def test_keep_alive_sets_expiry_and_0_unloads(make_server, tiny_model: Path) -> None:
    config = "[supervisor]\nheartbeat_interval = 0.2\nheartbeat_misses = 25\n" + model_config({"lazy": tiny_model}) + "load_on_start = false\n"
    server: Server = make_server(config)
    server.wait_models({"lazy": "STOPPED"})
    client = ollama.Client(host=server.base_url, timeout=120)
    try:
        assert loaded(client) == {}
        load = client.generate(model="lazy", keep_alive="10m")  # no prompt: load only
        assert load.done and load.done_reason == "load"
        expiry = loaded(client)["lazy"].expires_at - datetime.now(timezone.utc)
        assert timedelta(minutes=9) < expiry <= timedelta(minutes=10)
        client.chat(model="lazy", messages=MESSAGES, options={"num_predict": 2}, keep_alive=-1)
        assert loaded(client)["lazy"].expires_at.year > 2300
        reply = client.chat(model="lazy", messages=MESSAGES, options={"num_predict": 2}, keep_alive=0)
        assert reply.done  # answered in full, then unloaded once idle
        deadline = time.monotonic() + 15
        while "lazy" in loaded(client):
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        client.chat(model="lazy", messages=MESSAGES, options={"num_predict": 2})  # loads it again
        assert "lazy" in loaded(client)
        unload = client.chat(model="lazy", messages=[], keep_alive=0)
        assert unload.done and unload.done_reason == "unload"
        assert "lazy" not in loaded(client)
    finally:
        client.close()


def test_a_failure_mid_stream_is_an_error_line_the_client_raises(make_server, tiny_model: Path) -> None:
    # The stalling engine stops after a few tokens (the greedy reply is longer): the gateway's
    # inter-token timeout ends the request, after its first lines were sent.
    engine = 'engine = "tests.support.engines:StallingEngine"\n'
    settings = "[server]\ninter_token_timeout = 1.0\n[supervisor]\nstop_grace = 1.0\ndrain_grace = 1.0\n"
    server: Server = make_server(settings + model_config({"tiny": tiny_model}) + engine)
    server.wait_models()
    client = ollama.Client(host=server.base_url, timeout=60)
    try:
        received = []
        with pytest.raises(ollama.ResponseError, match="No output from the model") as error:
            for part in client.chat(
                model="tiny", messages=MESSAGES, options={**GREEDY, "num_predict": 40}, stream=True
            ):
                received.append(part)
        assert received and not any(p.done for p in received)
        assert error.value.status_code == -1  # raised from a line of a started stream
        with pytest.raises(ollama.ResponseError) as whole:
            client.generate(model="tiny", prompt="hi", options={**GREEDY, "num_predict": 40})
        assert whole.value.status_code == 504
    finally:
        client.close()
