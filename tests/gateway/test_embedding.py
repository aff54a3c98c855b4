"""The gateway's side of embeddings and rerank without a worker: input shapes, the vectors' two
encodings, the ranking."""

from __future__ import annotations

import base64
import struct

import pytest

from opta_lmx.errors import InvalidRequest
from opta_lmx.gateway.embedding import Vectors
from opta_lmx.gateway.openai.embeddings import MAX_INPUTS, embedding_list, inputs
from opta_lmx.gateway.rerank import ranking

ROWS = [[0.5, -1.25, 3.0], [0.0, 2.5, -0.125]]
VECTORS = Vectors("m", struct.pack("<6f", *ROWS[0], *ROWS[1]), 3, 7, "")


def test_vectors_as_floats_and_as_base64_float32_bytes() -> None:
    assert VECTORS.count == 2
    assert VECTORS.floats() == ROWS
    assert [struct.unpack("<3f", base64.b64decode(row)) for row in VECTORS.base64()] == [tuple(r) for r in ROWS]
    listing = embedding_list(VECTORS, "float")
    assert listing["data"] == [{"object": "embedding", "index": i, "embedding": r} for i, r in enumerate(ROWS)]
    assert listing["usage"] == {"prompt_tokens": 7, "total_tokens": 7} and listing["model"] == "m"


@pytest.mark.parametrize(
    ("value", "fields"),
    [
        ("a", {"texts": ["a"]}),
        (["a", "b"], {"texts": ["a", "b"]}),
        ([1, 2], {"token_ids": [[1, 2]]}),
        ([[1], [2, 3]], {"token_ids": [[1], [2, 3]]}),
    ],
)
def test_input_shapes(value: object, fields: dict) -> None:
    assert inputs(value) == fields  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["", [], ["a", ""], ["a", 1], [[1], []], [[1], "a"], ["a"] * (MAX_INPUTS + 1)])
def test_bad_inputs(value: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        inputs(value)  # type: ignore[arg-type]
    assert info.value.param == "input"


def test_ranking_is_best_first_stable_on_ties_and_cut_at_top_n() -> None:
    scores = Vectors("m", struct.pack("<4f", 0.25, 0.75, 0.25, -0.5), 1, 12, "cosine")
    texts = ["a", "b", "c", "d"]
    reply = ranking(scores, texts, None, True)
    assert [r["index"] for r in reply["results"]] == [1, 0, 2, 3]  # type: ignore[index]
    assert reply["results"][0] == {"index": 1, "relevance_score": 0.75, "document": {"text": "b"}}  # type: ignore[index]
    assert reply["method"] == "cosine" and reply["usage"] == {"prompt_tokens": 12, "total_tokens": 12}
    top = ranking(scores, texts, 2, False)
    assert top["results"] == [{"index": 1, "relevance_score": 0.75}, {"index": 0, "relevance_score": 0.25}]
