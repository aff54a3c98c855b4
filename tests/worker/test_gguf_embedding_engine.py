"""The GGUF embedding engine driven directly (no processes): all-MiniLM-L6-v2 written as a GGUF in
llama.cpp's BERT layout (an encoder: its vectors checked against the MLX engine's on the same
weights), and SmolLM2-135M-Instruct's GGUF (a decoder asked for embeddings: the mechanics only, a
chat model's vectors say little about meaning)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import gguf
import numpy as np
import pytest

from opta_lmx.config import EngineOptions, parse_config
from opta_lmx.engine_choice import resolve_engine
from opta_lmx.errors import ConfigError
from opta_lmx.gguf_metadata import POOLING_CLS, POOLING_LAST, POOLING_MEAN, POOLING_RANK, GgufTraits
from opta_lmx.proto import Embed, Embeddings, Failed, Finished
from opta_lmx.worker.engines.embedding import EmbeddingEngine
from opta_lmx.worker.engines.gguf_embedding import GgufEmbeddingEngine, pooling_type
from tests.worker.test_embedding_engine import CAT, KITTEN, STOCKS, check_writes_no_text, run, vectors

TEXTS = [CAT, KITTEN, STOCKS, "Short.", "Ünïcode naïve café, don't stop!", "A much longer sentence about a kitten on a rug."]
# llama.cpp splits a pass's matrix products by its size, so an input's vector may move in the last
# digits with its company (measured: 2e-8 to 1e-4 on a unit vector, with 1 or 2 threads).
BATCH_ATOL = 1e-3


@pytest.fixture(scope="module")
def minilm(minilm_gguf: Path) -> Iterator[GgufEmbeddingEngine]:
    engine = GgufEmbeddingEngine("minilm-gguf", str(minilm_gguf), EngineOptions(threads=1))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf: Path) -> Iterator[GgufEmbeddingEngine]:
    engine = GgufEmbeddingEngine("smollm2", str(smollm2_gguf), EngineOptions(threads=1, batch_size=8))
    yield engine
    engine.close()


def test_llama_cpp_and_the_mlx_engine_make_the_same_vectors(minilm: GgufEmbeddingEngine, minilm_model: Path) -> None:
    mlx = EmbeddingEngine("minilm", str(minilm_model))
    ours, theirs = run(minilm, Embed(1, TEXTS))[1], run(mlx, Embed(1, TEXTS))[1]
    assert isinstance(ours, Embeddings) and isinstance(theirs, Embeddings)
    assert ours.prompt_tokens == theirs.prompt_tokens  # llama.cpp's WordPiece tokenizes alike
    cosines = (vectors(ours) * vectors(theirs)).sum(axis=1)
    assert cosines.min() > 0.999, cosines
    assert minilm.pooling == "mean" and minilm.dimensions == 384 and minilm.ctx_len == 512


def test_a_cat_is_closer_to_a_kitten_than_to_stock_markets(minilm: GgufEmbeddingEngine) -> None:
    rows = vectors(run(minilm, Embed(1, [CAT, KITTEN, STOCKS]))[1])
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    close, far = rows[0] @ rows[1], rows[0] @ rows[2]
    assert close > 0.5 and far < 0.2 and close - far > 0.4, (close, far)


def test_a_text_gets_its_vector_alone_or_batched_with_others(minilm_gguf: Path, minilm: GgufEmbeddingEngine) -> None:
    alone = np.stack([vectors(run(minilm, Embed(i, [t]))[i])[0] for i, t in enumerate(TEXTS)])
    # Two requests in the same steps: their inputs share passes, each its own sequence.
    together = run(minilm, Embed(10, TEXTS[:2]), Embed(11, TEXTS[2:]))
    batched = np.concatenate([vectors(together[10]), vectors(together[11])])
    np.testing.assert_allclose(batched, alone, atol=BATCH_ATOL)
    assert (batched * alone).sum(axis=1).min() > 0.99999
    # Bounds of 2 inputs and 20 tokens a pass (8+8, 7+4, 11, 13 tokens) split the same request over several passes.
    small = GgufEmbeddingEngine("small", str(minilm_gguf), EngineOptions(threads=1, batch_size=2, n_ubatch=20))
    try:
        split = vectors(run(small, Embed(1, TEXTS))[1])
        assert small.batches == 4 and small.embedded == len(TEXTS) and small.ctx_len == 20
    finally:
        small.close()
    np.testing.assert_allclose(split, alone, atol=BATCH_ATOL)


def test_token_ids_and_truncation(minilm: GgufEmbeddingEngine) -> None:
    ids = [101, 1037, 4937, 7719, 2006, 1996, 13523, 102]  # "A cat sits on the mat" with [CLS] and [SEP]
    replies = run(minilm, Embed(1, [CAT]), Embed(2, token_ids=[ids]))
    np.testing.assert_allclose(vectors(replies[2]), vectors(replies[1]), atol=BATCH_ATOL)
    assert replies[1].prompt_tokens == replies[2].prompt_tokens == 8
    long = "cat " * 600
    failed = run(minilm, Embed(3, [CAT, long]))[3]
    assert isinstance(failed, Failed) and failed.code == "context_length_exceeded"
    assert "Input 1 has 602 tokens" in failed.message and "512" in failed.message
    cut = run(minilm, Embed(4, [long], truncate=True))[4]
    assert isinstance(cut, Embeddings) and cut.prompt_tokens == 512
    kept = [101] + [4937] * 510 + [102]  # the specials stay at both ends
    np.testing.assert_allclose(vectors(cut), vectors(run(minilm, Embed(5, token_ids=[kept]))[5]), atol=BATCH_ATOL)
    bad = run(minilm, Embed(6, token_ids=[[101, 99999, 102]]))[6]
    assert isinstance(bad, Failed) and "99999" in bad.message


def test_scores_for_a_query_are_cosine_similarities(minilm: GgufEmbeddingEngine) -> None:
    replies = run(minilm, Embed(1, [CAT, KITTEN, STOCKS]), Embed(2, [STOCKS, KITTEN], query=CAT))
    rows, scores = vectors(replies[1]), vectors(replies[2])
    assert replies[2].method == "cosine" and scores.shape == (2, 1)
    np.testing.assert_allclose(scores[:, 0], [rows[0] @ rows[2], rows[0] @ rows[1]], atol=BATCH_ATOL)
    assert scores[1, 0] > scores[0, 0] + 0.4  # the kitten first


def test_what_an_embedding_model_refuses(minilm: GgufEmbeddingEngine) -> None:
    check_writes_no_text(minilm)
    shorter = run(minilm, Embed(2, [CAT], dimensions=128))[2]
    assert isinstance(shorter, Failed) and shorter.code == "unsupported_parameter" and "Matryoshka" in shorter.message


def test_cancel_drops_queued_inputs_and_abort_fails_the_rest(minilm: GgufEmbeddingEngine) -> None:
    assert minilm.embed(Embed(1, [CAT, KITTEN])) == [] and minilm.embed(Embed(2, [STOCKS])) == []
    assert minilm.cancel(1) == [Finished(1, "cancelled", 0, 0)]
    replies = minilm.step()
    assert [type(r) for r in replies] == [Embeddings] and replies[0].request_id == 2 and minilm.active == 0
    minilm.embed(Embed(3, [CAT]))
    assert minilm.abort_all("server_shutdown", "bye") == [Failed(3, "server_shutdown", "bye")]
    assert minilm.active == 0 and minilm.step() == []


def test_a_decoder_embeds_with_last_token_pooling_alike_alone_or_batched(smollm2: GgufEmbeddingEngine) -> None:
    assert smollm2.pooling == "last" and smollm2.dimensions == 576  # the file names no pooling: a decoder's default
    together = vectors(run(smollm2, Embed(1, TEXTS))[1])
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    alone = np.stack([vectors(run(smollm2, Embed(i, [t]))[i])[0] for i, t in enumerate(TEXTS, start=2)])
    np.testing.assert_allclose(together, alone, atol=BATCH_ATOL)
    assert len({row.tobytes() for row in together}) == len(TEXTS)


def test_pooling_and_normalisation_are_options(smollm2_gguf: Path, smollm2: GgufEmbeddingEngine) -> None:
    last = vectors(run(smollm2, Embed(1, [CAT, STOCKS]))[1])
    mean = GgufEmbeddingEngine("mean", str(smollm2_gguf), EngineOptions(threads=1, pooling="mean", normalize=False))
    try:
        raw = vectors(run(mean, Embed(1, [CAT, STOCKS]))[1])
        again = vectors(run(mean, Embed(2, [STOCKS]))[2])
    finally:
        mean.close()
    norms = np.linalg.norm(raw, axis=1)
    assert mean.pooling == "mean" and np.all(np.abs(norms - 1) > 0.1)  # left as pooled
    np.testing.assert_allclose(again[0], raw[1], atol=BATCH_ATOL * norms[1])
    unit = raw / norms[:, None]
    assert np.abs(unit - last).max() > 0.1  # another pooling, another vector


def test_pooling_follows_the_file_then_the_kind_of_model() -> None:
    decoder, encoder = GgufTraits("llama", False, None), GgufTraits("bert", True, None)
    assert pooling_type(decoder, "") == POOLING_LAST and pooling_type(encoder, "") == POOLING_MEAN
    assert pooling_type(GgufTraits("bert", True, POOLING_CLS), "") == POOLING_CLS
    assert pooling_type(GgufTraits("qwen3", False, POOLING_LAST), "mean") == POOLING_MEAN  # the option wins
    with pytest.raises(ValueError, match="reranker"):
        pooling_type(GgufTraits("bert", True, POOLING_RANK), "")
    assert pooling_type(GgufTraits("bert", True, POOLING_RANK), "cls") == POOLING_CLS


def header_only(path: Path, arch: str, **keys: object) -> Path:
    """A GGUF with metadata and no tensors: enough for what reads headers."""
    writer = gguf.GGUFWriter(str(path), arch)
    if "pooling" in keys:
        writer.add_pooling_type(gguf.PoolingType(keys["pooling"]))
    if "causal" in keys:
        writer.add_causal_attention(bool(keys["causal"]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_auto_tells_embedding_ggufs_from_generating_ones(
    tmp_path: Path, minilm_gguf: Path, smollm2_gguf: Path
) -> None:
    assert resolve_engine("auto", str(minilm_gguf)) == "gguf-embedding"  # bert, causal false, mean pooling
    assert resolve_engine("auto", str(smollm2_gguf)) == "gguf"
    qwen3 = header_only(tmp_path / "qwen3-embedding.gguf", "qwen3", pooling=POOLING_LAST)  # a decoder trained for it
    nomic = header_only(tmp_path / "nomic.gguf", "nomic-bert")  # an encoder by its architecture alone
    plain = header_only(tmp_path / "llama.gguf", "llama", pooling=0)  # pooling "none": not an embedding model
    assert [resolve_engine("auto", str(p)) for p in (qwen3, nomic, plain)] == ["gguf-embedding", "gguf-embedding", "gguf"]
    # A decoder serves embeddings when named so; an encoder cannot be made to generate.
    model = "[[models]]\nname = 'm'\npath = '{}'\n"
    assert parse_config(model.format(smollm2_gguf) + "engine = 'gguf-embedding'\n").models[0].engine == "gguf-embedding"
    with pytest.raises(ConfigError, match="is an encoder .bert.: it makes embeddings"):
        parse_config(model.format(minilm_gguf) + "engine = 'gguf'\n")
    with pytest.raises(ConfigError, match="pooling applies to GGUF embedding models only"):
        parse_config(model.format(smollm2_gguf) + "[models.options]\npooling = 'mean'\n")
    with pytest.raises(ConfigError, match="slots applies to GGUF .llama.cpp. models only"):
        parse_config(model.format(minilm_gguf) + "[models.options]\nslots = 2\n")
    with pytest.raises(ConfigError, match="batch_size must be at most 256"):
        parse_config(model.format(minilm_gguf) + "[models.options]\nbatch_size = 300\n")
    assert parse_config(model.format(minilm_gguf) + "[models.options]\npooling = 'cls'\nnormalize = false\nn_ubatch = 128\n")


def test_a_reranker_gguf_is_refused_at_load(tmp_path: Path) -> None:
    path = header_only(tmp_path / "reranker.gguf", "bert", pooling=POOLING_RANK, causal=False)
    with pytest.raises(ValueError, match="reranker .pooling type rank."):
        GgufEmbeddingEngine("r", str(path))
