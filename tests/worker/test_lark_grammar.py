"""Lark grammars (``Generate.grammar``) on the real engine and the tiny random-weight model: the
model never writes a patch by itself, so every output in the grammar's language is the grammar's
doing. Each output is checked with a regular expression of the same language, written apart
(tests/support/grammars.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from opta_lmx.proto import ChatMessage, Failed, Finished, Generate, SamplingParams
from opta_lmx.worker.engines.mlx import MlxEngine
from tests.support.grammars import PATCH, PATCH_GRAMMAR
from tests.worker.test_mlx_engine import Transcript, drain

MAX_TOKENS = 600


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> MlxEngine:
    return MlxEngine("tiny", str(tiny_model))


def ask(rid: int, grammar: str, temperature: float = 1.0) -> Generate:
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=temperature, seed=rid)
    return Generate(rid, [ChatMessage("user", "Write a patch.")], params, grammar=grammar)


def test_output_is_in_the_grammars_language_for_8_seeds_in_one_batch(engine: MlxEngine) -> None:
    transcript = Transcript()
    for rid in range(8):
        transcript.add(engine.submit(ask(rid, PATCH_GRAMMAR)))
    drain(engine, transcript)
    for rid in range(8):
        transcript.check(rid)
        finished = transcript.terminal(rid)
        assert isinstance(finished, Finished) and finished.finish_reason == "stop", finished
        assert PATCH.fullmatch(transcript.text(rid)), transcript.text(rid)


def test_greedy_output_is_in_the_language_too(engine: MlxEngine) -> None:
    transcript = Transcript()
    transcript.add(engine.submit(ask(1, PATCH_GRAMMAR, temperature=0.0)))
    drain(engine, transcript)
    assert transcript.terminal(1).finish_reason == "stop"
    assert PATCH.fullmatch(transcript.text(1)), transcript.text(1)


def test_a_grammar_that_does_not_compile_fails_the_request_before_it_starts(engine: MlxEngine) -> None:
    for grammar in ("start: foo(", "begin: \"a\"", "start: undefined_rule"):
        (failed,) = engine.submit(ask(1, grammar))
        assert isinstance(failed, Failed) and failed.code == "invalid_request", failed
        assert failed.message
        assert engine.active == 0
