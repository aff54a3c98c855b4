"""Embeddings and rerank through a real server: all-MiniLM-L6-v2 through the ``openai`` SDK, a
random-weight cross-encoder for the scoring mechanics, the tiny chat model for the refusals."""

from __future__ import annotations

import base64
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import ollama
import openai
import pytest

from tests.conftest import Server, served
from tests.support.bert import build_bert

CAT, KITTEN, STOCKS = "A cat sits on the mat", "A kitten rests on a rug", "Stock markets fell sharply today"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, minilm_model: Path, tiny_model: Path) -> Iterator[Server]:
    cross = build_bert(tmp_path_factory.mktemp("bert") / "cross", minilm_model, cross_encoder=True)
    config = (
        f'[[models]]\nname = "minilm"\npath = "{minilm_model}"\naliases = ["text-embedding-3-small"]\n'
        f'[[models]]\nname = "cross"\npath = "{cross}"\n'
        f'[[models]]\nname = "tiny"\npath = "{tiny_model}"\n'
    )
    with served(tmp_path_factory.mktemp("embed-server"), config) as srv:
        yield srv


@pytest.fixture
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0, timeout=300) as sdk:
        yield sdk


@pytest.fixture
def ollama_client(server: Server) -> Iterator[ollama.Client]:
    client = ollama.Client(host=server.base_url, timeout=300)
    yield client
    client.close()


def rows(reply: openai.types.CreateEmbeddingResponse) -> np.ndarray:
    assert [d.index for d in reply.data] == list(range(len(reply.data)))
    return np.array([d.embedding for d in reply.data])


def test_a_cat_is_closer_to_a_kitten_than_to_stock_markets(client: openai.OpenAI) -> None:
    reply = client.embeddings.create(model="minilm", input=[CAT, KITTEN, STOCKS], encoding_format="float")
    vectors = rows(reply)
    assert vectors.shape == (3, 384) and reply.model == "minilm"
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    close, far = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert close > 0.5 and far < 0.2 and close - far > 0.4, (close, far)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == 23


def test_float_and_base64_agree(client: openai.OpenAI) -> None:
    floats = rows(client.embeddings.create(model="minilm", input=[CAT, KITTEN], encoding_format="float"))
    # Without encoding_format the SDK asks for base64 and decodes it itself; by the alias too.
    decoded = rows(client.embeddings.create(model="text-embedding-3-small", input=[CAT, KITTEN]))
    np.testing.assert_array_equal(decoded, floats)
    raw = client.embeddings.create(model="minilm", input=[CAT, KITTEN], encoding_format="base64")
    as_bytes = np.stack([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in raw.data])  # type: ignore[arg-type]
    np.testing.assert_array_equal(as_bytes, floats)


def test_a_batch_gives_each_text_its_vector_alone(client: openai.OpenAI) -> None:
    texts = [CAT, "Short.", STOCKS]
    batch = rows(client.embeddings.create(model="minilm", input=texts, encoding_format="float"))
    alone = np.concatenate([rows(client.embeddings.create(model="minilm", input=t, encoding_format="float")) for t in texts])
    np.testing.assert_allclose(batch, alone, atol=1e-5)


def check_concurrent_equals_one_request(client: openai.OpenAI, model: str, texts: list[str], atol: float) -> None:
    """Each text sent alone, all at once, gets the vector it gets in one request of them all."""

    def one(text: str) -> np.ndarray:
        return rows(client.embeddings.create(model=model, input=text, encoding_format="float"))[0]

    with ThreadPoolExecutor(len(texts)) as pool:
        concurrent = np.stack(list(pool.map(one, texts)))
    together = rows(client.embeddings.create(model=model, input=texts, encoding_format="float"))
    np.testing.assert_allclose(concurrent, together, atol=atol)
    assert len({v.tobytes() for v in together}) == len(texts)


def test_32_concurrent_requests_all_succeed_with_their_own_vectors(client: openai.OpenAI) -> None:
    check_concurrent_equals_one_request(client, "minilm", [f"item {i}" for i in range(32)], atol=1e-5)


def test_token_ids_and_truncation(client: openai.OpenAI) -> None:
    ids = [101, 1037, 4937, 7719, 2006, 1996, 13523, 102]  # "A cat sits on the mat" with [CLS] and [SEP]
    by_ids = rows(client.embeddings.create(model="minilm", input=[ids], encoding_format="float"))
    by_text = rows(client.embeddings.create(model="minilm", input=CAT, encoding_format="float"))
    np.testing.assert_allclose(by_ids, by_text, atol=1e-5)
    long = "cat " * 300
    with pytest.raises(openai.BadRequestError, match="Input 1 has 302 tokens") as info:
        client.embeddings.create(model="minilm", input=[CAT, long])
    assert info.value.code == "context_length_exceeded"
    cut = client.embeddings.create(model="minilm", input=[long], extra_body={"truncate": True})
    assert cut.usage.prompt_tokens == 256


@pytest.mark.parametrize(
    ("body", "code", "param", "message"),
    [
        ({"input": ""}, "invalid_request", "input", "empty string"),
        ({"input": []}, "invalid_request", "input", "must not be empty"),
        ({"input": ["a", 1]}, "invalid_request", "input", "list of strings"),
        ({"input": "a", "encoding_format": "int8"}, "invalid_request", "encoding_format", "encoding_format"),
        ({"input": "a", "dimensions": 0}, "invalid_request", "dimensions", "dimensions"),
        ({"input": "a", "dimensions": 64}, "unsupported_parameter", None, "Matryoshka"),
        ({"input": "a", "pooling": "cls"}, "unsupported_parameter", "pooling", "pooling"),
        ({"input": "a", "model": "nope"}, "model_not_found", "model", "nope"),
    ],
)
def test_bad_embedding_requests_get_a_400_naming_the_problem(
    server: Server, body: dict, code: str, param: str | None, message: str
) -> None:
    response = httpx.post(f"{server.base_url}/v1/embeddings", json={"model": "minilm", **body}, timeout=60)
    error = response.json()["error"]
    assert response.status_code == (404 if code == "model_not_found" else 400), error
    assert (error["code"], error["param"]) == (code, param) and message in error["message"]


def test_ollama_embed_and_embeddings_give_the_models_vectors(client: openai.OpenAI, ollama_client: ollama.Client) -> None:
    reply = ollama_client.embed(model="minilm", input=[CAT, KITTEN, STOCKS])
    vectors = np.array(reply.embeddings)
    assert vectors.shape == (3, 384) and reply.model == "minilm"
    np.testing.assert_allclose(vectors, rows(client.embeddings.create(model="minilm", input=[CAT, KITTEN, STOCKS])), atol=1e-6)
    assert vectors[0] @ vectors[1] > 0.5 > 0.2 > vectors[0] @ vectors[2]
    assert reply.prompt_eval_count == 23
    assert reply.total_duration is not None and reply.load_duration is not None
    assert reply.total_duration >= reply.load_duration >= 0 and reply.total_duration > 0
    one = ollama_client.embed(model="text-embedding-3-small", input=CAT)  # a string, by an alias
    assert one.model == "text-embedding-3-small"
    np.testing.assert_allclose(one.embeddings, vectors[:1], atol=1e-5)
    older = ollama_client.embeddings(model="minilm", prompt=CAT)
    np.testing.assert_allclose(older.embedding, vectors[0], atol=1e-5)
    assert ollama_client.embed(model="minilm", input=[], options={"temperature": 0}).embeddings == []  # loads only
    assert ollama_client.embeddings(model="minilm", prompt="").embedding == []


def test_ollama_embed_cuts_long_inputs_unless_told_not_to(ollama_client: ollama.Client) -> None:
    long = "cat " * 300
    assert ollama_client.embed(model="minilm", input=long).prompt_eval_count == 256
    assert len(ollama_client.embeddings(model="minilm", prompt=long).embedding) == 384
    with pytest.raises(ollama.ResponseError) as refused:
        ollama_client.embed(model="minilm", input=[CAT, long], truncate=False)
    assert refused.value.status_code == 400 and "Input 1 has 302 tokens" in refused.value.error


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"input": ["a", ""]}, 400, "input 1 is an empty string"),
        ({"input": "a", "dimensions": 64}, 400, "Matryoshka"),
        ({"input": "a", "dimensions": 0}, 400, "dimensions"),
        ({"input": 3}, 400, "input"),
        ({"input": "a", "options": {"bogus": 1}}, 400, "bogus"),
        ({"input": "a", "keep_alive": "soon"}, 400, "keep_alive"),
        ({"input": "a", "model": "nope"}, 404, "model 'nope' not found"),
        ({"input": "a", "model": ""}, 400, "model is required"),
    ],
)
def test_bad_ollama_embed_requests_in_ollamas_error_shape(server: Server, body: dict, status: int, words: str) -> None:
    response = httpx.post(f"{server.base_url}/api/embed", json={"model": "minilm", **body}, timeout=60)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and words in response.json()["error"]


def test_the_wrong_kind_of_model_is_a_400(client: openai.OpenAI, server: Server) -> None:
    with pytest.raises(openai.BadRequestError, match="generates text; it makes no embeddings"):
        client.embeddings.create(model="tiny", input=CAT)
    with pytest.raises(openai.BadRequestError, match="cross-encoder"):
        client.embeddings.create(model="cross", input=CAT)
    with pytest.raises(openai.BadRequestError, match="is an embedding model; it does not generate text"):
        client.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="does not generate text"):
        client.completions.create(model="minilm", prompt="hi", stream=True)
    messages = {"model": "minilm", "messages": [{"role": "user", "content": "hi"}]}
    for path, extra in (("/v1/messages", {"max_tokens": 4}), ("/v1/messages/count_tokens", {})):  # Anthropic's shape
        answer = httpx.post(f"{server.base_url}{path}", json={**messages, **extra}, timeout=60)
        assert answer.status_code == 400 and "does not generate text" in answer.json()["error"]["message"]
    rerank = httpx.post(f"{server.base_url}/v1/rerank", json={"model": "tiny", "query": "q", "documents": ["d"]}, timeout=60)
    assert rerank.status_code == 400 and "scores no documents" in rerank.json()["error"]["message"]


def test_rerank_by_cosine_puts_the_kitten_first(server: Server) -> None:
    documents = [STOCKS, {"text": KITTEN}, "The weather is cold."]
    body = {"model": "minilm", "query": CAT, "documents": documents}
    reply = httpx.post(f"{server.base_url}/v1/rerank", json=body, timeout=60).json()
    assert reply["method"] == "cosine" and reply["model"] == "minilm"
    results = reply["results"]
    assert results[0]["index"] == 1 and results[0]["document"] == {"text": KITTEN}
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True) and sorted(r["index"] for r in results) == [0, 1, 2]
    assert scores[0] > 0.5 and scores[0] - scores[-1] > 0.4
    top = httpx.post(f"{server.base_url}/rerank", json={**body, "top_n": 1, "return_documents": False}, timeout=60).json()
    assert top["results"] == [{"index": 1, "relevance_score": results[0]["relevance_score"]}]
    assert top["usage"]["prompt_tokens"] == reply["usage"]["prompt_tokens"] > 0


def test_rerank_with_a_cross_encoder_scores_pairs(server: Server) -> None:
    body = {"model": "cross", "query": CAT, "documents": [KITTEN, STOCKS, "Short."]}
    reply = httpx.post(f"{server.base_url}/v1/rerank", json=body, timeout=60).json()
    assert reply["method"] == "cross_encoder"
    scores = [r["relevance_score"] for r in reply["results"]]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    alone = httpx.post(f"{server.base_url}/v1/rerank", json={**body, "documents": [STOCKS]}, timeout=60).json()
    by_index = {r["index"]: r["relevance_score"] for r in reply["results"]}
    assert alone["results"][0]["relevance_score"] == pytest.approx(by_index[1], abs=1e-5)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"query": CAT, "documents": []}, "documents"),
        ({"query": "", "documents": ["d"]}, "query"),
        ({"documents": ["d"]}, "query"),
        ({"query": CAT, "documents": [{"title": "d"}]}, "documents[0].title"),
        ({"query": CAT, "documents": ["d"], "top_n": 0}, "top_n"),
        ({"query": CAT, "documents": ["d"], "rank_fields": ["x"]}, "rank_fields"),
    ],
)
def test_bad_rerank_requests_get_a_400_naming_the_field(server: Server, body: dict, param: str) -> None:
    response = httpx.post(f"{server.base_url}/v1/rerank", json={"model": "minilm", **body}, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


def check_survives_kill_9(make_server, name: str, path: Path, engine: str, options: str) -> None:  # type: ignore[no-untyped-def]
    """Kill -9 an embedding worker with a request in flight (``engine``: a slowed one, a single
    input a step): that request gets a 503, the worker comes back and embeds, the gateway stays."""
    server: Server = make_server(
        f'[supervisor]\nbackoff_initial = 0.2\n[[models]]\nname = "{name}"\npath = "{path}"\n'
        f'engine = "{engine}"\n[models.options]\nbatch_size = 1\n{options}'
    )
    server.wait_models()
    gateway_pid, worker_pid = server.gateway_pid(), server.worker_pid(name)
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0, timeout=120)
    with ThreadPoolExecutor(1) as pool:
        # Eight inputs, one a step, each step slowed down: in flight for seconds.
        pending = pool.submit(client.embeddings.create, model=name, input=["a cat"] * 8)
        server.wait_in_flight(name, 1)
        os.kill(worker_pid, signal.SIGKILL)
        with pytest.raises(openai.InternalServerError) as info:
            pending.result(timeout=60)
    assert info.value.status_code == 503 and info.value.code == "worker_crashed"
    server.wait_new_worker(name, worker_pid)
    reply = client.embeddings.create(model=name, input=CAT, encoding_format="float")
    assert len(reply.data[0].embedding) == 384
    assert server.gateway_pid() == gateway_pid
    client.close()


def test_the_embedding_worker_survives_a_kill_9(make_server, minilm_model: Path) -> None:
    check_survives_kill_9(make_server, "minilm", minilm_model, "tests.support.engines:SlowEmbeddingEngine", "")


def test_embedding_requests_past_the_queue_get_429_with_retry_after(make_server, minilm_model: Path) -> None:
    """One request in the engine and one waiting (batch_size 1 + max_queued 1): the rest of a
    burst is refused at once, in each dialect's error shape, and the model serves afterwards."""
    server = make_server(
        f'[[models]]\nname = "minilm"\npath = "{minilm_model}"\n[models.options]\nbatch_size = 1\nmax_queued = 1\n'
    )
    server.wait_models()
    texts = [f"{CAT}, number {i}. " * 12 for i in range(32)]  # 32 forward passes a request: seconds

    def one(i: int) -> tuple[str, int, str | None, object]:
        path = "/v1/embeddings" if i % 2 else "/api/embed"
        reply = httpx.post(f"{server.base_url}{path}", json={"model": "minilm", "input": texts}, timeout=300)
        return path, reply.status_code, reply.headers.get("retry-after"), reply.json()["error"] if reply.status_code != 200 else None

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(one, range(16)))
    assert {code for _, code, _, _ in outcomes} == {200, 429}, outcomes
    assert 2 <= sum(code == 200 for _, code, _, _ in outcomes) < 16
    for path, code, retry, error in outcomes:
        if code == 429:
            assert retry == "1"
            message = error["message"] if path == "/v1/embeddings" else error
            assert "minilm" in message and "limit" in message, error
    reply = httpx.post(f"{server.base_url}/v1/embeddings", json={"model": "minilm", "input": CAT}, timeout=300)
    assert reply.status_code == 200
