"""The MLX engine's prompt cache on the real tiny model: reuse across turns, its edge cases, its bounds.

Reuse must not change an answer: at temperature 0 a request that starts from a cached prefix
answers as the same request on an engine with no prompt cache.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import msgspec
import pytest
from mlx_lm import load
from mlx_lm.models.cache import RotatingKVCache

from opta_lmx.config import EngineOptions
from opta_lmx.proto import ChatMessage, Finished, Generate, SamplingParams
from opta_lmx.worker.engines.mlx import MlxEngine
from opta_lmx.worker.engines.mlx_prompt_cache import PromptCache
from tests.conftest import NO_EOS
from tests.worker.test_mlx_engine import Transcript, drain

STORY = [ChatMessage("user", "Tell me a story about a fox.")]
# Prompts of equal length sharing no first token, so their entries are alike and unrelated.
UNRELATED = [list(range(start, start + 12)) for start in (100, 200, 300, 400)]


def params(max_tokens: int = 24, **more: object) -> SamplingParams:
    # Greedy, with the end token suppressed so every answer runs to max_tokens.
    logit_bias = {int(token): bias for token, bias in NO_EOS.items()}
    return SamplingParams(
        max_tokens=max_tokens, temperature=0.0, logit_bias=logit_bias, **more  # type: ignore[arg-type]
    )


def follow_up(first: list[ChatMessage], answer: str) -> list[ChatMessage]:
    return [*first, ChatMessage("assistant", answer), ChatMessage("user", "And then?")]


def run(engine: MlxEngine, request: Generate) -> tuple[str, Finished, int]:
    """(text, Finished, prompt tokens computed) of one request run alone.

    Counted at the model: every token fed to it, prompt or generated, goes through its forward
    pass once (each generated token is fed back, the last one too), whichever generator drives
    it; the prompt tokens computed are the rest."""
    transcript = Transcript()
    fed = [0]
    model_class = type(engine._model)
    forward = model_class.__call__

    def counting(self, inputs, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        fed[0] += inputs.shape[-1]
        return forward(self, inputs, *args, **kwargs)

    model_class.__call__ = counting
    try:
        transcript.add(engine.submit(request))
        drain(engine, transcript)
    finally:
        model_class.__call__ = forward
    rid = request.request_id
    transcript.check(rid)
    finished = transcript.terminal(rid)
    assert isinstance(finished, Finished)
    return transcript.text(rid), finished, fed[0] - finished.completion_tokens


@pytest.fixture(scope="module")
def uncached(tiny_model: Path) -> MlxEngine:
    return MlxEngine("tiny", str(tiny_model), EngineOptions(prompt_cache_entries=0))


@pytest.fixture
def engine(tiny_model: Path) -> MlxEngine:
    return MlxEngine("tiny", str(tiny_model))


def test_the_next_turn_reuses_the_conversation_and_answers_as_without_it(engine, uncached) -> None:
    text, first, computed = run(engine, Generate(1, STORY, params()))
    assert (first.cached_tokens, computed) == (0, first.prompt_tokens)
    # A penalty looks at every token before it, the cached ones included.
    turn = Generate(2, follow_up(STORY, text), params(frequency_penalty=1.5))
    assert engine.prompt_tokens(turn)[: first.prompt_tokens] == engine.prompt_tokens(Generate(1, STORY))
    text2, second, computed2 = run(engine, turn)
    # At least the first prompt is reused (the answer too, as far as its text re-tokenizes to
    # the tokens generated), and only the rest is computed.
    assert first.prompt_tokens <= second.cached_tokens < second.prompt_tokens
    assert computed2 == second.prompt_tokens - second.cached_tokens
    text_alone, alone, computed_alone = run(uncached, turn)
    assert text2 == text_alone
    assert second == msgspec.structs.replace(alone, cached_tokens=second.cached_tokens)
    assert (alone.cached_tokens, computed_alone) == (0, alone.prompt_tokens)


def test_a_repeated_prompt_still_computes_its_last_token(engine, uncached) -> None:
    request = Generate(1, STORY, params())
    text, first, _ = run(engine, request)
    again, second, computed = run(engine, request)
    # Cached under prompt + answer; the generator needs one prompt token to start from.
    assert (second.cached_tokens, computed) == (first.prompt_tokens - 1, 1)
    assert again == text == run(uncached, request)[0]


def test_an_exact_hit_gives_back_its_last_token(tiny_model: Path, uncached) -> None:
    # A request cancelled after one 4-token prefill chunk leaves a cache of exactly 4 tokens.
    engine = MlxEngine("tiny", str(tiny_model), EngineOptions(prefill_step_size=4))
    prompt = engine.prompt_tokens(Generate(0, STORY))
    transcript = Transcript()
    transcript.add(engine.submit(Generate(1, prompt_ids=prompt, params=params())))
    transcript.add(engine.step())
    transcript.add(engine.cancel(1))
    assert len(engine.prompt_cache) == 1
    request = Generate(2, prompt_ids=prompt[:4], params=params())
    text, finished, computed = run(engine, request)
    assert (finished.cached_tokens, computed) == (3, 1)
    assert text == run(uncached, request)[0]
    # The whole prompt starts from the same 4 tokens (request 2's entry, trimmed back to them).
    text, finished, _ = run(engine, Generate(3, prompt_ids=prompt, params=params()))
    assert finished.cached_tokens >= 4
    assert text == run(uncached, Generate(3, prompt_ids=prompt, params=params()))[0]


def test_requests_ended_by_a_stop_string_leave_their_cache(engine, uncached) -> None:
    full, _, _ = run(uncached, Generate(1, STORY, params()))
    stop = full[10:13]
    text, finished, _ = run(engine, Generate(1, STORY, params(stop=[stop])))
    assert finished.finish_reason == "stop" and finished.completion_tokens < 24
    assert len(engine.prompt_cache) == 1
    turn = Generate(2, follow_up(STORY, text), params())
    text2, second, _ = run(engine, turn)
    assert second.cached_tokens >= finished.prompt_tokens
    assert text2 == run(uncached, turn)[0]


def test_an_unrelated_prompt_reuses_nothing(engine, uncached) -> None:
    run(engine, Generate(1, STORY, params()))
    request = Generate(2, prompt="Once upon a time", params=params())  # no chat template, no BOS
    text, finished, computed = run(engine, request)
    assert (finished.cached_tokens, computed) == (0, finished.prompt_tokens)
    assert text == run(uncached, request)[0]


def test_zero_entries_disables_it(uncached) -> None:
    for rid in (1, 2):
        _, finished, computed = run(uncached, Generate(rid, STORY, params()))
        assert (finished.cached_tokens, computed) == (0, finished.prompt_tokens)
    assert len(uncached.prompt_cache) == 0 and uncached.prompt_cache.nbytes == 0


def test_entries_stay_within_the_bound_least_recent_dropped_and_trim_empties_it(tiny_model: Path) -> None:
    engine = MlxEngine("tiny", str(tiny_model), EngineOptions(prompt_cache_entries=2))
    for rid, prompt in enumerate(UNRELATED):
        run(engine, Generate(rid, prompt_ids=prompt, params=params(8)))
        assert len(engine.prompt_cache) == min(rid + 1, 2)
    assert run(engine, Generate(10, prompt_ids=UNRELATED[0], params=params(8)))[1].cached_tokens == 0  # dropped
    assert run(engine, Generate(11, prompt_ids=UNRELATED[3], params=params(8)))[1].cached_tokens == 11  # kept
    assert engine.prompt_cache.nbytes > 0
    engine.trim()
    assert len(engine.prompt_cache) == 0 and engine.prompt_cache.nbytes == 0
    assert run(engine, Generate(12, prompt_ids=UNRELATED[3], params=params(8)))[1].cached_tokens == 0


def test_bytes_stay_within_the_bound(tiny_model: Path) -> None:
    engine = MlxEngine("tiny", str(tiny_model))
    run(engine, Generate(0, prompt_ids=UNRELATED[0], params=params(8)))
    one_entry = engine.prompt_cache.nbytes  # every UNRELATED request leaves one of this size
    limit = one_entry * 3 // 2
    engine = MlxEngine("tiny", str(tiny_model), EngineOptions(prompt_cache_bytes=limit))
    for rid, prompt in enumerate(UNRELATED):
        run(engine, Generate(rid, prompt_ids=prompt, params=params(8)))
        assert len(engine.prompt_cache) == 1 and engine.prompt_cache.nbytes == one_entry <= limit


def test_a_cache_that_cannot_step_back_is_used_only_as_a_shorter_prefix(tiny_model: Path) -> None:
    # A rotating cache that has wrapped around (max_kv_size) cannot be trimmed: a prompt that
    # ends inside it, or at its very end, must be computed from scratch. (The demo llama makes
    # plain caches whatever max_kv_size says, so this drives the cache with the model directly.)
    model, _ = load(str(tiny_model))
    tokens = UNRELATED[0]
    cache = [RotatingKVCache(max_size=8, keep=4) for _ in model.layers]
    model(mx.array([tokens]), cache=cache)
    mx.eval([c.state for c in cache])
    prompts = PromptCache(max_entries=4, max_bytes=1 << 30)
    prompts.store(tokens, cache)
    assert prompts.fetch(tokens) == (None, 0)  # exact: it would have to give back a token
    assert prompts.fetch(tokens[:6]) == (None, 0)  # inside it
    longer, cached = prompts.fetch([*tokens, 7, 8])
    assert cached == len(tokens) and longer is not None and longer is not cache


def test_a_follow_up_turn_runs_solo_from_its_cached_prefix_and_can_move_into_the_batch(engine, uncached) -> None:
    # No penalties: the follow-up runs solo from the cached prefix; a second request then moves
    # it into the batch, prefix and all. Its answer must be the one without any cache.
    text, _, _ = run(engine, Generate(1, STORY, params()))
    turn = Generate(2, follow_up(STORY, text), params(max_tokens=40))
    transcript = Transcript()
    transcript.add(engine.submit(turn))
    assert engine._solo is not None and engine._solo.active
    for _ in range(8):
        transcript.add(engine.step())
    transcript.add(engine.submit(Generate(3, [ChatMessage("user", "Unrelated.")], params())))
    assert not engine._solo.active
    drain(engine, transcript)
    alone_text, alone, _ = run(uncached, turn)
    finished = transcript.terminal(2)
    assert isinstance(finished, Finished) and finished.cached_tokens > 0
    assert transcript.text(2) == alone_text
    assert finished.completion_tokens == alone.completion_tokens
