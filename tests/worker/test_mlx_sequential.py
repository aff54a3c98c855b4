"""The engine's one-at-a-time path, for KV-cache quantization and a draft model (mlx-lm's batch
generator has neither): same contract, same text handling, real mlx-lm generation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from opta_lmx.config import EngineOptions
from opta_lmx.proto import Failed, Finished, Started
from opta_lmx.worker.engines.mlx import MlxEngine
from tests.worker.test_mlx_engine import EOS_PROMPT, PROMPTS, Transcript, drain, generate


@pytest.fixture(scope="module")
def batched(tiny_model: Path) -> MlxEngine:
    return MlxEngine("tiny", str(tiny_model), EngineOptions(prompt_cache_entries=0))


def outputs(engine: MlxEngine, contents: list[str], **params: object) -> Transcript:
    transcript = Transcript()
    for rid, content in enumerate(contents):
        (started,) = transcript.add(engine.submit(generate(rid, content, **params)))
        assert isinstance(started, Started)
    drain(engine, transcript)
    for rid in range(len(contents)):
        transcript.check(rid)
    return transcript


def test_a_draft_model_gives_the_models_own_greedy_output(tiny_model: Path, batched: MlxEngine) -> None:
    # The tiny model drafting for itself: every proposal is accepted, and the output must still
    # be exactly the model's greedy output, request by request, with the same finish reasons.
    engine = MlxEngine("tiny", str(tiny_model), EngineOptions(draft_model=str(tiny_model), num_draft_tokens=4))
    contents = [PROMPTS[0], EOS_PROMPT, PROMPTS[3]]
    speculative = outputs(engine, contents, max_tokens=40)
    plain = outputs(batched, contents, max_tokens=40)
    for rid in range(len(contents)):
        assert speculative.text(rid) == plain.text(rid)
        assert speculative.terminal(rid) == plain.terminal(rid)
    assert speculative.terminal(1).finish_reason == "stop"


def test_requests_wait_their_turn_and_can_be_cancelled_waiting_or_running(tiny_model: Path) -> None:
    engine = MlxEngine("tiny", str(tiny_model), EngineOptions(draft_model=str(tiny_model)))
    transcript = Transcript()
    for rid in range(3):
        transcript.add(engine.submit(generate(rid, PROMPTS[rid], max_tokens=30)))
    for _ in range(5):
        transcript.add(engine.step())
    assert transcript.text(0) and not transcript.text(1)  # one at a time, in order
    transcript.add(engine.cancel(2))  # waiting
    transcript.add(engine.cancel(0))  # running
    drain(engine, transcript)
    assert transcript.terminal(0).finish_reason == "cancelled"
    assert transcript.terminal(2) == Finished(2, "cancelled", transcript.terminal(2).prompt_tokens, 0)
    assert transcript.terminal(1).finish_reason == "length" and transcript.terminal(1).completion_tokens == 30


def test_a_grammar_request_on_a_draft_engine_still_follows_its_schema(tiny_model: Path) -> None:
    engine = MlxEngine("tiny", str(tiny_model), EngineOptions(draft_model=str(tiny_model)))
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["n"], "additionalProperties": False}
    request = generate(1, "json", max_tokens=200, temperature=1.0, seed=3)
    transcript = Transcript()
    transcript.add(engine.submit(type(request)(1, request.messages, request.params, json_schema=json.dumps(schema))))
    drain(engine, transcript)
    assert transcript.terminal(1).finish_reason == "stop"
    jsonschema.validate(json.loads(transcript.text(1)), schema)


@pytest.fixture(scope="module")
def wide_heads(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with 2 heads of 32 instead of 4 of 16 (the same weight shapes): MLX
    quantizes in groups of at least 32, which must divide the head size."""
    path = tmp_path_factory.mktemp("wide") / "tiny-wide"
    shutil.copytree(tiny_model, path)
    config = json.loads((path / "config.json").read_text())
    config.update(num_attention_heads=2, num_key_value_heads=1)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_kv_quantization_is_applied(wide_heads: Path) -> None:
    contents = PROMPTS[:3]
    plain = outputs(MlxEngine("w", str(wide_heads), EngineOptions(prompt_cache_entries=0)), contents, max_tokens=48)
    def quantized(bits: int) -> Transcript:
        options = EngineOptions(kv_bits=bits, kv_group_size=32, quantized_kv_start=0)
        return outputs(MlxEngine("w", str(wide_heads), options), contents, max_tokens=48)

    eight, two = quantized(8), quantized(2)
    # The random model is chaotic, so any rounding shows sooner or later; 8 bits stays on the
    # unquantized path for far longer than 2 bits: the cache really is quantized, at the width asked.
    agree8 = [common_prefix(eight.text(r), plain.text(r)) for r in range(3)]
    agree2 = [common_prefix(two.text(r), plain.text(r)) for r in range(3)]
    assert min(agree8) > max(agree2), (agree8, agree2)  # seen: [116, 38, 36] against [0, 2, 0]


def common_prefix(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_seeds_and_stop_strings_work_on_the_sequential_path(tiny_model: Path) -> None:
    engine = MlxEngine("tiny", str(tiny_model), EngineOptions(draft_model=str(tiny_model)))
    params = dict(max_tokens=20, temperature=1.0, seed=5, logit_bias={2: -100.0})
    first = outputs(engine, [PROMPTS[1]], **params).text(0)
    assert outputs(engine, [PROMPTS[1]], **params).text(0) == first
    assert outputs(engine, [PROMPTS[1]], **{**params, "seed": 6}).text(0) != first
    greedy = outputs(engine, [PROMPTS[1]], max_tokens=30, temperature=0.0).text(0)
    stop = greedy[10:13]
    stopped = outputs(engine, [PROMPTS[1]], max_tokens=30, temperature=0.0, stop=[stop])
    assert stopped.terminal(0).finish_reason == "stop"
    assert stopped.text(0) == greedy[: greedy.index(stop)]


def test_a_failing_request_fails_alone_and_the_queue_goes_on(tiny_model: Path) -> None:
    from mlx_lm.generate import greedy_sampler

    from opta_lmx.worker.engines.mlx_sequential import SequenceFailed, SequentialGenerator

    engine = MlxEngine("tiny", str(tiny_model), EngineOptions(draft_model=str(tiny_model)))
    generator = SequentialGenerator(
        engine._model, stop_tokens=[[2]], prefill_step_size=512, kv_bits=None, kv_group_size=64, quantized_kv_start=0
    )

    def broken(tokens, logits):  # noqa: ANN001, ANN202 - a logits processor that always raises
        raise ValueError("broken processor")

    first, second = generator.insert(
        [[1, 5, 6], [1, 7, 8]], max_tokens=[4, 4], samplers=[greedy_sampler] * 2, logits_processors=[[broken], []]
    )
    with pytest.raises(SequenceFailed) as failed:
        generator.next()
    assert failed.value.uid == first and "broken processor" in str(failed.value)
    tokens = [r for _ in range(4) for r in generator.next()[1]]
    assert [r.uid for r in tokens] == [second] * 4 and tokens[-1].finish_reason == "length"


def test_the_engine_fails_only_the_request_whose_generation_raised(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = MlxEngine("tiny", str(tiny_model), EngineOptions(draft_model=str(tiny_model)))
    start = engine._batch._start

    def start_or_fail(sequence):  # noqa: ANN001, ANN202 - as a model whose cache cannot roll back fails
        if sequence.uid == 0:
            raise ValueError("Speculative decoding requires a trimmable prompt cache")
        return start(sequence)

    monkeypatch.setattr(engine._batch, "_start", start_or_fail)
    transcript = outputs_allowing_failures(engine, [PROMPTS[0], PROMPTS[1]], max_tokens=10)
    failed = transcript.terminal(0)
    assert isinstance(failed, Failed) and failed.code == "engine_error" and "trimmable" in failed.message
    assert transcript.terminal(1).finish_reason == "length" and engine.active == 0


def outputs_allowing_failures(engine: MlxEngine, contents: list[str], **params: object) -> Transcript:
    transcript = Transcript()
    for rid, content in enumerate(contents):
        transcript.add(engine.submit(generate(rid, content, **params)))
    drain(engine, transcript)
    return transcript
