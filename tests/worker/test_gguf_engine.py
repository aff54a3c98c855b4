"""The GGUF engine driven directly (no processes), on real models: SmolLM2-135M-Instruct (an
instruct model with a ChatML template in its GGUF) and Gemma 3 270M (a base model without one).

Greedy requests must give the same text in a batch as alone, so several tests compare against a
one-at-a-time run on the same engine.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterator

import jsonschema
import numpy as np
import pytest

from opta_lmx.config import EngineOptions
from opta_lmx.demo.builder import CHAT_TEMPLATE
from opta_lmx.proto import ChatMessage, Failed, Finished, Generate, SamplingParams, Started, TokenChunk, Tool
from opta_lmx.worker.engines.gguf import GgufEngine
from tests.support.schemas import random_schema
from tests.worker.test_mlx_engine import Transcript, drain

SYSTEM = ChatMessage("system", "You are a helpful assistant.")
QUESTIONS = [
    "What is the capital of France?",
    "Name three colours.",
    "Write a haiku about the sea.",
    "What is 2 + 2?",
    "Say hello in Spanish.",
    "Why is the sky blue?",
    "List two fruits.",
    "Who wrote Hamlet?",
]
# SmolLM2's end tokens (<|endoftext|>, <|im_end|>) suppressed, for requests that must still run.
NO_EOS = {0: -100.0, 2: -100.0}
WEATHER = Tool(
    "weather",
    "The weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"], "additionalProperties": False},
)


@pytest.fixture(scope="module")
def engine(smollm2_gguf: Path) -> Iterator[GgufEngine]:
    engine = GgufEngine("smollm2", str(smollm2_gguf), EngineOptions(slots=8, slot_context=1024))
    yield engine
    engine.close()


def ask(rid: int, question: str, **params: object) -> Generate:
    params.setdefault("temperature", 0.0)
    params.setdefault("max_tokens", 24)
    return Generate(rid, [SYSTEM, ChatMessage("user", question)], SamplingParams(**params))  # type: ignore[arg-type]


def run(engine: GgufEngine, *requests: Generate) -> Transcript:
    transcript = Transcript()
    for request in requests:
        transcript.add(engine.submit(request))
    drain(engine, transcript)
    for request in requests:
        transcript.check(request.request_id)
    return transcript


def test_the_instruct_model_answers_paris(engine: GgufEngine) -> None:
    transcript = run(engine, ask(1, "What is the capital of France?"))
    assert "Paris" in transcript.text(1)
    finished = transcript.terminal(1)
    assert isinstance(finished, Finished) and finished.finish_reason == "stop"  # it ended by itself


def test_the_prompt_is_the_gguf_chat_template_rendering(engine: GgufEngine) -> None:
    tokens = engine.prompt_tokens(ask(1, "Hi"))
    text = engine._tokenizer.decode(tokens)
    assert text == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_greedy_outputs_in_a_batch_equal_their_one_at_a_time_outputs(engine: GgufEngine) -> None:
    alone = {rid: run(engine, ask(rid, q)).text(rid) for rid, q in enumerate(QUESTIONS)}
    transcript = Transcript()
    # Half join while the other half is already decoding: prompt chunks and decode tokens share steps.
    for rid, question in list(enumerate(QUESTIONS))[:4]:
        transcript.add(engine.submit(ask(rid, question)))
    for _ in range(3):
        transcript.add(engine.step())
    for rid, question in list(enumerate(QUESTIONS))[4:]:
        transcript.add(engine.submit(ask(rid, question)))
    drain(engine, transcript)
    assert {rid: transcript.text(rid) for rid in alone} == alone
    assert len(set(alone.values())) == len(QUESTIONS)


def test_more_requests_than_slots_wait_their_turn(smollm2_gguf: Path) -> None:
    small = GgufEngine("smollm2", str(smollm2_gguf), EngineOptions(slots=2, slot_context=512))
    try:
        transcript = run(small, *(ask(rid, q, max_tokens=6) for rid, q in enumerate(QUESTIONS[:5])))
        for rid in range(5):
            terminal = transcript.terminal(rid)
            assert isinstance(terminal, Finished) and terminal.completion_tokens >= 1
    finally:
        small.close()


def test_a_seed_gives_the_same_text_alone_and_in_a_batch(engine: GgufEngine) -> None:
    seeded = dict(temperature=1.0, seed=7, max_tokens=20, logit_bias=NO_EOS)
    alone = run(engine, ask(1, "Tell me a story.", **seeded)).text(1)
    others = [ask(rid, q, temperature=1.0, max_tokens=20) for rid, q in enumerate(QUESTIONS[:4], start=2)]
    batched = run(engine, *others, ask(1, "Tell me a story.", **seeded))
    assert batched.text(1) == alone
    other_seed = run(engine, ask(1, "Tell me a story.", **{**seeded, "seed": 8})).text(1)
    assert other_seed != alone


def test_sampling_parameters_change_the_draw(engine: GgufEngine) -> None:
    question = "Tell me a story."
    greedy = run(engine, ask(1, question, max_tokens=16, logit_bias=NO_EOS)).text(1)
    assert run(engine, ask(1, question, temperature=1.0, top_k=1, max_tokens=16, logit_bias=NO_EOS)).text(1) == greedy
    assert run(engine, ask(1, question, temperature=1.0, min_p=1.0, max_tokens=16, logit_bias=NO_EOS)).text(1) == greedy
    assert run(engine, ask(1, question, temperature=0.7, top_p=1e-6, max_tokens=16, logit_bias=NO_EOS)).text(1) == greedy
    penalized = run(engine, ask(1, question, frequency_penalty=2.0, max_tokens=16, logit_bias=NO_EOS)).text(1)
    assert penalized != greedy
    assert run(engine, ask(1, question, presence_penalty=2.0, max_tokens=16, logit_bias=NO_EOS)).text(1) != greedy
    assert run(engine, ask(1, question, repetition_penalty=1.5, max_tokens=16, logit_bias=NO_EOS)).text(1) != greedy
    x = engine._tokenizer.encode("x", add_special_tokens=False)[0]
    biased = run(engine, ask(1, question, max_tokens=5, logit_bias={x: 100.0}))
    assert biased.text(1) == "xxxxx"


def test_stop_strings_cut_the_text_and_are_never_emitted(engine: GgufEngine) -> None:
    full = run(engine, ask(1, "Why is the sky blue?", max_tokens=40, logit_bias=NO_EOS)).text(1)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    expected = full[: full.index(stop)]
    transcript = run(engine, ask(1, "Why is the sky blue?", max_tokens=40, stop=[stop], logit_bias=NO_EOS))
    assert transcript.text(1) == expected
    assert transcript.terminal(1).finish_reason == "stop" and transcript.terminal(1).stop_sequence == stop


def test_logprobs_are_the_log_softmax_of_the_logits(engine: GgufEngine) -> None:
    transcript = run(engine, ask(1, "What is 2 + 2?", max_tokens=5, logprobs=True, top_logprobs=3, logit_bias=NO_EOS))
    entries = [e for m in transcript.messages[1] if isinstance(m, TokenChunk) for e in (m.logprobs or [])]
    assert len(entries) == 5
    for entry in entries:
        assert len(entry.top) == 3 and entry.logprob <= 0
        assert [a.logprob for a in entry.top] == sorted((a.logprob for a in entry.top), reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert (entry.token, entry.logprob) == (entry.top[0].token, entry.top[0].logprob)
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
        assert sum(2.718281828 ** a.logprob for a in entry.top) <= 1.0 + 1e-5
    assert "".join(e.token for e in entries) == transcript.text(1)


def test_the_slot_context_bounds_prompt_and_output(smollm2_gguf: Path) -> None:
    small = GgufEngine("smollm2", str(smollm2_gguf), EngineOptions(slots=1, slot_context=256))
    try:
        assert small.ctx_len == 256
        (failed,) = small.submit(ask(1, "word " * 300))
        assert isinstance(failed, Failed) and failed.code == "context_length_exceeded"
        assert "256" in failed.message and small.active == 0
        # A prompt that fits gets at most the room left as max_tokens.
        request = ask(2, "word " * 220, max_tokens=500, logit_bias=NO_EOS)
        prompt = len(small.prompt_tokens(request))
        finished = run(small, request).terminal(2)
        assert isinstance(finished, Finished) and finished.finish_reason == "length"
        assert finished.completion_tokens == 256 - prompt > 0
    finally:
        small.close()


def test_cancel_frees_the_slot_for_the_next_request(smollm2_gguf: Path) -> None:
    one = GgufEngine("smollm2", str(smollm2_gguf), EngineOptions(slots=1, slot_context=512))
    try:
        transcript = Transcript()
        transcript.add(one.submit(ask(1, "Tell me a story.", max_tokens=400, logit_bias=NO_EOS)))
        transcript.add(one.submit(ask(2, "What is the capital of France?")))
        for _ in range(5):
            transcript.add(one.step())
        assert transcript.text(1) and not transcript.text(2)  # the second waits for the only slot
        (cancelled,) = transcript.add(one.cancel(1))
        assert isinstance(cancelled, Finished) and cancelled.finish_reason == "cancelled"
        assert one.cancel(1) == []  # idempotent
        drain(one, transcript)
        assert "Paris" in transcript.text(2) and one.active == 0
        transcript.check(1)
        transcript.check(2)
    finally:
        one.close()


def test_a_follow_up_turn_reuses_the_finished_turns_cache(smollm2_gguf: Path) -> None:
    engines = [GgufEngine("smollm2", str(smollm2_gguf), EngineOptions(slots=2, slot_context=1024, prompt_cache_entries=n)) for n in (10, 0)]
    try:
        answers = []
        for engine in engines:
            first = run(engine, ask(1, "Name three colours.", max_tokens=30))
            engine.trim()  # (what a memory squeeze asks for) returns heap, keeps the slots' caches
            history = [SYSTEM, ChatMessage("user", "Name three colours."), ChatMessage("assistant", first.text(1)), ChatMessage("user", "And three animals?")]
            follow = run(engine, Generate(2, history, SamplingParams(temperature=0.0, max_tokens=20)))
            prompt = engine.prompt_tokens(Generate(1, [SYSTEM, ChatMessage("user", "Name three colours.")]))
            answers.append((follow.text(2), follow.terminal(2), len(prompt)))
        (reused_text, reused, first_prompt), (fresh_text, fresh, _) = answers
        assert isinstance(reused, Finished) and isinstance(fresh, Finished)
        assert first_prompt <= reused.cached_tokens < reused.prompt_tokens
        assert fresh.cached_tokens == 0
        assert reused_text == fresh_text  # the reused KV gives the same greedy answer
        # The very same prompt again: all of it but the last token comes from the cache.
        again = run(engines[0], Generate(3, [SYSTEM, ChatMessage("user", "And three animals?")], SamplingParams(temperature=0.0, max_tokens=3)))
        repeat = run(engines[0], Generate(4, [SYSTEM, ChatMessage("user", "And three animals?")], SamplingParams(temperature=0.0, max_tokens=3)))
        assert repeat.terminal(4).cached_tokens == repeat.terminal(4).prompt_tokens - 1  # type: ignore[union-attr]
        assert repeat.text(4) == again.text(3)
    finally:
        for engine in engines:
            engine.close()


def test_json_schema_output_validates(engine: GgufEngine) -> None:
    rng = random.Random(3)
    schemas = [random_schema(rng) for _ in range(4)]
    requests = [
        Generate(rid, [SYSTEM, ChatMessage("user", "Answer in JSON.")], SamplingParams(max_tokens=600, temperature=1.0, seed=rid), json_schema=json.dumps(schema))
        for rid, schema in enumerate(schemas)
    ]
    transcript = run(engine, *requests)
    for rid, schema in enumerate(schemas):
        assert transcript.terminal(rid).finish_reason == "stop", transcript.terminal(rid)
        jsonschema.validate(json.loads(transcript.text(rid)), schema)


def test_json_object_mode_starts_an_object(engine: GgufEngine) -> None:
    request = Generate(1, [SYSTEM, ChatMessage("user", "Describe Paris.")], SamplingParams(max_tokens=60, temperature=0.0), json_schema='{"type": "object"}')
    transcript = run(engine, request)
    text = transcript.text(1)
    assert text.startswith("{")
    if transcript.terminal(1).finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_an_invalid_schema_fails_before_it_starts(engine: GgufEngine) -> None:
    (failed,) = engine.submit(Generate(1, [ChatMessage("user", "hi")], json_schema='{"type": "objekt"}'))
    assert isinstance(failed, Failed) and failed.code == "invalid_request"


def test_a_forced_tool_call_validates_with_a_configured_tool_template(smollm2_gguf: Path) -> None:
    # SmolLM2's own template knows no tools (so "required" is refused); a configured template
    # in the JSON tool-call format gives it one.
    plain = GgufEngine("smollm2", str(smollm2_gguf), EngineOptions(slots=1, slot_context=512))
    try:
        (failed,) = plain.submit(Generate(1, [ChatMessage("user", "Weather in Oslo?")], tools=[WEATHER], tool_choice="required"))
        assert isinstance(failed, Failed) and failed.code == "invalid_request" and "tool" in failed.message
    finally:
        plain.close()
    tools = GgufEngine("smollm2", str(smollm2_gguf), EngineOptions(slots=2, slot_context=1024, chat_template=CHAT_TEMPLATE))
    try:
        requests = [
            Generate(rid, [ChatMessage("user", "What is the weather in Oslo?")], SamplingParams(max_tokens=100, temperature=0.0 if rid else 1.0, seed=rid),
                     tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)
            for rid in range(2)
        ]
        transcript = run(tools, *requests)
        for rid in range(2):
            assert transcript.terminal(rid).finish_reason == "tool_calls", transcript.terminal(rid)
            (call,) = [c for m in transcript.messages[rid] if isinstance(m, TokenChunk) for c in m.tool_calls]
            assert call.name == "weather" and transcript.text(rid) == ""
            jsonschema.validate(json.loads(call.arguments), WEATHER.parameters)
    finally:
        tools.close()


def test_gemma_base_model_completes_text_and_refuses_chat(gemma3_gguf: Path) -> None:
    gemma = GgufEngine("gemma", str(gemma3_gguf), EngineOptions(slots=2, slot_context=512))
    try:
        prompt = "Q: What is the capital of Italy?\nA: Rome\nQ: What is the capital of Spain?\nA: Madrid\nQ: What is the capital of France?\nA:"
        transcript = run(gemma, Generate(1, prompt=prompt, params=SamplingParams(temperature=0.0, max_tokens=4)))
        assert "Paris" in transcript.text(1)
        assert gemma.prompt_tokens(Generate(1, prompt="Hi"))[0] == gemma._tokenizer.bos_token_id  # its BOS is added
        (failed,) = gemma.submit(Generate(2, [ChatMessage("user", "Hi")]))
        assert isinstance(failed, Failed) and failed.code == "invalid_request" and "chat template" in failed.message
        assert isinstance(gemma.submit(Generate(3, prompt="The sky is", params=SamplingParams(max_tokens=2)))[0], Started)
        drain(gemma, Transcript())
    finally:
        gemma.close()


def test_a_lark_grammar_allows_only_its_strings(engine: GgufEngine) -> None:
    from opta_lmx.worker.grammar import GrammarError, lark_grammar

    mask = engine._grammars.compile(lark_grammar('start: "Paris" | "Lyon"'))
    pieces = engine._tokenizer.pieces
    first = np.flatnonzero(mask.allowed(engine._context.n_vocab)).tolist()
    assert first and all(any(w.startswith(pieces.piece(t).decode("utf-8", "replace")) for w in ("Paris", "Lyon")) for t in first)
    for token in engine._tokenizer.encode("Paris", add_special_tokens=False):
        mask.consume(token)
    done = set(np.flatnonzero(mask.allowed(engine._context.n_vocab)).tolist())
    assert done and done <= set(engine._tokenizer.eos_token_ids)  # nothing but the end may follow
    with pytest.raises(GrammarError):
        engine._grammars.compile(lark_grammar("start: undefined_rule"))
