"""Constrained decoding on the real engine (tiny random-weight model): JSON that validates against
random schemas, and tool calls forced by ``tool_choice``. The model never writes JSON by itself,
so every valid output here is the grammar's doing."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import jsonschema
import pytest

from opta_lmx.proto import ChatMessage, Failed, Finished, Generate, SamplingParams, TokenChunk, Tool
from opta_lmx.worker.engines.mlx import MlxEngine
from tests.support.schemas import random_schema
from tests.worker.test_mlx_engine import Transcript, drain

# Room enough for the largest random schema's output; hitting it would fail the test ("length").
MAX_TOKENS = 1500

ADD = Tool(
    "add",
    "Adds two integers.",
    {
        "type": "object",
        "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99}, "b": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
)
SEARCH = Tool(
    "search",
    "Searches the web.",
    {"type": "object", "properties": {"query": {"type": "string", "maxLength": 20}}, "required": ["query"], "additionalProperties": False},
)


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> MlxEngine:
    return MlxEngine("tiny", str(tiny_model))


def run(engine: MlxEngine, *requests: Generate) -> Transcript:
    transcript = Transcript()
    for request in requests:
        transcript.add(engine.submit(request))
    drain(engine, transcript)
    return transcript


def ask(rid: int, content: str = "Answer in JSON.", **fields: object) -> Generate:
    params = fields.pop("params", SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, seed=rid))
    return Generate(rid, [ChatMessage("user", content)], params, **fields)  # type: ignore[arg-type]


def test_json_schema_output_validates_for_20_random_schemas_and_seeds(engine: MlxEngine) -> None:
    rng = random.Random(7)
    schemas = [random_schema(rng) for _ in range(20)]
    # All 20 in one batch: each row has its own grammar, and the batch must not mix them up.
    transcript = run(engine, *(ask(rid, json_schema=json.dumps(schema)) for rid, schema in enumerate(schemas)))
    for rid, schema in enumerate(schemas):
        transcript.check(rid)
        finished = transcript.terminal(rid)
        assert isinstance(finished, Finished) and finished.finish_reason == "stop", (schema, finished)
        jsonschema.validate(json.loads(transcript.text(rid)), schema)


def test_greedy_json_schema_output_validates_too(engine: MlxEngine) -> None:
    rng = random.Random(11)
    for rid in range(5):
        schema = random_schema(rng)
        params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
        transcript = run(engine, ask(rid, json_schema=json.dumps(schema), params=params))
        assert transcript.terminal(rid).finish_reason == "stop"
        jsonschema.validate(json.loads(transcript.text(rid)), schema)


def test_json_object_mode_gives_an_object(engine: MlxEngine) -> None:
    # Any object may nest without bound, so a random model may run out of tokens: those that
    # ended must parse, and most should end.
    transcript = run(engine, *(ask(rid, json_schema='{"type": "object"}') for rid in range(6)))
    ended = [rid for rid in range(6) if transcript.terminal(rid).finish_reason == "stop"]
    assert len(ended) >= 3, [transcript.terminal(rid) for rid in range(6)]
    for rid in range(6):
        assert transcript.text(rid).startswith("{")
    for rid in ended:
        assert isinstance(json.loads(transcript.text(rid)), dict)


def test_an_invalid_schema_fails_the_request_before_it_starts(engine: MlxEngine) -> None:
    for schema in ('{"type": "objekt"}', "not json", "[1, 2]"):
        (failed,) = engine.submit(ask(1, json_schema=schema))
        assert isinstance(failed, Failed) and failed.code == "invalid_request", failed
        assert engine.active == 0


def calls_of(transcript: Transcript, rid: int) -> list:
    return [c for m in transcript.messages[rid] if isinstance(m, TokenChunk) for c in m.tool_calls]


def test_required_tool_choice_gives_valid_calls_of_the_given_tools(engine: MlxEngine) -> None:
    transcript = run(engine, *(ask(rid, "Add 2 and 3.", tools=[ADD, SEARCH], tool_choice="required") for rid in range(8)))
    schemas = {t.name: t.parameters for t in (ADD, SEARCH)}
    for rid in range(8):
        transcript.check(rid)
        assert transcript.terminal(rid).finish_reason == "tool_calls", transcript.terminal(rid)
        calls = calls_of(transcript, rid)
        assert calls and transcript.text(rid) == ""
        for call in calls:
            assert call.id.startswith("call_")
            jsonschema.validate(json.loads(call.arguments), schemas[call.name])
    assert len({c.id for rid in range(8) for c in calls_of(transcript, rid)}) == sum(len(calls_of(transcript, r)) for r in range(8))


def test_one_named_tool_without_parallel_calls_gives_exactly_that_call(engine: MlxEngine) -> None:
    transcript = run(engine, *(ask(rid, tools=[SEARCH], tool_choice="required", parallel_tool_calls=False) for rid in range(4)))
    for rid in range(4):
        (call,) = calls_of(transcript, rid)
        assert call.name == "search"
        jsonschema.validate(json.loads(call.arguments), SEARCH.parameters)


def test_auto_tool_choice_leaves_the_model_free(engine: MlxEngine) -> None:
    # The random model does not call tools by itself: it answers with text, as without tools.
    params = SamplingParams(max_tokens=32, temperature=0.0)
    transcript = run(engine, ask(1, tools=[ADD], tool_choice="auto", params=params))
    assert transcript.text(1) and not calls_of(transcript, 1)
    assert transcript.terminal(1).finish_reason in ("stop", "length")


def test_required_tools_on_a_model_without_a_tool_format_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(tiny_model, plain)
    config_path = plain / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    config_path.write_text(json.dumps(config))
    engine = MlxEngine("plain", str(plain))
    (failed,) = engine.submit(ask(1, tools=[ADD], tool_choice="required"))
    assert isinstance(failed, Failed) and failed.code == "invalid_request" and "tool" in failed.message


def test_tool_schemas_with_defs_and_refs_are_enforced(engine: MlxEngine) -> None:
    # pydantic writes nested models as "$defs" and "$ref"s; they must resolve inside the tool.
    parameters = {
        "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["x"], "additionalProperties": False}},
        "type": "object",
        "properties": {"at": {"$ref": "#/$defs/Point"}},
        "required": ["at"],
        "additionalProperties": False,
    }
    tool = Tool("move", "Moves.", parameters)
    transcript = run(engine, *(ask(rid, tools=[tool, ADD], tool_choice="required", parallel_tool_calls=False) for rid in range(4)))
    for rid in range(4):
        (call,) = calls_of(transcript, rid)
        jsonschema.validate(json.loads(call.arguments), parameters if call.name == "move" else ADD.parameters)


def test_constrained_top_logprobs_leave_out_banned_tokens(engine: MlxEngine) -> None:
    params = SamplingParams(max_tokens=5, temperature=1.0, seed=1, logprobs=True, top_logprobs=20)
    transcript = run(engine, ask(1, json_schema='{"type": "object"}', params=params))
    entries = [e for m in transcript.messages[1] if isinstance(m, TokenChunk) for e in (m.logprobs or [])]
    assert entries and len(entries[0].top) < 20  # only "{" (and maybe whitespace) may start an object
    assert all(alt.logprob > float("-inf") for e in entries for alt in e.top)


@pytest.mark.parametrize("width", [600, 500])
def test_the_mask_fits_the_logits_whatever_the_configs_vocab_size(engine: MlxEngine, width: int) -> None:
    # Checkpoints pad the output layer past the tokenizer (or keep vocab_size in a sub-table):
    # the mask follows the logits it is applied to.
    import mlx.core as mx

    from opta_lmx.worker.engines.mlx_grammar import json_schema_grammar

    processor = engine._grammars.processor(json_schema_grammar('{"type": "object"}'))
    out = processor(mx.array([1]), mx.zeros((1, width)))
    allowed = [i for i, v in enumerate(out[0].tolist()) if v > float("-inf")]
    assert out.shape == (1, width)
    assert allowed and all(i < min(width, 512) for i in allowed)


def test_objects_that_omit_additional_properties_get_only_their_keys(engine: MlxEngine) -> None:
    # As Pydantic writes schemas: no "additionalProperties". Left open, a random model fills the
    # object with keys of its own until max_tokens.
    open_schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city"],
    }
    closed = {**open_schema, "additionalProperties": False}
    tool = Tool("forecast", None, open_schema)
    requests = [ask(rid, json_schema=json.dumps(open_schema)) for rid in range(4)]
    requests += [ask(rid, tools=[tool], tool_choice="required", parallel_tool_calls=False) for rid in range(4, 8)]
    transcript = run(engine, *requests)
    for rid in range(4):
        assert transcript.terminal(rid).finish_reason == "stop", transcript.terminal(rid)
        jsonschema.validate(json.loads(transcript.text(rid)), closed)
    for rid in range(4, 8):
        (call,) = calls_of(transcript, rid)
        jsonschema.validate(json.loads(call.arguments), closed)
