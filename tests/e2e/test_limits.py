"""Hostile and careless input against a real server: every one a clear 4xx naming the cause,
a body over the limit refused before it is read, a full queue a 429 with Retry-After."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server

MESSAGES = [{"role": "user", "content": "hi"}]


def chat(server: Server, body: dict) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", 2**70),
        ("seed", -(2**63) - 1),
        ("max_tokens", 10**12),
        ("max_completion_tokens", 0),
        ("logit_bias", {str(i): 1 for i in range(301)}),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("stop", ""),
        ("n", 17),
        ("top_logprobs", 21),
        ("temperature", 2.5),
        ("messages", MESSAGES * 10_001),
        ("messages", [{"role": "user", "content": None}]),
        ("messages", [{"role": "system", "content": None}, *MESSAGES]),
    ],
)
def test_out_of_bounds_values_get_a_400_naming_the_field(server: Server, field: str, value: object) -> None:
    response = chat(server, {"model": "tiny", "messages": MESSAGES, "max_tokens": 2, field: value})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert (error["param"] or "").startswith(field), error


def test_values_at_the_bounds_are_served(server: Server) -> None:
    for extra in ({"seed": 2**63 - 1}, {"seed": -(2**63)}, {"max_tokens": 2**31 - 1, "logit_bias": {"2": -100}}):
        body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2, **extra}
        response = chat(server, body)
        assert response.status_code == 200, (extra, response.text)


def test_a_huge_max_tokens_is_bounded_by_the_context(server: Server) -> None:
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2**31 - 1, "stream": True, "logit_bias": {"2": -100}}
    # The tiny model's context is 2048 tokens: the reply ends with "length" there.
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=120) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: {")]
    assert json.loads(lines[-1][6:])["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{not json",
        b"[" * 100_000,
        b'{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
        b'{"model": "tiny", "messages": [{"role": "user", "content": "a\xff\xfeb"}]}',
        b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
        b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": Infinity}',
        b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1e400}',
        b"\x00\x01\x02",
    ],
)
def test_malformed_bodies_get_a_400(server: Server, raw: bytes) -> None:
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/messages", "/api/chat"):
        response = httpx.post(f"{server.base_url}{path}", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 400, (path, raw[:40], response.text)


def test_other_content_types_and_duplicate_keys(server: Server) -> None:
    url = f"{server.base_url}/v1/chat/completions"
    form = httpx.post(url, data={"model": "tiny"})  # application/x-www-form-urlencoded
    assert form.status_code == 400 and form.json()["error"]["type"] == "invalid_request_error"
    multipart = httpx.post(url, files={"file": ("a.json", b"{}")})
    assert multipart.status_code == 400
    # JSON sent as text/plain is JSON all the same (a browser's would be stopped by the Origin check).
    plain = httpx.post(url, content=json.dumps({"model": "tiny", "messages": MESSAGES, "max_tokens": 1}), headers={"content-type": "text/plain"})
    assert plain.status_code == 200
    # Duplicate keys: the last one counts, as in Python's json and most decoders.
    duplicated = b'{"model": "nope", "model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}'
    assert httpx.post(url, content=duplicated).status_code == 200
    deep = b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "response_format": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001
    assert httpx.post(url, content=deep).status_code == 400


def test_a_nul_in_the_text_is_served(server: Server) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "a\u0000b"}], "max_tokens": 2}
    assert chat(server, body).status_code == 200


def _raw_request(server: Server, head: bytes, body_part: bytes) -> bytes:
    """Send the head and the start of a body, then read what the server answers."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body_part)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_body_over_the_limit_is_refused_before_it_is_read(make_server, tiny_model: Path) -> None:
    server = make_server(f'[server]\nmax_body_bytes = 65536\n[[models]]\nname = "tiny"\npath = "{tiny_model}"\n')
    server.wait_models()
    declared = 64 * 1024 * 1024
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(declared).encode() + b"\r\n\r\n"
    )
    started = time.monotonic()
    answer = _raw_request(server, head, b'{"model": "tiny", "messages": [')  # 31 of 64 MiB sent
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"max_body_bytes" in answer
    assert time.monotonic() - started < 10  # answered without waiting for the rest
    # Without a declared length (chunked), it is refused once what was read passes the limit.
    big = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * 70_000}]}).encode()

    def chunks():  # type: ignore[no-untyped-def]
        for at in range(0, len(big), 8192):
            yield big[at : at + 8192]

    response = httpx.post(f"{server.base_url}/v1/messages", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"  # Anthropic's shape on its route
    small = httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES, "max_tokens": 2})
    assert small.status_code == 200


FLOOD = """
import asyncio, json, sys
import httpx

async def main(base_url):
    outcomes = []

    async def one(client, i):
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                "stream": i % 2 == 0, "logit_bias": {"2": -100}}
        response = await client.post("/v1/chat/completions", json=body)
        outcomes.append([response.status_code, response.headers.get("retry-after")])

    limits = httpx.Limits(max_connections=2100, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=120) as client:
        await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(2000))), timeout=300)
    print(json.dumps(outcomes))

asyncio.run(main(sys.argv[1]))
"""


def test_a_flood_past_the_queue_gets_429_with_retry_after_and_health_stays_responsive(make_server, tiny_model: Path) -> None:
    engine = 'engine = "tests.support.engines:SlowEngine"'
    server = make_server(
        f'[[models]]\nname = "tiny"\npath = "{tiny_model}"\n{engine}\n[models.options]\nbatch_size = 4\nmax_queued = 8\n'
    )
    server.wait_models()
    # The flood comes from another process, so the health probe here measures the server alone.
    flood = subprocess.Popen([sys.executable, "-c", FLOOD, server.base_url], stdout=subprocess.PIPE, text=True)
    health_times = []
    with httpx.Client(base_url=server.base_url, timeout=10) as probe:
        probe.get("/health")  # connected before the flood: a new connection would queue behind it
        while flood.poll() is None:
            started = time.monotonic()
            assert probe.get("/health").status_code == 200
            health_times.append(time.monotonic() - started)
            time.sleep(0.2)
    out, _ = flood.communicate(timeout=60)
    assert flood.returncode == 0
    outcomes = json.loads(out)
    assert len(outcomes) == 2000
    codes = {code for code, _ in outcomes}
    assert codes <= {200, 429}, codes
    assert all(retry == "1" for code, retry in outcomes if code == 429)
    served = sum(1 for code, _ in outcomes if code == 200)
    assert 12 <= served < 2000, served  # at least the batch and the queue; the rest refused
    assert len(health_times) > 3 and max(health_times) < 1.0, health_times
    assert chat(server, {"model": "tiny", "messages": MESSAGES, "max_tokens": 2}).status_code == 200


def test_requests_waiting_for_a_cold_model_count_against_its_queue(make_server, tiny_model: Path) -> None:
    """A burst at a model that is still loading (3 s, tests/support/engines.py) is bounded
    like one at a running model: batch_size 1 + max_queued 1 are served, the rest get 429 at
    once instead of all waiting for the load."""
    engine = 'engine = "tests.support.engines:SlowLoadEngine"'
    server = make_server(
        f'[[models]]\nname = "tiny"\npath = "{tiny_model}"\n{engine}\nload_on_start = false\n'
        "[models.options]\nbatch_size = 1\nmax_queued = 1\n"
    )
    server.wait_models({"tiny": "STOPPED"})
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2}

    def one(_: int) -> tuple[int, float]:
        started = time.monotonic()
        return chat(server, body).status_code, time.monotonic() - started

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(one, range(8)))
    assert sorted(code for code, _ in outcomes) == [200, 200] + [429] * 6, outcomes
    assert all(seconds < 2.0 for code, seconds in outcomes if code == 429), outcomes  # not after the load
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    assert 'opta_lmx_requests_in_flight{model="tiny"} 0.0' in metrics  # every place given back
    assert chat(server, body).status_code == 200
