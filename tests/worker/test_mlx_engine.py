"""The MLX engine driven directly (no processes): continuous batching behind the Engine contract.

Greedy (temperature 0) requests must produce the same text in a batch as alone, so most tests
compare against a one-at-a-time reference run by a second engine on the same tiny model.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import msgspec
import pytest

from opta_lmx.proto import (
    ChatMessage,
    Failed,
    Finished,
    FromWorker,
    Generate,
    SamplingParams,
    Started,
    TokenChunk,
)
from opta_lmx.config import EngineOptions
from opta_lmx.worker.engines.mlx import MlxEngine

# Greedy outputs of the tiny demo model (seed 0) run past 64 tokens for these prompts, and "run no"
# ends with eos after 27 tokens; the first two tests check these facts the others rely on.
PROMPTS = [f"Request number {i}: tell me a story about {'x' * 3 * i}." for i in range(8)]
EOS_PROMPT = "run no"
MAX_STEPS = 2000


class Transcript:
    """Every message an engine produced, per request, checked against the ordering contract."""

    def __init__(self) -> None:
        self.messages: dict[int, list[FromWorker]] = defaultdict(list)
        self.order: list[FromWorker] = []

    def add(self, messages: list[FromWorker]) -> list[FromWorker]:
        for message in messages:
            assert not self.ended(message.request_id), f"message after the terminal one: {message}"
            self.messages[message.request_id].append(message)
            self.order.append(message)
        return messages

    def ended(self, rid: int) -> bool:
        seen = self.messages.get(rid, [])
        return bool(seen) and isinstance(seen[-1], (Finished, Failed))

    def text(self, rid: int) -> str:
        return "".join(m.text for m in self.messages[rid] if isinstance(m, TokenChunk))

    def terminal(self, rid: int) -> Finished | Failed:
        last = self.messages[rid][-1]
        assert isinstance(last, (Finished, Failed))
        return last

    def check(self, rid: int) -> None:
        """Started first, then chunks, then exactly one terminal message."""
        seen = self.messages[rid]
        assert isinstance(seen[0], Started), seen[:2]
        assert all(isinstance(m, TokenChunk) for m in seen[1:-1]), seen
        assert isinstance(seen[-1], (Finished, Failed)), seen[-1]


def drain(engine: MlxEngine, transcript: Transcript) -> None:
    for _ in range(MAX_STEPS):
        if not engine.active:
            return
        transcript.add(engine.step())
    raise AssertionError("engine did not finish")


def generate(rid: int, content: str, **params: object) -> Generate:
    params.setdefault("temperature", 0.0)
    return Generate(rid, [ChatMessage("user", content)], SamplingParams(**params))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def reference(tiny_model: Path):
    """One-at-a-time output (text, Finished) of a request, from an engine of its own (with no
    prompt cache: each reference is computed from scratch, never from an earlier one's prefix)."""
    engine = MlxEngine("tiny", str(tiny_model), EngineOptions(prompt_cache_entries=0))
    cache: dict[tuple, tuple[str, Finished]] = {}

    def run(content: str, **params: object) -> tuple[str, Finished]:
        key = (content, tuple(sorted((k, str(v)) for k, v in params.items())))
        if key not in cache:
            transcript = Transcript()
            assert transcript.add(engine.submit(generate(0, content, **params))) == [
                Started(0, len(engine.prompt_tokens(generate(0, content, **params))))
            ]
            drain(engine, transcript)
            transcript.check(0)
            finished = transcript.terminal(0)
            assert isinstance(finished, Finished)
            cache[key] = (transcript.text(0), finished)
        return cache[key]

    return run


@pytest.fixture
def engine(tiny_model: Path) -> MlxEngine:
    return MlxEngine("tiny", str(tiny_model))


def test_concurrent_greedy_requests_equal_their_one_at_a_time_output(engine, reference) -> None:
    transcript = Transcript()
    contents = [*PROMPTS, EOS_PROMPT]
    for rid, content in enumerate(contents):
        (started,) = transcript.add(engine.submit(generate(rid, content, max_tokens=64)))
        assert isinstance(started, Started) and started.request_id == rid
    assert engine.active == len(contents)
    drain(engine, transcript)
    for rid, content in enumerate(contents):
        transcript.check(rid)
        text, finished = reference(content, max_tokens=64)
        assert transcript.text(rid) == text, content
        assert transcript.terminal(rid) == msgspec.structs.replace(finished, request_id=rid)
        # The facts the other tests rely on: these run to max_tokens, the eos prompt stops early.
        assert finished.finish_reason == ("stop" if content == EOS_PROMPT else "length")
    assert engine.tokens_generated == sum(transcript.terminal(rid).completion_tokens for rid in range(len(contents)))


def test_eos_ends_with_stop_and_counts_the_eos_token(engine, reference) -> None:
    text, finished = reference(EOS_PROMPT, max_tokens=200)
    assert finished.finish_reason == "stop", "the tiny model no longer ends this prompt with eos"
    assert finished.completion_tokens == 27
    transcript = Transcript()
    transcript.add(engine.submit(generate(1, EOS_PROMPT, max_tokens=200)))
    drain(engine, transcript)
    assert transcript.terminal(1) == Finished(1, "stop", finished.prompt_tokens, 27)
    assert transcript.text(1) == text
    # 26 text tokens; the eos token is counted but carries no text
    assert sum(m.n_tokens for m in transcript.messages[1] if isinstance(m, TokenChunk)) <= 26


def test_request_joins_mid_generation_without_stalling_the_others(engine, reference) -> None:
    transcript = Transcript()
    for rid in range(3):
        transcript.add(engine.submit(generate(rid, PROMPTS[rid], max_tokens=64)))
    for _ in range(10):
        transcript.add(engine.step())
    assert all(transcript.text(rid) for rid in range(3))
    transcript.add(engine.submit(generate(3, PROMPTS[3], max_tokens=64)))
    # While the newcomer is prefilled, the three already decoding keep producing a token a step.
    for _ in range(3):
        before = engine.progress
        transcript.add(engine.step())
        assert engine.progress - before >= 3
    drain(engine, transcript)
    for rid in range(4):
        transcript.check(rid)
        assert transcript.text(rid) == reference(PROMPTS[rid], max_tokens=64)[0]


def test_cancel_mid_generation_frees_the_slot_and_the_others_continue(tiny_model: Path, reference) -> None:
    # Two slots: the third request can only decode once a slot is free.
    engine = MlxEngine("tiny", str(tiny_model), EngineOptions(batch_size=2, prefill_batch_size=1))
    transcript = Transcript()
    transcript.add(engine.submit(generate(0, PROMPTS[0], max_tokens=64)))
    transcript.add(engine.submit(generate(1, PROMPTS[1], max_tokens=64)))
    transcript.add(engine.submit(generate(2, PROMPTS[2], max_tokens=10)))
    for _ in range(8):
        transcript.add(engine.step())
    assert transcript.text(1) and not transcript.text(2)
    cancelled = transcript.add(engine.cancel(1))
    assert len(cancelled) == 1 and isinstance(cancelled[0], Finished)
    assert cancelled[0].finish_reason == "cancelled" and cancelled[0].completion_tokens > 0
    assert engine.active == 2
    assert engine.cancel(1) == [] and engine.cancel(99) == []  # idempotent, unknown ids ignored
    drain(engine, transcript)  # Transcript refuses any message for 1 after its Finished
    ends = [m.request_id for m in transcript.order if isinstance(m, Finished)]
    assert ends == [1, 2, 0]  # the newcomer took the freed slot while 0 was still generating
    for rid, max_tokens in ((0, 64), (2, 10)):
        transcript.check(rid)
        assert transcript.text(rid) == reference(PROMPTS[rid], max_tokens=max_tokens)[0]


def test_submit_answers_started_before_any_prefill_and_cancel_ends_it(engine) -> None:
    request = generate(5, PROMPTS[0])
    n_prompt = len(engine.prompt_tokens(request))
    assert engine.submit(request) == [Started(5, n_prompt)]
    assert engine.cancel(5) == [Finished(5, "cancelled", n_prompt, 0)]
    assert engine.active == 0
    assert engine.step() == []


def test_stop_string_cuts_the_text_and_leaves_the_batch(engine, reference) -> None:
    full, _ = reference(PROMPTS[2], max_tokens=64)
    stop = full[20:23]
    expected = full[: full.find(stop)]
    transcript = Transcript()
    transcript.add(engine.submit(generate(0, PROMPTS[0], max_tokens=64)))
    transcript.add(engine.submit(generate(2, PROMPTS[2], max_tokens=64, stop=[stop])))
    transcript.add(engine.submit(generate(4, PROMPTS[4], max_tokens=64)))
    drain(engine, transcript)
    assert transcript.text(2) == expected
    assert transcript.terminal(2).finish_reason == "stop"
    assert transcript.terminal(2).completion_tokens < 64
    for rid in (0, 4):  # the rows left around the removed one are undisturbed
        assert transcript.text(rid) == reference(PROMPTS[rid], max_tokens=64)[0]


def test_max_tokens_ends_with_length(engine, reference) -> None:
    transcript = Transcript()
    transcript.add(engine.submit(generate(0, PROMPTS[0], max_tokens=5)))
    transcript.add(engine.submit(generate(1, PROMPTS[1], max_tokens=64)))
    drain(engine, transcript)
    finished = transcript.terminal(0)
    assert isinstance(finished, Finished)
    assert (finished.finish_reason, finished.completion_tokens) == ("length", 5)
    assert reference(PROMPTS[0], max_tokens=64)[0].startswith(transcript.text(0))
    assert transcript.terminal(1).completion_tokens == 64


def test_context_overflow_fails_at_submit_with_both_numbers(engine) -> None:
    request = generate(7, "word " * 3000)
    n_prompt = len(engine.prompt_tokens(request))
    replies = engine.submit(request)
    assert len(replies) == 1 and isinstance(replies[0], Failed)
    assert replies[0].code == "context_length_exceeded"
    assert str(engine.ctx_len) in replies[0].message and str(n_prompt) in replies[0].message
    assert engine.active == 0


def test_sampling_requests_share_the_batch_with_greedy_ones(engine, reference) -> None:
    # Each request brings its own sampler; greedy rows must not feel their sampling neighbours.
    transcript = Transcript()
    transcript.add(engine.submit(generate(0, PROMPTS[0], max_tokens=32)))
    transcript.add(engine.submit(generate(1, PROMPTS[1], max_tokens=32, temperature=1.0, top_p=0.9)))
    transcript.add(engine.submit(generate(2, PROMPTS[2], max_tokens=32)))
    transcript.add(engine.submit(generate(3, PROMPTS[3], max_tokens=32, temperature=0.7)))
    drain(engine, transcript)
    for rid in range(4):
        transcript.check(rid)
        assert isinstance(transcript.terminal(rid), Finished)
    for rid in (0, 2):
        assert transcript.text(rid) == reference(PROMPTS[rid], max_tokens=32)[0]


def test_more_requests_than_the_batch_wait_their_turn(tiny_model: Path, reference) -> None:
    engine = MlxEngine("tiny", str(tiny_model), EngineOptions(batch_size=3, prefill_batch_size=2))
    transcript = Transcript()
    for rid, content in enumerate(PROMPTS):
        transcript.add(engine.submit(generate(rid, content, max_tokens=24)))
    drain(engine, transcript)
    for rid, content in enumerate(PROMPTS):
        transcript.check(rid)
        assert transcript.text(rid) == reference(content, max_tokens=24)[0]


def test_abort_all_fails_every_request(engine) -> None:
    transcript = Transcript()
    for rid in range(3):
        transcript.add(engine.submit(generate(rid, PROMPTS[rid])))
    transcript.add(engine.step())
    replies = transcript.add(engine.abort_all("server_shutdown", "bye"))
    assert replies == [Failed(rid, "server_shutdown", "bye") for rid in range(3)]
    assert engine.active == 0
    assert engine.step() == []
    assert isinstance(transcript.add(engine.submit(generate(9, PROMPTS[0], max_tokens=3)))[0], Started)  # usable
    drain(engine, transcript)
    assert transcript.terminal(9).completion_tokens == 3


def test_max_kv_size_bounds_the_attention_window(tiny_model: Path, reference) -> None:
    # mlx-lm ignores max_kv_size for models that build their own caches (llama does): the engine
    # must bound it itself. Same output while everything fits the window, another once it rotates.
    window = 48
    bounded = MlxEngine("tiny", str(tiny_model), EngineOptions(max_kv_size=window, prompt_cache_entries=0))
    transcript = Transcript()
    transcript.add(bounded.submit(generate(0, PROMPTS[0], max_tokens=120)))
    drain(bounded, transcript)
    unbounded, finished = reference(PROMPTS[0], max_tokens=120)
    fits, _ = reference(PROMPTS[0], max_tokens=window - finished.prompt_tokens)
    assert transcript.text(0).startswith(fits)
    assert transcript.text(0) != unbounded
    assert transcript.terminal(0).completion_tokens == 120


@pytest.mark.parametrize("penalty", [0.0, 1.5])
def test_a_request_alone_runs_solo_and_moves_into_the_batch_when_another_arrives(tiny_model: Path, reference, penalty: float) -> None:
    # Alone, a request runs through generate_step; when a second one arrives it moves into the
    # batch with its KV cache. Greedy, both must still answer exactly as they do one at a time.
    engine = MlxEngine("tiny", str(tiny_model), EngineOptions(prompt_cache_entries=0))
    transcript = Transcript()
    transcript.add(engine.submit(generate(0, PROMPTS[0], max_tokens=64, frequency_penalty=penalty)))
    for _ in range(10):
        transcript.add(engine.step())
    assert engine._solo is not None and engine._solo.active  # the first ran solo
    transcript.add(engine.submit(generate(1, PROMPTS[1], max_tokens=64, frequency_penalty=penalty)))
    assert not engine._solo.active  # ... and has moved
    drain(engine, transcript)
    for rid in (0, 1):
        transcript.check(rid)
        text, finished = reference(PROMPTS[rid], max_tokens=64, frequency_penalty=penalty)
        assert transcript.text(rid) == text
        assert transcript.terminal(rid) == msgspec.structs.replace(finished, request_id=rid)


def test_a_solo_request_cancelled_or_cut_by_a_stop_string_leaves_cleanly(tiny_model: Path, reference) -> None:
    engine = MlxEngine("tiny", str(tiny_model), EngineOptions(prompt_cache_entries=0))
    transcript = Transcript()
    transcript.add(engine.submit(generate(0, PROMPTS[2], max_tokens=64)))
    for _ in range(5):
        transcript.add(engine.step())
    transcript.add(engine.cancel(0))
    assert transcript.terminal(0).finish_reason == "cancelled" and engine.active == 0
    assert engine._solo is not None and not engine._solo.active
    full, _ = reference(PROMPTS[2], max_tokens=64)
    stop = full[20:23]
    transcript.add(engine.submit(generate(1, PROMPTS[2], max_tokens=64, stop=[stop])))
    drain(engine, transcript)
    assert transcript.terminal(1).finish_reason == "stop"
    assert transcript.text(1) == full[: full.index(stop)]
    assert not engine._solo.active and engine.active == 0


LONG_PROMPT = "tell me a story about " + "the sea and the lighthouse " * 12


@pytest.mark.parametrize("joined", [False, True], ids=["alone", "batched"])
def test_prefill_counts_as_progress(tiny_model: Path, joined: bool) -> None:
    # The hang watchdog kills a busy worker whose progress stands still: a long prompt's prefill
    # must move it before the first token, on the solo path (inside one generate_step call) and
    # in the batch (a prompt chunk a step).
    engine = MlxEngine("tiny", str(tiny_model), EngineOptions(prefill_step_size=8, prompt_cache_entries=0))
    prompt_len = len(engine.prompt_tokens(generate(0, LONG_PROMPT)))
    assert prompt_len > 80
    transcript = Transcript()
    transcript.add(engine.submit(generate(0, LONG_PROMPT, max_tokens=4)))
    if joined:  # a second request moves the first into the batch before it has started
        transcript.add(engine.submit(generate(1, LONG_PROMPT + "!", max_tokens=4)))
        transcript.add(engine.step())
        assert engine.tokens_generated == 0 and engine.progress >= 2  # one chunk of each prompt
        while engine.tokens_generated == 0:
            transcript.add(engine.step())
        # Every full chunk of 8 before the last token was counted, for both prompts.
        assert engine.progress - engine.tokens_generated >= 2 * (prompt_len // 8 - 1)
    else:
        transcript.add(engine.step())  # the whole prefill and the first token
        assert engine.tokens_generated == 1
        assert engine.progress - 1 >= prompt_len // 8 - 1
    drain(engine, transcript)
    for rid in transcript.messages:
        transcript.check(rid)


def test_a_configured_chat_template_replaces_the_models(tiny_model: Path) -> None:
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]"
    engine = MlxEngine("tiny", str(tiny_model), EngineOptions(chat_template=template))
    prompt = engine.prompt_tokens(generate(1, "hi"))
    assert engine._tokenizer.decode(prompt) == "[user] hi\n[assistant]"
