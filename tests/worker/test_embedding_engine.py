"""The embedding engine in-process: all-MiniLM-L6-v2 for what it computes, random-weight BERTs
(tests/support/bert.py) for cross-encoder scoring, pooling and Matryoshka mechanics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from opta_lmx.config import EngineOptions
from opta_lmx.proto import ChatMessage, Embed, Embeddings, Failed, Finished, FromWorker, Generate
from opta_lmx.worker.engines.base import Embedder, Refused
from opta_lmx.worker.engines.embedding import EmbeddingEngine
from opta_lmx.worker.engines.embedding_batches import BatchedEmbedder
from opta_lmx.engine_choice import resolve_engine
from tests.support.bert import HIDDEN, build_bert

CAT, KITTEN, STOCKS = "A cat sits on the mat", "A kitten rests on a rug", "Stock markets fell sharply today"


@pytest.fixture(scope="module")
def minilm(minilm_model: Path) -> EmbeddingEngine:
    return EmbeddingEngine("minilm", str(minilm_model))


def run(engine: BatchedEmbedder, *requests: Embed) -> dict[int, FromWorker]:
    """Submit every request, step until the engine is idle; the reply to each, by request id."""
    replies: list[FromWorker] = []
    for request in requests:
        replies += engine.embed(request)
    steps = 0
    while engine.active:
        replies += engine.step()
        steps += 1
        assert steps < 1000
    return {reply.request_id: reply for reply in replies}


def vectors(reply: FromWorker) -> np.ndarray:
    assert isinstance(reply, Embeddings), reply
    return np.frombuffer(reply.vectors, "<f4").reshape(-1, reply.dimensions)


def test_similar_sentences_are_close_and_unrelated_ones_far(minilm: EmbeddingEngine) -> None:
    rows = vectors(run(minilm, Embed(1, [CAT, KITTEN, STOCKS]))[1])
    assert rows.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)  # the model's Normalize module
    close, far = rows[0] @ rows[1], rows[0] @ rows[2]
    assert close > 0.5 and far < 0.2 and close - far > 0.4, (close, far)


def test_a_text_gets_the_same_vector_alone_or_in_a_mixed_batch(minilm: EmbeddingEngine) -> None:
    texts = [CAT, "Short.", "A much longer sentence, padded against in its batch, about a kitten on a rug."]
    alone = [vectors(run(minilm, Embed(i, [t]))[i])[0] for i, t in enumerate(texts)]
    # Two requests in the same steps: their inputs share forward passes, padded to the longest.
    together = run(minilm, Embed(10, texts[:2]), Embed(11, texts[2:]))
    batched = np.concatenate([vectors(together[10]), vectors(together[11])])
    np.testing.assert_allclose(batched, np.stack(alone), atol=1e-5)
    assert minilm.batches >= 1


def test_batch_bounds_split_a_request_without_changing_its_vectors(minilm_model: Path, minilm: EmbeddingEngine) -> None:
    texts = [CAT, KITTEN, STOCKS, "Short.", "One more."]
    small = EmbeddingEngine("minilm", str(minilm_model), EngineOptions(batch_size=2, prefill_step_size=20))
    split = vectors(run(small, Embed(1, texts))[1])
    assert small.batches == 3 and small.embedded == 5
    np.testing.assert_allclose(split, vectors(run(minilm, Embed(2, texts))[2]), atol=1e-5)


def test_token_ids_are_the_model_input_as_they_are(minilm: EmbeddingEngine) -> None:
    ids = minilm._tokenizer.encode(CAT).ids  # with [CLS] and [SEP], as a client's tokenizer gives them
    replies = run(minilm, Embed(1, [CAT]), Embed(2, token_ids=[ids]))
    np.testing.assert_allclose(vectors(replies[2]), vectors(replies[1]), atol=1e-5)
    assert replies[1].prompt_tokens == replies[2].prompt_tokens == len(ids)


def test_too_long_an_input_fails_naming_it_unless_truncated(minilm: EmbeddingEngine) -> None:
    long = "cat " * 300
    failed = run(minilm, Embed(1, [CAT, long]))[1]
    assert isinstance(failed, Failed) and failed.code == "context_length_exceeded"
    assert "Input 1 has 302 tokens" in failed.message and "256" in failed.message
    assert minilm.active == 0  # nothing of it was queued
    cut = run(minilm, Embed(2, [long], truncate=True))[2]
    assert isinstance(cut, Embeddings) and cut.prompt_tokens == 256
    ids = [101] + [4937] * 254 + [102]
    np.testing.assert_allclose(vectors(cut), vectors(run(minilm, Embed(3, token_ids=[ids]))[3]), atol=1e-5)


def test_bad_token_ids_and_dimensions_are_refused(minilm: EmbeddingEngine) -> None:
    bad_id = run(minilm, Embed(1, token_ids=[[101, 99999, 102]]))[1]
    assert isinstance(bad_id, Failed) and bad_id.code == "invalid_request" and "99999" in bad_id.message
    shorter = run(minilm, Embed(2, [CAT], dimensions=128))[2]
    assert isinstance(shorter, Failed) and shorter.code == "unsupported_parameter" and "Matryoshka" in shorter.message
    full = run(minilm, Embed(3, [CAT], dimensions=384))[3]
    assert isinstance(full, Embeddings) and full.dimensions == 384


def test_scores_for_a_query_are_cosine_similarities(minilm: EmbeddingEngine) -> None:
    replies = run(minilm, Embed(1, [CAT, KITTEN, STOCKS]), Embed(2, [STOCKS, KITTEN], query=CAT))
    rows, scores = vectors(replies[1]), vectors(replies[2])
    assert replies[2].method == "cosine" and scores.shape == (2, 1)
    np.testing.assert_allclose(scores[:, 0], [rows[0] @ rows[2], rows[0] @ rows[1]], atol=1e-5)


def test_cancel_drops_queued_inputs_and_abort_fails_the_rest(minilm: EmbeddingEngine) -> None:
    assert minilm.embed(Embed(1, [CAT, KITTEN])) == [] and minilm.embed(Embed(2, [STOCKS])) == []
    assert minilm.cancel(1) == [Finished(1, "cancelled", 0, 0)]
    assert minilm.cancel(1) == []  # idempotent
    replies = minilm.step()
    assert [type(r) for r in replies] == [Embeddings] and replies[0].request_id == 2
    assert minilm.active == 0
    minilm.embed(Embed(3, [CAT]))
    assert minilm.abort_all("server_shutdown", "bye") == [Failed(3, "server_shutdown", "bye")]
    assert minilm.active == 0 and minilm.step() == []


def test_a_fault_in_a_forward_pass_fails_its_requests_and_the_queue_goes_on(
    minilm_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(batch: list) -> None:
        raise RuntimeError("out of memory")

    # Two inputs a pass: requests 1 and 2 share the first.
    small = EmbeddingEngine("minilm", str(minilm_model), EngineOptions(batch_size=2))
    monkeypatch.setattr(small, "_forward", broken)
    assert small.embed(Embed(1, [CAT])) == small.embed(Embed(2, [KITTEN, STOCKS])) == small.embed(Embed(3, [CAT])) == []
    failed = small.step()
    assert failed == [Failed(1, "engine_error", "RuntimeError: out of memory"), Failed(2, "engine_error", "RuntimeError: out of memory")]
    monkeypatch.undo()
    replies = run(small)
    assert [type(r) for r in replies.values()] == [Embeddings] and list(replies) == [3]


def check_writes_no_text(engine: BatchedEmbedder) -> None:
    """An embedding engine (either kind) refuses a generation, and is an ``Embedder``."""
    request = Generate(1, [ChatMessage("user", "hi")])
    [failed] = engine.submit(request)
    assert isinstance(failed, Failed) and failed.code == "invalid_request" and "embedding model" in failed.message
    with pytest.raises(Refused):
        engine.prompt_tokens(request)
    assert isinstance(engine, Embedder)


def test_an_embedding_model_writes_no_text(minilm: EmbeddingEngine) -> None:
    check_writes_no_text(minilm)


@pytest.fixture(scope="module")
def cross_encoder(minilm_model: Path, tmp_path_factory: pytest.TempPathFactory) -> EmbeddingEngine:
    path = build_bert(tmp_path_factory.mktemp("bert") / "cross", minilm_model, cross_encoder=True)
    return EmbeddingEngine("cross", str(path))


def test_a_cross_encoder_scores_pairs_alike_alone_or_batched(cross_encoder: EmbeddingEngine) -> None:
    docs = [KITTEN, STOCKS, "Short."]
    batched = run(cross_encoder, Embed(1, docs, query=CAT))[1]
    assert isinstance(batched, Embeddings) and batched.method == "cross_encoder" and batched.dimensions == 1
    scores = vectors(batched)[:, 0]
    assert np.all((scores > 0) & (scores < 1)) and len(set(scores.tolist())) == 3
    alone = [vectors(run(cross_encoder, Embed(2, [d], query=CAT))[2])[0, 0] for d in docs]
    np.testing.assert_allclose(scores, alone, atol=1e-5)
    # A pair, not two texts: the query's place (segment 0) and the document's (segment 1) matter.
    swapped = vectors(run(cross_encoder, Embed(3, [CAT], query=KITTEN))[3])[0, 0]
    assert abs(swapped - scores[0]) > 1e-4
    # query + document + [CLS] and two [SEP]s
    assert batched.prompt_tokens == sum(len(cross_encoder._tokenizer.encode(CAT, d).ids) for d in docs)


def test_a_cross_encoder_makes_no_embeddings_and_truncates_documents_only_when_asked(cross_encoder: EmbeddingEngine) -> None:
    refused = run(cross_encoder, Embed(1, [CAT]))[1]
    assert isinstance(refused, Failed) and "cross-encoder" in refused.message and "rerank" in refused.message
    long = "cat " * 100  # the random model's context is 64
    too_long = run(cross_encoder, Embed(2, [KITTEN, long], query=CAT))[2]
    assert isinstance(too_long, Failed) and too_long.code == "context_length_exceeded"
    assert "document 1" in too_long.message
    cut = run(cross_encoder, Embed(3, [long], query=CAT, truncate=True))[3]
    assert isinstance(cut, Embeddings) and cut.prompt_tokens == 64


def test_matryoshka_dimensions_cut_and_renormalise(minilm_model: Path, tmp_path: Path) -> None:
    path = build_bert(tmp_path / "mrl", minilm_model, config={"matryoshka_dimensions": [8, 16]})
    engine = EmbeddingEngine("mrl", str(path))
    replies = run(engine, Embed(1, [CAT, KITTEN]), Embed(2, [CAT, KITTEN], dimensions=8), Embed(3, [CAT], dimensions=12))
    full, short = vectors(replies[1]), vectors(replies[2])
    assert full.shape == (2, HIDDEN) and short.shape == (2, 8)
    expected = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(short, expected, atol=1e-5)
    assert isinstance(replies[3], Failed) and "one of 8, 16" in replies[3].message


def test_pooling_and_normalisation_follow_the_model_files(minilm_model: Path, tmp_path: Path) -> None:
    mean = EmbeddingEngine("m", str(build_bert(tmp_path / "mean", minilm_model, normalize=False)))
    both = EmbeddingEngine(
        "b",
        str(build_bert(tmp_path / "both", minilm_model, pooling={"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True})),
    )
    raw, joined = vectors(run(mean, Embed(1, [CAT]))[1]), vectors(run(both, Embed(1, [CAT]))[1])
    assert abs(np.linalg.norm(raw) - 1) > 1e-3  # no Normalize module: left as pooled
    assert both.dimensions == joined.shape[1] == 2 * HIDDEN
    np.testing.assert_allclose(np.linalg.norm(joined), 1, atol=1e-5)
    # The same weights (seed 0): the mean half of the joined vector is the plain mean, rescaled.
    mean_half = joined[0, HIDDEN:]
    np.testing.assert_allclose(mean_half / np.linalg.norm(mean_half), raw[0] / np.linalg.norm(raw[0]), atol=1e-5)


def test_sentence_bert_max_seq_length_is_the_context(minilm_model: Path, tmp_path: Path) -> None:
    engine = EmbeddingEngine("s", str(build_bert(tmp_path / "s", minilm_model, max_seq_length=16)))
    assert engine.ctx_len == 16


def test_auto_recognises_encoders_from_their_files(minilm_model: Path, tmp_path: Path, tiny_model: Path) -> None:
    cross = build_bert(tmp_path / "cross", minilm_model, cross_encoder=True)  # no modules.json
    assert resolve_engine("auto", str(minilm_model)) == "embedding"
    assert resolve_engine("auto", str(cross)) == "embedding"
    assert resolve_engine("auto", str(tiny_model)) == "mlx"
    assert resolve_engine("mlx", str(minilm_model)) == "mlx"  # an explicit choice stands


def test_an_architecture_it_cannot_run_is_refused_at_load(minilm_model: Path, tmp_path: Path) -> None:
    path = build_bert(tmp_path / "roberta", minilm_model, config={"architectures": ["XLMRobertaModel"]})
    with pytest.raises(ValueError, match="XLMRobertaModel"):
        EmbeddingEngine("r", str(path))
