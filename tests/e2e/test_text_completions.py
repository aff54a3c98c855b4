"""/v1/completions through the openai SDK: plain prompts, lists, echo, n, streaming."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from mlx_lm.utils import load_tokenizer

from tests.conftest import NO_EOS, Server

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)


def test_completion_counts_the_raw_prompt(client: openai.OpenAI, tiny_model: Path) -> None:
    reply = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0)
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert reply.choices[0].finish_reason == "length" and reply.choices[0].text
    assert reply.usage.prompt_tokens == len(load_tokenizer(tiny_model).encode(PROMPT))
    assert reply.usage.completion_tokens == 6


def test_streamed_equals_whole_and_token_prompt_equals_text_prompt(client: openai.OpenAI, tiny_model: Path) -> None:
    whole = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=20, temperature=0)
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=20, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    ids = load_tokenizer(tiny_model).encode(PROMPT)
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=20, temperature=0)
    assert by_ids.choices[0].text == whole.choices[0].text


def test_echo_and_several_prompts_and_n(client: openai.OpenAI) -> None:
    plain = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, temperature=0).choices[0].text
    echoed = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, temperature=0, echo=True)
    assert echoed.choices[0].text == PROMPT + plain
    other = "Sphinx of black quartz"
    many = client.completions.create(model="tiny", prompt=[PROMPT, other], max_tokens=5, temperature=0)
    assert [c.index for c in many.choices] == [0, 1]
    assert many.choices[0].text == plain
    assert many.choices[1].text == client.completions.create(model="tiny", prompt=other, max_tokens=5, temperature=0).choices[0].text
    n = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=1.0, n=3, seed=5)
    assert len(n.choices) == 3 and len({c.text for c in n.choices}) == 3  # distinct draws
    again = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=1.0, n=3, seed=5)
    assert [c.text for c in again.choices] == [c.text for c in n.choices]  # reproducible
    # Usage counts each distinct prompt once, however many choices it has, as OpenAI does.
    one = client.completions.create(model="tiny", prompt=[PROMPT, other], max_tokens=2, n=1, logit_bias=NO_EOS)
    three = client.completions.create(model="tiny", prompt=[PROMPT, other], max_tokens=2, n=3, logit_bias=NO_EOS)
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens


def test_streamed_choices_carry_their_index_and_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model="tiny", prompt=[PROMPT, "Hello"], max_tokens=4, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )
    finishes = {c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason}
    assert finishes == {0, 1}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8


def test_logprobs_in_the_completions_shape_stream_and_not(client: openai.OpenAI) -> None:
    args = dict(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0, logprobs=3, logit_bias={"2": -100})
    reply = client.completions.create(**args)  # type: ignore[call-overload]
    choice = reply.choices[0]
    lp = choice.logprobs
    assert lp is not None and len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 8
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(8)]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0 and len(top) <= 3
        assert max(top.values()) == pytest.approx(logprob, abs=1e-4)  # greedy: the chosen token is the likeliest
    streamed = [c.choices[0] for c in client.completions.create(**args, stream=True) if c.choices and c.choices[0].logprobs]  # type: ignore[call-overload]
    assert [t for c in streamed for t in c.logprobs.tokens] == lp.tokens
    assert [o for c in streamed for o in c.logprobs.text_offset] == lp.text_offset
    assert client.completions.create(model="tiny", prompt=PROMPT, max_tokens=2).choices[0].logprobs is None


@pytest.mark.parametrize(
    ("change", "status", "param"),
    [
        ({"suffix": "end"}, 400, "suffix"),
        ({"prompt": []}, 400, "prompt"),
        ({"prompt": ["a", 3]}, 400, "prompt"),
        ({"n": 17}, 400, "n"),
        ({"logprobs": 21}, 400, "logprobs"),
        ({"logprobs": 2, "echo": True}, 400, "logprobs"),
        ({"prompt": [10**9]}, 400, None),
        ({"model": "nope"}, 404, "model"),
    ],
)
def test_bad_completion_requests(server: Server, change: dict, status: int, param: str | None) -> None:
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 2, **change}
    response = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
