"""GGUF models through the real server and the openai SDK: gateway -> ZeroMQ -> worker ->
llama.cpp, on SmolLM2-135M-Instruct and Gemma 3 270M, chosen by ``engine = "auto"``."""

from __future__ import annotations

import json
import os
import re
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import httpx
import jsonschema
import openai
import pytest

from opta_lmx.demo.builder import CHAT_TEMPLATE
from tests.conftest import Server, served

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
PARIS = [SYSTEM, {"role": "user", "content": "What is the capital of France?"}]
QUESTIONS = ["Name three colours.", "Write a haiku about the sea.", "What is 2 + 2?", "Say hello in Spanish.",
             "Why is the sky blue?", "List two fruits.", "Who wrote Hamlet?", "What is the capital of France?"]
# SmolLM2's end tokens suppressed, for streams that must still be running later.
NO_EOS = {"0": -100, "2": -100}


@pytest.fixture(scope="module")
def gguf_server(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path, gemma3_gguf: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("gguf")
    config = (
        "[supervisor]\nheartbeat_interval = 0.2\nheartbeat_misses = 25\n"
        f'[[models]]\nname = "smollm2"\npath = "{smollm2_gguf}"\n[models.options]\nslots = 8\nslot_context = 1024\n'
        f'[[models]]\nname = "gemma"\npath = "{gemma3_gguf.parent}"\n[models.options]\nslots = 2\nslot_context = 512\n'
    )
    with served(home, config, timeout=120) as server:
        yield server


@pytest.fixture
def client(gguf_server: Server) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=f"{gguf_server.base_url}/v1", api_key="none", max_retries=0)
    yield client
    client.close()


def chat(client: openai.OpenAI, question: str, **kwargs: object) -> str:
    kwargs.setdefault("temperature", 0)
    kwargs.setdefault("max_tokens", 24)
    reply = client.chat.completions.create(model="smollm2", messages=[SYSTEM, {"role": "user", "content": question}], **kwargs)  # type: ignore[call-overload]
    return reply.choices[0].message.content or ""


def test_smollm2_answers_paris_and_stream_equals_non_stream(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="smollm2", messages=PARIS, temperature=0, max_tokens=30)  # type: ignore[arg-type]
    text = reply.choices[0].message.content or ""
    assert "Paris" in text and reply.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model="smollm2", messages=PARIS, temperature=0, max_tokens=30, stream=True))  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_eight_concurrent_greedy_requests_equal_their_one_at_a_time_outputs(client: openai.OpenAI) -> None:
    alone = [chat(client, q) for q in QUESTIONS]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda q: chat(client, q), QUESTIONS))
    assert together == alone


def test_seeded_sampling_is_reproducible(client: openai.OpenAI) -> None:
    def draw(seed: int) -> str:
        return chat(client, "Tell me a story.", temperature=1.0, seed=seed, max_tokens=20, logit_bias=NO_EOS)

    first = draw(5)
    assert draw(5) == first and draw(6) != first
    assert draw(-5) == draw(-5) != first  # the API's seeds are signed 64-bit
    reply = client.chat.completions.create(model="smollm2", messages=PARIS, n=3, temperature=1.0, seed=9, max_tokens=12, logit_bias=NO_EOS)  # type: ignore[arg-type]
    assert [c.index for c in reply.choices] == [0, 1, 2] and len({c.message.content for c in reply.choices}) > 1


def test_json_schema_output_validates(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}, "country": {"enum": ["France", "Italy"]}, "population": {"type": "integer", "minimum": 0, "maximum": 100_000_000}},
        "required": ["city", "country", "population"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model="smollm2",
        messages=PARIS,  # type: ignore[arg-type]
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}},
        temperature=0,
        max_tokens=200,
    )
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), schema)


def test_logprobs_and_a_follow_up_turns_cached_tokens(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="smollm2", messages=PARIS, temperature=0, max_tokens=12, logprobs=True, top_logprobs=2)  # type: ignore[arg-type]
    content = first.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    assert "".join(t.token for t in content) == first.choices[0].message.content
    follow = [*PARIS, {"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": "And of Italy?"}]
    reply = client.chat.completions.create(model="smollm2", messages=follow, temperature=0, max_tokens=12)  # type: ignore[arg-type]
    cached = reply.usage.prompt_tokens_details.cached_tokens  # type: ignore[union-attr]
    assert first.usage.prompt_tokens <= cached < reply.usage.prompt_tokens  # type: ignore[union-attr]


def test_a_prompt_over_the_context_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="context length") as info:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "word " * 1500}], max_tokens=5)
    assert "context_length_exceeded" in str(info.value.body)


def test_closing_a_stream_frees_its_slot(gguf_server: Server, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="smollm2", messages=PARIS, max_tokens=1000, stream=True, logit_bias=NO_EOS)  # type: ignore[arg-type]
    for n, _ in enumerate(stream):
        if n == 3:
            break
    gguf_server.wait_in_flight("smollm2", 1)
    stream.close()
    gguf_server.wait_in_flight("smollm2", 0, timeout=4)  # 1000 tokens would take over 10 s


def test_gemma_completes_text_and_refuses_chat_without_a_template(client: openai.OpenAI) -> None:
    prompt = "Q: What is the capital of Italy?\nA: Rome\nQ: What is the capital of Spain?\nA: Madrid\nQ: What is the capital of France?\nA:"
    reply = client.completions.create(model="gemma", prompt=prompt, temperature=0, max_tokens=4)
    assert "Paris" in reply.choices[0].text
    with pytest.raises(openai.BadRequestError, match="chat template"):
        client.chat.completions.create(model="gemma", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)


def test_a_forced_tool_call_validates(make_server, smollm2_gguf: Path) -> None:
    # SmolLM2's own template knows no tools: a configured one in the JSON tool-call format.
    template = json.dumps(CHAT_TEMPLATE)  # a TOML basic string is a JSON string here
    server: Server = make_server(f'[[models]]\nname = "m"\npath = "{smollm2_gguf}"\n[models.options]\nslots = 2\nslot_context = 1024\nchat_template = {template}\n')
    server.wait_models(timeout=120)
    weather = {"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"], "additionalProperties": False}}}
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    try:
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=[weather],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "weather"}}, temperature=0, max_tokens=100,
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls or []
        assert call.function.name == "weather"
        jsonschema.validate(json.loads(call.function.arguments), weather["function"]["parameters"])  # type: ignore[index]
    finally:
        client.close()


def test_kill_9_of_the_gguf_worker_mid_stream_is_survived(make_server, smollm2_gguf: Path) -> None:
    server: Server = make_server(f'[[models]]\nname = "m"\npath = "{smollm2_gguf}"\n[models.options]\nslots = 2\nslot_context = 1024\n')
    server.wait_models(timeout=120)
    gateway_pid, worker_pid = server.gateway_pid(), server.worker_pid("m")
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    try:
        stream = client.chat.completions.create(model="m", messages=PARIS, max_tokens=2000, stream=True, logit_bias=NO_EOS)  # type: ignore[arg-type]
        received = 0
        with pytest.raises(openai.APIError, match="worker"):
            for _ in stream:
                received += 1
                if received == 5:
                    os.kill(worker_pid, signal.SIGKILL)
        assert received >= 5
        server.wait_new_worker("m", worker_pid, timeout=60)
        reply = client.chat.completions.create(model="m", messages=PARIS, temperature=0, max_tokens=30)  # type: ignore[arg-type]
        assert "Paris" in (reply.choices[0].message.content or "")
        assert server.gateway_pid() == gateway_pid
        assert httpx.get(f"{server.base_url}/health").json()["models"] == {"m": "RUNNING"}
    finally:
        client.close()


def test_admission_counts_the_kv_caches_a_gguf_model_allocates(make_server, smollm2_gguf: Path) -> None:
    # Same weights twice: 8 slots of 4096 tokens need 720 MiB of KV cache, 1 slot of 512 about
    # 11 MiB; with a 600 MiB budget only the second fits.
    mib = 1024 * 1024
    config = f"[memory]\nbudget = {600 * mib}\nkv_headroom = 0\nprocess_overhead = {128 * mib}\n" + "".join(
        f'[[models]]\nname = "{name}"\npath = "{smollm2_gguf}"\nload_on_start = false\n[models.options]\nslots = {slots}\nslot_context = {ctx}\n'
        for name, slots, ctx in (("big", 8, 4096), ("small", 1, 512))
    )
    server: Server = make_server(config)
    server.wait_models({"big": "STOPPED", "small": "STOPPED"})
    body = {"messages": PARIS, "max_tokens": 3, "temperature": 0}
    refused = httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": "big", **body}, timeout=60)
    assert refused.status_code == 507 and refused.json()["error"]["code"] == "insufficient_memory"
    needed = int(re.search(r"needs about (\d+) MiB", refused.json()["error"]["message"]).group(1))  # type: ignore[union-attr]
    assert needed >= 720 + 128
    loaded = httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": "small", **body}, timeout=120)
    assert loaded.status_code == 200, loaded.text
