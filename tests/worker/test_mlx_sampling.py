"""Sampling parameters, logprobs and plain prompts, on the real engine and the tiny model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from opta_lmx.proto import ChatMessage, Finished, Generate, SamplingParams, Started, TokenChunk
from opta_lmx.worker.engines.mlx import MlxEngine

PROMPT = [ChatMessage("user", "Tell me about the quick brown fox.")]


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> MlxEngine:
    return MlxEngine("tiny", str(tiny_model))


def run(engine: MlxEngine, *requests: Generate) -> dict[int, list]:
    out: dict[int, list] = {r.request_id: [] for r in requests}
    for request in requests:
        for message in engine.submit(request):
            out[message.request_id].append(message)
    for _ in range(5000):
        if not engine.active:
            return out
        for message in engine.step():
            out[message.request_id].append(message)
    raise AssertionError("did not finish")


def text(messages: list) -> str:
    return "".join(m.text for m in messages if isinstance(m, TokenChunk))


def gen(rid: int, **params: object) -> Generate:
    params.setdefault("max_tokens", 24)
    return Generate(rid, PROMPT, SamplingParams(**params))  # type: ignore[arg-type]


def test_same_seed_same_output_alone_and_inside_a_batch(engine: MlxEngine) -> None:
    alone = text(run(engine, gen(1, temperature=1.0, seed=42))[1])
    again = text(run(engine, gen(1, temperature=1.0, seed=42))[1])
    batch = run(
        engine,
        gen(1, temperature=1.0, seed=42),
        gen(2, temperature=1.0, seed=7),
        gen(3, temperature=0.8, top_k=5),
        gen(4, temperature=0.0),
    )
    other = text(run(engine, gen(1, temperature=1.0, seed=43))[1])
    assert alone == again == text(batch[1])
    assert other != alone and text(batch[2]) != alone


def test_logit_bias_forces_a_token(engine: MlxEngine) -> None:
    target = engine._tokenizer.encode("fox")[0]
    messages = run(engine, gen(1, temperature=0.0, max_tokens=6, logit_bias={target: 100.0}))[1]
    decoded = engine._tokenizer.decode([target])
    assert text(messages) == decoded * 6


def test_penalties_change_greedy_output(engine: MlxEngine) -> None:
    plain = text(run(engine, gen(1, temperature=0.0, max_tokens=48))[1])
    for params in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"repetition_penalty": 2.0}):
        penalised = text(run(engine, gen(1, temperature=0.0, max_tokens=48, **params))[1])
        assert penalised != plain, params


def test_min_p_and_top_k_1_are_greedy(engine: MlxEngine) -> None:
    greedy = text(run(engine, gen(1, temperature=0.0))[1])
    assert text(run(engine, gen(1, temperature=1.0, top_k=1, seed=3))[1]) == greedy
    assert text(run(engine, gen(1, temperature=1.0, top_k=1))[1]) == greedy
    assert text(run(engine, gen(1, temperature=0.7, min_p=1.0))[1]) == greedy


def test_logprobs_one_entry_per_token_with_sorted_alternatives(engine: MlxEngine) -> None:
    messages = run(engine, gen(1, temperature=0.0, max_tokens=10, logprobs=True, top_logprobs=3))[1]
    chunks = [m for m in messages if isinstance(m, TokenChunk) and m.logprobs]
    entries = [e for c in chunks for e in c.logprobs]
    finished = messages[-1]
    assert isinstance(finished, Finished) and len(entries) == finished.completion_tokens == 10
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top) == 3
        assert [t.logprob for t in entry.top] == sorted((t.logprob for t in entry.top), reverse=True)
        assert entry.top[0].token == entry.token and math.isclose(entry.top[0].logprob, entry.logprob, rel_tol=1e-5)
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token
    # The tokens' bytes spell the text (mlx-lm's detokenizer drops the generation's leading space).
    spelled = b"".join(bytes(e.bytes) for e in entries).decode("utf-8", errors="replace")
    assert spelled.removeprefix(" ") == text(messages)


def test_plain_prompt_ids_and_echo(engine: MlxEngine) -> None:
    prompt = "The quick brown fox"
    ids = engine._tokenizer.encode(prompt)
    by_text = run(engine, Generate(1, prompt=prompt, echo=True, params=SamplingParams(max_tokens=8, temperature=0.0)))[1]
    by_ids = run(engine, Generate(2, prompt_ids=ids, params=SamplingParams(max_tokens=8, temperature=0.0)))[2]
    assert by_text[0] == Started(1, len(ids))
    assert by_text[1] == TokenChunk(1, prompt, 0)
    assert text(by_text) == prompt + text(by_ids)
    bad = run(engine, Generate(3, prompt_ids=[10**9], params=SamplingParams(max_tokens=2)))[3]
    assert bad[0].code == "invalid_request"
