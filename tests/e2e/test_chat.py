"""The openai SDK against a real server: gateway -> ZeroMQ -> worker -> mlx-lm."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from mlx_lm.utils import load_tokenizer

from tests.conftest import NO_EOS, Server

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Tell me about the quick brown fox."},
]


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)


def stream_text(client: openai.OpenAI, **kwargs: object) -> tuple[str, list]:
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_non_streaming_chat(client: openai.OpenAI, tiny_model: Path) -> None:
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0)
    assert reply.object == "chat.completion"
    assert reply.model == "tiny"
    assert reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "length"
    prompt_ids = load_tokenizer(tiny_model).apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert reply.usage.prompt_tokens == len(prompt_ids)
    assert reply.usage.completion_tokens == 12
    assert reply.usage.total_tokens == len(prompt_ids) + 12


def test_streamed_text_equals_non_streamed_at_temperature_0(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=40, temperature=0)
    text, chunks = stream_text(client, max_tokens=40, temperature=0)
    assert text == whole.choices[0].message.content
    assert len(chunks) > 3
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert chunks[-1].usage is None  # no usage chunk unless asked for


def test_stream_include_usage_adds_a_final_usage_chunk(client: openai.OpenAI, tiny_model: Path) -> None:
    _, chunks = stream_text(client, max_tokens=7, temperature=0, stream_options={"include_usage": True})
    last = chunks[-1]
    assert last.choices == []
    prompt_ids = load_tokenizer(tiny_model).apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (len(prompt_ids), 7)
    assert all(c.usage is None for c in chunks[:-1])


def test_max_completion_tokens_is_honoured(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_completion_tokens=3, temperature=0)
    assert reply.usage.completion_tokens == 3


def test_stop_string_is_cut_and_never_emitted(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=60, temperature=0)
    text = full.choices[0].message.content
    # A stop string from the middle of the greedy output, two characters long, so the tiny
    # model's tokens are likely to split it.
    start = len(text) // 2
    stop = text[start : start + 2]
    expected = text[: text.index(stop)]
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=60, temperature=0, stop=[stop])
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == "stop"
    streamed, chunks = stream_text(client, max_tokens=60, temperature=0, stop=stop)
    assert streamed == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_sampling_with_temperature_and_top_p_runs(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=8, temperature=1.5, top_p=0.5, logit_bias=NO_EOS
    )
    assert reply.usage.completion_tokens == 8


def test_models_list_and_health(server: Server, client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert models.data[0].object == "model"
    health = httpx.get(f"{server.base_url}/health").json()
    assert health == {"status": "ok", "models": {"tiny": "RUNNING"}}


def test_concurrent_requests_all_complete(client: openai.OpenAI) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def one(_: int) -> int:
        reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16, temperature=0)
        return reply.usage.completion_tokens

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(one, range(8))) == [16] * 8


def test_seed_penalties_and_extensions_through_the_sdk(client: openai.OpenAI) -> None:
    def ask(**kwargs: object) -> str:
        reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24, **kwargs)
        return reply.choices[0].message.content or ""

    seeded = ask(temperature=1.0, seed=11)
    assert ask(temperature=1.0, seed=11) == seeded
    assert ask(temperature=1.0, seed=12) != seeded
    greedy = ask(temperature=0)
    assert ask(temperature=0, frequency_penalty=2.0) != greedy
    assert ask(temperature=1.0, extra_body={"top_k": 1}) == greedy
    biased = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=3, temperature=0, logit_bias={"300": 100}
    )
    assert biased.usage.completion_tokens == 3


def test_logprobs_in_the_openai_shape(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == 5
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 and t.bytes for t in content)
    _, chunks = stream_text(client, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)
    assert plain.choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model="tiny", messages=MESSAGES, top_logprobs=2)


def test_a_follow_up_turn_reports_its_cached_prompt_tokens(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=16, temperature=0, logit_bias=NO_EOS
    )
    answer = first.choices[0].message.content
    follow_up = [*MESSAGES, {"role": "assistant", "content": answer}, {"role": "user", "content": "Go on."}]
    reply = client.chat.completions.create(model="tiny", messages=follow_up, max_tokens=4, temperature=0)
    # The worker kept the first turn's cache: at least its whole prompt is reused.
    cached = reply.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens <= cached < reply.usage.prompt_tokens
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=follow_up,
            max_tokens=4,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert usage.prompt_tokens == reply.usage.prompt_tokens
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1  # all but the last token


def test_stream_interval_sets_how_many_tokens_a_chunk_carries(make_server, tiny_model: Path) -> None:
    # The same weights twice: one worker sends every step at once, one holds text up to 1 s. Steps
    # of 30 ms or more (SlowEngine) leave a busy gateway time to pass each of the eager one's
    # chunks on as it comes, instead of merging what piled up.
    engine = 'engine = "tests.support.engines:SlowEngine"'
    config = "".join(
        f'[[models]]\nname = "{name}"\npath = "{tiny_model}"\n{engine}\n[models.options]\nstream_interval_ms = {ms}\n'
        for name, ms in (("eager", 0), ("held", 1000))
    )
    server = make_server(config)
    server.wait_models()
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    try:
        counts = {}
        for name in ("eager", "held"):
            chunks = client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=48, temperature=0,
                logit_bias={"2": -100}, stream=True,
            )
            counts[name] = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
        # Held: the first chunk at once, then one a second (48 steps take 1.5 s or more), in the
        # gateway's 16-token pieces. Eager: a chunk a step.
        assert counts["held"] <= 6 and counts["held"] * 2 < counts["eager"], counts
    finally:
        client.close()


def test_a_slow_prefill_streams_keep_alive_comments(make_server, tiny_model: Path) -> None:
    engine = 'engine = "tests.support.engines:SpinningStepEngine"'
    server = make_server(f'[[models]]\nname = "spin"\npath = "{tiny_model}"\n{engine}\n')
    server.wait_models()
    body = {"model": "spin", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        lines = [line for line in response.read().decode().splitlines() if line]
    # The role chunk goes at once; then 2.5 s of prefill without output gets a comment.
    assert lines[0].startswith("data: ") and lines[1] == ": keep-alive", lines
    assert lines[-1] == "data: [DONE]"
