"""The OpenAPI document the gateway serves, and a fuzzer run against it (schemathesis, bounded,
fixed seed): no 5xx, and every reply of the status and content type the document allows; data
that breaks the schema is refused with a 4xx."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from openapi_spec_validator import validate

from opta_lmx.demo.builder import build_demo_model
from tests.conftest import Server, model_config, served
from tests.support.hub import HubServer, StandInHub

# Left out of the fuzzing: deliberate 501s (Ollama's registry and Modelfile routes); the routes
# that start downloads (a fuzzed pull would start real work, and with a real hub reach the
# network); and event streams that stay open until the client leaves (each call would wait out
# the timeout). The embed routes and the deletes are fuzzed: random input is a 400, 404 or 409.
EXCLUDED = r"^/api/(pull|push|create|copy|blobs)|^/admin/models/pull|/events$"


@pytest.fixture(scope="module")
def short_server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    """A tiny model with a 256-token context: a fuzzed max_tokens ends quickly. The server's hub
    is an empty stand-in on 127.0.0.1, so that nothing it is sent can reach the real one."""
    home = tmp_path_factory.mktemp("fuzz")
    model = build_demo_model(home / "short", "tiny", context=256)
    with HubServer(StandInHub()) as hub, pytest.MonkeyPatch.context() as env:
        env.setenv("HF_ENDPOINT", hub.url)
        with served(home, model_config({"tiny": model})) as server:
            yield server


def test_the_document_is_valid_openapi_and_lists_every_route(short_server: Server) -> None:
    document = httpx.get(f"{short_server.base_url}/openapi.json").json()
    validate(document)
    paths = document["paths"]
    for path in (
        "/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/messages", "/v1/messages/count_tokens",
        "/v1/responses", "/v1/responses/{response_id}", "/v1/embeddings", "/v1/rerank",
        "/api/chat", "/api/generate", "/api/show", "/api/tags", "/api/embed", "/api/embeddings", "/api/pull", "/api/delete",
        "/admin/models/{name}/load", "/admin/models/{name}", "/admin/models/pull", "/admin/models/pull/{id}/events", "/metrics",
    ):
        assert path in paths, path
    assert paths["/admin/models/{name}"]["delete"]["parameters"][0]["name"] == "name"  # no Starlette convertor in a template
    chat = paths["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert chat == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    schema = document["components"]["schemas"]["ChatCompletionRequest"]
    assert "messages" in schema["required"] and schema["properties"]["model"]["examples"] == ["tiny"]
    assert schema["properties"]["n"]["maximum"] == 16  # the decoder's own bounds


def test_fuzzing_finds_no_server_error(short_server: Server) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "run", f"{short_server.base_url}/openapi.json",
            "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,negative_data_rejection,unsupported_method",
            "--max-examples", "40", "--seed", "1", "--generation-deterministic",
            "--phases", "examples,coverage,fuzzing", "--exclude-path-regex", EXCLUDED,
            "--request-timeout", "60", "--suppress-health-check", "all", "--no-color",
        ],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "generated" in done.stdout
