"""The admin API through a real server: models, load, unload with drain, restart, memory, health,
config reload, and the status events as SSE. Requests come from 127.0.0.1, which the admin API
answers without a key when none is configured (tests/gateway/test_admin_access.py covers the
rest of the rule; tests/e2e/test_admin_remote.py the admin key)."""

from __future__ import annotations

import json
import os
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.conftest import NO_EOS, Server, served

SETTINGS = "[supervisor]\nheartbeat_interval = 0.2\nheartbeat_misses = 25\nbackoff_initial = 0.2\n"
# Slow steps (tests/support/engines.py): a stream lasts long enough to be drained.
MODELS = """
[[models]]
name = "tiny"
path = "{path}"
aliases = ["tiny-alias"]
engine = "tests.support.engines:SlowEngine"

[[models]]
name = "lazy"
path = "{path}"
load_on_start = false
engine = "tests.support.engines:SlowEngine"
"""


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("admin")
    states = {"tiny": "RUNNING", "lazy": "STOPPED"}
    with served(home, SETTINGS + MODELS.format(path=tiny_model), states) as server:
        yield server


def admin(server: Server, method: str, path: str, **kwargs: object) -> httpx.Response:
    return httpx.request(method, f"{server.base_url}/admin{path}", timeout=120, **kwargs)  # type: ignore[arg-type]


def model(server: Server, name: str) -> dict:
    response = admin(server, "GET", f"/models/{name}")
    assert response.status_code == 200, response.text
    return response.json()


def test_models_lists_every_configured_model_with_its_state(admin_server: Server) -> None:
    listed = admin(admin_server, "GET", "/models").json()["models"]
    assert [m["name"] for m in listed] == ["tiny", "lazy"]
    tiny, lazy = listed
    assert tiny["status"]["state"] == "RUNNING" and tiny["status"]["pid"] == admin_server.worker_pid("tiny")
    assert tiny["aliases"] == ["tiny-alias"] and tiny["load_on_start"] and tiny["uptime_seconds"] > 0
    assert tiny["requests"] == {"in_flight": 0, "queued": 0, "limit": 32 + 256}
    assert tiny["estimate"] > 0 and tiny["status"]["memory"] > 0
    assert lazy["status"]["state"] == "STOPPED" and lazy["status"]["pid"] == 0 and lazy["uptime_seconds"] == 0
    assert model(admin_server, "tiny-alias")["name"] == "tiny"
    missing = admin(admin_server, "GET", "/models/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_load_then_unload_drains_the_requests_in_flight(admin_server: Server) -> None:
    loaded = admin(admin_server, "POST", "/models/lazy/load")
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["model"]["status"]["state"] == "RUNNING"
    again = admin(admin_server, "POST", "/models/lazy/load")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_started"

    body = {
        "model": "lazy", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 60, "logit_bias": NO_EOS,
        "stream": True, "stream_options": {"include_usage": True},
    }
    events: list[dict] = []
    with httpx.stream("POST", f"{admin_server.base_url}/v1/chat/completions", json=body, timeout=120) as stream:
        data = (json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: {"))
        for event in data:  # until the first token: the request is being generated
            events.append(event)
            if event["choices"] and event["choices"][0]["delta"].get("content"):
                break
        unloaded: list[tuple[httpx.Response, float]] = []
        thread = threading.Thread(
            target=lambda: unloaded.append((admin(admin_server, "POST", "/models/lazy/unload"), time.monotonic()))
        )
        thread.start()
        events.extend(data)
        stream_ended = time.monotonic()
    thread.join(120)
    assert events[-1]["usage"]["completion_tokens"] == 60  # the stream ran to its end
    response, answered = unloaded[0]
    assert response.status_code == 200, response.text
    assert answered >= stream_ended  # the unload waited for the stream
    status = response.json()["model"]["status"]
    assert status["state"] == "STOPPED" and status["stops"] == {"operator": 1}
    assert status["last_exit_cause"] == "operator"
    not_running = admin(admin_server, "POST", "/models/lazy/unload")
    assert not_running.status_code == 409 and not_running.json()["error"]["code"] == "not_running"


def test_restart_gives_the_model_a_new_worker(admin_server: Server) -> None:
    old = admin_server.worker_pid("tiny")
    response = admin(admin_server, "POST", "/models/tiny-alias/restart")
    assert response.status_code == 200, response.text
    status = response.json()["model"]["status"]
    assert status["state"] == "RUNNING" and status["pid"] not in (0, old)
    assert status["restarts"] == {}  # asked for: not a failure


def test_memory_shows_the_budget_the_workers_and_an_admission_estimate(admin_server: Server) -> None:
    memory = admin(admin_server, "GET", "/memory").json()
    assert memory["budget"] > 0 and memory["soft_limit"] < memory["hard_limit"] <= memory["budget"]
    (tiny,) = memory["workers"]
    assert tiny["name"] == "tiny" and tiny["pid"] == admin_server.worker_pid("tiny")
    assert tiny["counted"] == max(tiny["used"], tiny["estimate"]) and memory["used"] == tiny["counted"]
    assert memory["estimate"] is None
    estimate = admin(admin_server, "GET", "/memory", params={"model": "lazy"}).json()["estimate"]
    assert estimate["model"] == "lazy" and not estimate["loaded"]
    assert estimate["need"] == model(admin_server, "lazy")["estimate"]
    assert estimate["fits"] and estimate["evict"] == [] and estimate["free"] == memory["budget"] - tiny["counted"]
    assert admin(admin_server, "GET", "/memory", params={"model": "nope"}).status_code == 404


def test_health(admin_server: Server) -> None:
    health = admin(admin_server, "GET", "/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["supervisor"]["answering"]
    assert body["models"]["tiny"]["state"] == "RUNNING" and body["models"]["lazy"]["state"] == "STOPPED"
    assert body["gateway"]["pid"] == admin_server.gateway_pid() and not body["gateway"]["shutting_down"]


def test_events_stream_shows_a_load_and_a_crash(admin_server: Server) -> None:
    received: queue.Queue[dict] = queue.Queue()
    stop = threading.Event()

    def follow() -> None:
        with httpx.stream("GET", f"{admin_server.base_url}/admin/events", timeout=120) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    received.put(json.loads(line[6:]))
                if stop.is_set():
                    return

    def next_status(name: str, state: str) -> dict:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = received.get(timeout=deadline - time.monotonic())
            if status["name"] == name and status["state"] == state:
                return status
        raise AssertionError(f"no {state} event for {name}")

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    snapshot = next_status("lazy", "STOPPED")  # every model's current status comes first
    assert snapshot["type"] == "model_status"
    assert admin(admin_server, "POST", "/models/lazy/load").status_code == 200
    assert next_status("lazy", "STARTING")["seq"] > snapshot["seq"]
    running = next_status("lazy", "RUNNING")
    os.kill(running["pid"], signal.SIGKILL)
    crashed = next_status("lazy", "BACKOFF")
    assert crashed["restarts"] == {"crash": 1} and crashed["last_exit_cause"] == "crash"
    assert "SIGKILL" in crashed["last_exit"]
    back = next_status("lazy", "RUNNING")
    assert back["pid"] != running["pid"] and back["restarts"] == {"crash": 1}
    stop.set()
    assert admin(admin_server, "POST", "/models/lazy/unload").status_code == 200


def test_config_reload_adds_and_removes_models_and_refuses_a_bad_file(admin_server: Server) -> None:
    original = admin_server.config_path.read_text()
    try:
        admin_server.config_path.write_text(original + '\n[[models]]\nname = "extra"\npath = "/nowhere"\nload_on_start = false\n')
        added = admin(admin_server, "POST", "/config/reload")
        assert added.status_code == 200 and "extra: added" in added.json()["message"]
        assert model(admin_server, "extra")["status"]["state"] == "STOPPED"
        admin_server.config_path.write_text(original + "\n[[models]]\nname = 1\n")
        refused = admin(admin_server, "POST", "/config/reload")
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_config"
        assert model(admin_server, "extra")["path"] == "/nowhere"  # the old config stays
    finally:
        admin_server.config_path.write_text(original)
    removed = admin(admin_server, "POST", "/config/reload")
    assert removed.status_code == 200 and "extra: removed" in removed.json()["message"]
    assert admin(admin_server, "GET", "/models/extra").status_code == 404
    assert model(admin_server, "tiny")["status"]["state"] == "RUNNING"  # unchanged: untouched


def test_bad_admin_requests_get_a_clear_400(admin_server: Server) -> None:
    bad_signal = admin(admin_server, "POST", "/models/tiny/signal", json={"signal": "NOPE"})
    assert bad_signal.status_code == 400 and bad_signal.json()["error"]["param"] == "signal"
    unknown_field = admin(admin_server, "POST", "/models/tiny/signal", json={"sig": "KILL"})
    assert unknown_field.status_code == 400 and "sig" in unknown_field.json()["error"]["message"]
    bad_offset = admin(admin_server, "GET", "/models/tiny/log", params={"offset": "x"})
    assert bad_offset.status_code == 400 and bad_offset.json()["error"]["param"] == "offset"
    written = (admin_server.home / "logs" / "tiny.log").read_bytes()
    log = admin(admin_server, "GET", "/models/tiny/log", params={"offset": "0"}).json()
    assert log == {"text": written.decode(), "offset": len(written)}
