"""Conversations that share a beginning (agent sessions with one system prompt and tool list) on
the real tiny model: the shared part is computed once, whichever conversation made it, finished or
still generating, and answers are the same as without any cache.

Computed tokens are counted at the model: every token fed to its forward pass, whatever the
generator, batch rows included (a batch's padding would count too). Each generated token is fed
once (the last one too), so the prompt tokens computed are the fed ones less the completions.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from opta_lmx.config import EngineOptions
from opta_lmx.proto import ChatMessage, Finished, Generate, Started
from opta_lmx.worker.engines.mlx import MlxEngine
from opta_lmx.worker.engines.mlx_kv_reuse import MIN_SHARED
from tests.worker.test_mlx_engine import Transcript, drain
from tests.worker.test_mlx_prompt_cache import params

SYSTEM = "You are a coding agent. " + " ".join(f"Tool {i} reads file number {i} and returns it." for i in range(40))


def session(user: str) -> list[ChatMessage]:
    return [ChatMessage("system", SYSTEM), ChatMessage("user", user)]


@contextmanager
def counting(engine: MlxEngine) -> Iterator[list[int]]:
    """Counts the tokens fed to the model (batch rows included) while the block runs."""
    fed = [0]
    model_class = type(engine._model)
    forward = model_class.__call__

    def count(self, inputs, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        fed[0] += inputs.size
        return forward(self, inputs, *args, **kwargs)

    model_class.__call__ = count
    try:
        yield fed
    finally:
        model_class.__call__ = forward


def shared_length(engine: MlxEngine, a: Generate, b: Generate) -> int:
    x, y = engine.prompt_tokens(a), engine.prompt_tokens(b)
    return next(i for i, (p, q) in enumerate(zip(x, y)) if p != q)


@pytest.fixture(scope="module")
def uncached(tiny_model: Path) -> MlxEngine:
    return MlxEngine("tiny", str(tiny_model), EngineOptions(prompt_cache_entries=0))


def answer_alone(engine: MlxEngine, request: Generate) -> str:
    transcript = Transcript()
    transcript.add(engine.submit(request))
    drain(engine, transcript)
    return transcript.text(request.request_id)


def test_a_new_session_starts_from_a_running_sessions_system_prompt(tiny_model: Path, uncached) -> None:
    engine = MlxEngine("tiny", str(tiny_model))
    first, second = Generate(1, session("Fix the bug."), params(24)), Generate(2, session("Add a test."), params(24))
    shared = shared_length(engine, first, second)
    assert shared > 300  # the system prompt, rendered
    transcript = Transcript()
    with counting(engine) as fed:
        transcript.add(engine.submit(first))
        while not transcript.text(1):  # its prompt is done once it has a token
            transcript.add(engine.step())
        assert not transcript.ended(1)
        started = transcript.add(engine.submit(second))[0]
        drain(engine, transcript)
    a, b = transcript.terminal(1), transcript.terminal(2)
    assert isinstance(a, Finished) and isinstance(b, Finished)
    assert isinstance(started, Started) and started.cached_tokens == b.cached_tokens == shared
    computed = fed[0] - a.completion_tokens - b.completion_tokens
    # The first prompt, the second's own end, and the first's last token once more: it ran solo
    # until the second came, and the batch it moved into feeds its last token again.
    assert computed == a.prompt_tokens + (b.prompt_tokens - shared) + 1
    assert transcript.text(2) == answer_alone(uncached, second)
    assert transcript.text(1) == answer_alone(uncached, first)


def test_sessions_arriving_together_prefill_the_shared_prompt_once(tiny_model: Path, uncached) -> None:
    engine = MlxEngine("tiny", str(tiny_model))
    users = ["Fix bug one.", "Fix bug two.", "Fix bug six.", "Fix bug ten."]
    requests = [Generate(i, session(u), params(16)) for i, u in enumerate(users)]
    prompts = [engine.prompt_tokens(r) for r in requests]
    shared = shared_length(engine, requests[0], requests[1])
    assert all(p[:shared] == prompts[0][:shared] for p in prompts) and shared > 300
    transcript = Transcript()
    with counting(engine) as fed:
        for request in requests:  # all before the first step: nothing is cached yet
            transcript.add(engine.submit(request))
        drain(engine, transcript)
    finished = [transcript.terminal(r.request_id) for r in requests]
    assert all(isinstance(f, Finished) for f in finished)
    assert [f.cached_tokens for f in finished] == [0, shared, shared, shared]
    computed = fed[0] - sum(f.completion_tokens for f in finished)
    # The first prompt whole, then only what each other one adds (padded to the longest of them
    # in their shared prefill batch), and the first's last token again as it moves from its solo
    # path into the batch; without sharing it would be at least 4 x shared.
    rest = max(len(p) - shared for p in prompts)
    assert computed <= len(prompts[0]) + 3 * rest + 1 < 2 * shared
    for request in requests:
        assert transcript.text(request.request_id) == answer_alone(uncached, request)


def test_a_short_shared_beginning_is_not_waited_for(tiny_model: Path) -> None:
    # Two unrelated chats share only the template's first tokens: the second starts at once.
    engine = MlxEngine("tiny", str(tiny_model))
    a = Generate(1, [ChatMessage("user", SYSTEM)], params(8))
    b = Generate(2, [ChatMessage("user", "Hello there.")], params(8))
    assert shared_length(engine, a, b) < MIN_SHARED
    transcript = Transcript()
    transcript.add(engine.submit(a))
    transcript.add(engine.submit(b))
    assert not engine._parked
    drain(engine, transcript)
    assert transcript.terminal(2).cached_tokens == 0


def test_a_waiting_session_can_be_cancelled_and_one_whose_leader_is_cancelled_goes_on(
    tiny_model: Path, uncached
) -> None:
    engine = MlxEngine("tiny", str(tiny_model))
    requests = [Generate(i, session(f"Task {i}."), params(8)) for i in range(3)]
    transcript = Transcript()
    for request in requests:
        transcript.add(engine.submit(request))
    assert len(engine._parked) == 2
    transcript.add(engine.cancel(1))  # a parked one
    transcript.add(engine.cancel(0))  # the one the other waits for
    assert len(engine._parked) == 1 and engine.active == 1
    drain(engine, transcript)
    assert [type(transcript.terminal(i)).__name__ for i in range(3)] == ["Finished"] * 3
    assert transcript.terminal(1).finish_reason == transcript.terminal(0).finish_reason == "cancelled"
    assert transcript.text(2) == answer_alone(uncached, requests[2])


def test_the_byte_bound_holds_with_shared_prefixes(tiny_model: Path) -> None:
    probe = MlxEngine("tiny", str(tiny_model))
    answer_alone(probe, Generate(0, session("Fix the bug."), params(24)))
    one = probe.prompt_cache.nbytes  # one session's cache
    engine = MlxEngine("tiny", str(tiny_model), EngineOptions(prompt_cache_bytes=one * 3 // 2))
    transcript = Transcript()
    for i in range(4):
        transcript.add(engine.submit(Generate(i, session(f"Fix bug {i} now."), params(24))))
        for _ in range(3):
            transcript.add(engine.step())
            assert engine.prompt_cache.nbytes <= one * 3 // 2
    drain(engine, transcript)
    assert 0 < engine.prompt_cache.nbytes <= one * 3 // 2
    assert all(transcript.terminal(i).cached_tokens > 300 for i in (1, 2, 3))
