"""GGUF embedding models through a real server and the ``openai`` SDK: all-MiniLM-L6-v2 written as a
GGUF (an encoder, found by ``engine = "auto"``) and SmolLM2's GGUF named ``gguf-embedding`` (a
decoder serving last-token embeddings)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import ollama
import openai
import pytest

from tests.conftest import Server, served
from tests.e2e.test_embeddings import CAT, KITTEN, STOCKS, check_concurrent_equals_one_request, check_survives_kill_9, rows

BATCH_ATOL = 1e-3  # see tests/worker/test_gguf_embedding_engine.py


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, minilm_gguf: Path, smollm2_gguf: Path) -> Iterator[Server]:
    config = (
        f'[[models]]\nname = "minilm-gguf"\npath = "{minilm_gguf}"\n[models.options]\nthreads = 1\n'
        f'[[models]]\nname = "smollm2-embed"\npath = "{smollm2_gguf}"\nengine = "gguf-embedding"\n'
        "[models.options]\nthreads = 1\n"
    )
    with served(tmp_path_factory.mktemp("gguf-embed-server"), config) as srv:
        yield srv


@pytest.fixture
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0, timeout=300) as sdk:
        yield sdk


def test_an_encoder_gguf_embeds_by_meaning_in_floats_and_base64(client: openai.OpenAI) -> None:
    reply = client.embeddings.create(model="minilm-gguf", input=[CAT, KITTEN, STOCKS], encoding_format="float")
    vectors = rows(reply)
    assert vectors.shape == (3, 384) and reply.model == "minilm-gguf"
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    close, far = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert close > 0.5 and far < 0.2 and close - far > 0.4, (close, far)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == 23  # [CLS] and [SEP] counted
    # Without encoding_format the SDK asks for base64 and decodes it itself.
    np.testing.assert_array_equal(rows(client.embeddings.create(model="minilm-gguf", input=[CAT, KITTEN, STOCKS])), vectors)
    raw = client.embeddings.create(model="minilm-gguf", input=[CAT, KITTEN, STOCKS], encoding_format="base64")
    as_bytes = np.stack([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in raw.data])  # type: ignore[arg-type]
    np.testing.assert_array_equal(as_bytes, vectors)


def test_concurrent_requests_share_passes_and_keep_their_vectors(client: openai.OpenAI) -> None:
    check_concurrent_equals_one_request(client, "minilm-gguf", [f"item {i}: a cat" for i in range(16)], atol=BATCH_ATOL)


def test_rerank_by_cosine_puts_the_kitten_first(server: Server) -> None:
    body = {"model": "minilm-gguf", "query": CAT, "documents": [STOCKS, KITTEN, "The weather is cold."]}
    reply = httpx.post(f"{server.base_url}/v1/rerank", json=body, timeout=60).json()
    assert reply["method"] == "cosine" and reply["model"] == "minilm-gguf"
    results = reply["results"]
    assert results[0]["index"] == 1 and results[0]["document"] == {"text": KITTEN}
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True) and scores[0] - scores[-1] > 0.4


def test_a_decoder_named_gguf_embedding_embeds_alike_alone_or_batched(client: openai.OpenAI) -> None:
    texts = [CAT, "Short.", STOCKS]
    batch = client.embeddings.create(model="smollm2-embed", input=texts, encoding_format="float")
    vectors = rows(batch)
    assert vectors.shape == (3, 576) and batch.usage.prompt_tokens > 3
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    alone = np.concatenate([rows(client.embeddings.create(model="smollm2-embed", input=t, encoding_format="float")) for t in texts])
    np.testing.assert_allclose(vectors, alone, atol=BATCH_ATOL)


def test_a_gguf_embedding_model_writes_no_text(client: openai.OpenAI, server: Server) -> None:
    for model in ("minilm-gguf", "smollm2-embed"):
        with pytest.raises(openai.BadRequestError, match="is an embedding model; it does not generate text") as info:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert info.value.status_code == 400 and info.value.code == "invalid_request"
    with pytest.raises(openai.BadRequestError, match="does not generate text"):
        client.completions.create(model="minilm-gguf", prompt="hi", stream=True)
    with pytest.raises(openai.BadRequestError, match="Matryoshka"):
        client.embeddings.create(model="minilm-gguf", input=CAT, dimensions=128)


def test_the_gguf_embedding_worker_survives_a_kill_9(make_server, minilm_gguf: Path) -> None:
    check_survives_kill_9(make_server, "minilm-gguf", minilm_gguf, "tests.support.engines:SlowGgufEmbeddingEngine", "threads = 1\n")


def test_ollama_embed_serves_a_gguf_embedding_model(server: Server, client: openai.OpenAI) -> None:
    ollama_client = ollama.Client(host=server.base_url, timeout=300)
    try:
        reply = ollama_client.embed(model="minilm-gguf", input=[CAT, KITTEN])
    finally:
        ollama_client.close()
    np.testing.assert_allclose(np.array(reply.embeddings), rows(client.embeddings.create(model="minilm-gguf", input=[CAT, KITTEN], encoding_format="float")), atol=1e-6)
    assert reply.prompt_eval_count == 16
