import pytest

from opta_lmx.worker.reasoning import ReasoningSplitter, starts_inside


def split(pieces: list[str], inside: bool = False) -> tuple[str, str]:
    splitter = ReasoningSplitter("<think>", "</think>", inside)
    reasoning = content = ""
    for piece in pieces:
        r, c = splitter.feed(piece)
        reasoning, content = reasoning + r, content + c
    r, c = splitter.flush()
    return reasoning + r, content + c


@pytest.mark.parametrize(
    ("pieces", "inside", "expected"),
    [
        (["hello"], False, ("", "hello")),
        (["<think>", "hmm", "</think>", "answer"], False, ("hmm", "answer")),
        (["<thi", "nk>why</th", "ink>so"], False, ("why", "so")),  # markers split across pieces
        (["pondering", "</think>", "done"], True, ("pondering", "done")),  # the prompt opened it
        (["still thinking"], True, ("still thinking", "")),  # cut off before the end marker
        (["a<think>b</think>c<think>d</think>e"], False, ("bd", "ace")),
        (["x </thin"], True, ("x </thin", "")),  # a false start of a marker is released at the end
    ],
)
def test_split(pieces: list[str], inside: bool, expected: tuple[str, str]) -> None:
    assert split(pieces, inside) == expected


def test_partial_marker_is_held_back_until_decided() -> None:
    splitter = ReasoningSplitter("<think>", "</think>", inside=True)
    assert splitter.feed("abc</") == ("abc", "")
    assert splitter.feed("think>") == ("", "")
    assert splitter.feed("ok") == ("", "ok")


def test_prompt_that_opens_the_block() -> None:
    assert starts_inside("<|im_start|>assistant\n<think>\n", "<think>", "</think>")
    assert not starts_inside("<think>a</think> <|im_start|>assistant\n", "<think>", "</think>")


def test_engine_sends_thinking_to_reasoning(tmp_path) -> None:
    from opta_lmx.demo.builder import build_demo_model
    from opta_lmx.proto import ChatMessage, Generate, SamplingParams, TokenChunk
    from opta_lmx.worker.engines.mlx import MlxEngine

    engine = MlxEngine("thinker", str(build_demo_model(tmp_path / "thinker", "tiny", thinking=True)))
    close = engine._tokenizer.convert_tokens_to_ids("</think>")

    def run(**params: object) -> tuple[str, str]:
        request = Generate(1, [ChatMessage("user", "why?")], SamplingParams(temperature=0.0, **params))  # type: ignore[arg-type]
        messages = list(engine.submit(request))
        while engine.active:
            messages += engine.step()
        chunks = [m for m in messages if isinstance(m, TokenChunk)]
        return "".join(c.reasoning for c in chunks), "".join(c.text for c in chunks)

    # The template opened the thinking block, and this model never closes it: all reasoning.
    reasoning, content = run(max_tokens=12)
    assert reasoning and content == ""
    # Forced to close it at once: no reasoning, and the marker itself is never emitted (the
    # later forced "</think>" tokens are plain answer text once the block is closed).
    reasoning, content = run(max_tokens=4, logit_bias={close: 100.0})
    assert (reasoning, content) == ("", "</think>" * 3)
