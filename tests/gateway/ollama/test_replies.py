"""Ollama's reply objects: streamed pieces, the done object and its metrics, error lines."""

from __future__ import annotations

import json
import time

from opta_lmx.errors import GenerationTimeout
from opta_lmx.gateway.ollama.replies import STREAM, Reply, Timer, done_reason, error_line, timestamp
from opta_lmx.proto import Finished, TokenChunk, TokenLogprob, TokenLogprobs, ToolCall

FINISHED = Finished(1, "length", prompt_tokens=12, completion_tokens=3)


def test_chat_and_generate_put_the_text_in_their_own_field() -> None:
    chunk = TokenChunk(1, "Hi", 1, reasoning="hmm")
    chat = Reply("chat", "m").piece(chunk)
    assert chat is not None and chat["message"] == {"role": "assistant", "content": "Hi", "thinking": "hmm"}
    assert chat["done"] is False and chat["model"] == "m"
    generate = Reply("generate", "m").piece(chunk)
    assert generate is not None and (generate["response"], generate["thinking"]) == ("Hi", "hmm")


def test_hidden_thinking_sends_nothing_for_a_reasoning_only_piece() -> None:
    reply = Reply("chat", "m", thinking=False)
    assert reply.piece(TokenChunk(1, "", 1, reasoning="hmm")) is None
    piece = reply.piece(TokenChunk(1, "ok", 1, reasoning="hmm"))
    assert piece is not None and "thinking" not in piece["message"]


def test_tool_calls_carry_object_arguments_and_running_indexes() -> None:
    reply = Reply("chat", "m")
    first = reply.piece(TokenChunk(1, "", 1, tool_calls=[ToolCall("call_a", "add", '{"a": 1}')]))
    second = reply.piece(TokenChunk(1, "", 1, tool_calls=[ToolCall("call_b", "sub", "{}")]))
    assert first is not None and second is not None
    assert first["message"]["tool_calls"] == [
        {"id": "call_a", "function": {"index": 0, "name": "add", "arguments": {"a": 1}}}
    ]
    assert second["message"]["tool_calls"][0]["function"]["index"] == 1


def test_done_has_the_reason_counts_and_durations_in_nanoseconds() -> None:
    timer = Timer()
    time.sleep(0.01)
    timer.mark_loaded()
    time.sleep(0.01)
    timer.mark_token()
    timer.mark_token()  # only the first token counts
    time.sleep(0.01)
    done = Reply("chat", "m").done(FINISHED, timer, "whole text", "", [])
    assert done["done"] is True and done["done_reason"] == "length"
    assert (done["prompt_eval_count"], done["eval_count"]) == (12, 3)
    assert done["message"]["content"] == "whole text"
    for name in ("load_duration", "prompt_eval_duration", "eval_duration"):
        assert 10_000_000 <= done[name] < done["total_duration"]
    assert done["total_duration"] >= done["load_duration"] + done["prompt_eval_duration"] + done["eval_duration"]


def test_done_reason_is_stop_unless_the_limit_ended_it() -> None:
    assert done_reason(FINISHED) == "length"
    for reason in ("stop", "tool_calls"):
        assert done_reason(Finished(1, reason, 1, 1)) == "stop"


def test_logprobs_only_when_asked() -> None:
    entry = TokenLogprobs("a", -0.5, [97], [TokenLogprob("a", -0.5, [97]), TokenLogprob("b", -1.0, [98])])
    chunk = TokenChunk(1, "a", 1, logprobs=[entry])
    asked = Reply("generate", "m", logprobs=True).piece(chunk)
    assert asked is not None and asked["logprobs"] == [
        {
            "token": "a",
            "logprob": -0.5,
            "bytes": [97],
            "top_logprobs": [
                {"token": "a", "logprob": -0.5, "bytes": [97]},
                {"token": "b", "logprob": -1.0, "bytes": [98]},
            ],
        }
    ]
    unasked = Reply("generate", "m").piece(chunk)
    assert unasked is not None and "logprobs" not in unasked


def test_load_and_unload_answers() -> None:
    status = Reply("chat", "m").status("unload")
    assert status["done"] is True and status["done_reason"] == "unload"
    assert status["message"] == {"role": "assistant", "content": ""}


def test_error_lines_and_the_stream_format() -> None:
    line = error_line(GenerationTimeout("No output\u2028for 1s"))
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and b"\xe2\x80\xa8" not in line
    assert json.loads(line) == {"error": "No output\u2028for 1s"}
    assert STREAM.media_type == "application/x-ndjson" and STREAM.keepalive is None


def test_timestamps_are_rfc3339_utc() -> None:
    assert timestamp(0) == "1970-01-01T00:00:00Z"
    assert timestamp().endswith("Z")
