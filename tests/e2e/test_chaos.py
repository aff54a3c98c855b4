"""Chaos: two models under mixed streaming and non-streaming load while one's worker is killed
with SIGKILL three times in a row. The other model's requests all complete; the killed model's
each end with an error the client sees (a terminal stream event, or a 503 before the first
byte); both models answer afterwards; no process outlives the server."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import psutil

from tests.conftest import NO_EOS, Server

SETTINGS = "[supervisor]\nheartbeat_interval = 0.2\nheartbeat_misses = 25\nbackoff_initial = 0.2\nmax_failures = 10\n"
SLOW = 'engine = "tests.support.engines:SlowEngine"'
KILLS = 3


def one_request(server: Server, model: str, stream: bool) -> str:
    """What the client saw: "completed", "error event", or "HTTP <status>"."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 30, "logit_bias": NO_EOS, "stream": stream}
    url = f"{server.base_url}/v1/chat/completions"
    if not stream:
        response = httpx.post(url, json=body, timeout=120)
        if response.status_code != 200:
            return f"HTTP {response.status_code}"
        assert response.json()["choices"][0]["finish_reason"] == "length"
        return "completed"
    with httpx.stream("POST", url, json=body, timeout=120) as response:
        if response.status_code != 200:
            response.read()
            return f"HTTP {response.status_code}"
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    if events and events[-1] == "[DONE]":
        return "completed"
    assert events and "error" in json.loads(events[-1]), events[-3:]  # never a silent cut
    return "error event"


def test_killing_one_model_three_times_leaves_the_other_untouched(make_server, tiny_model: Path) -> None:
    server: Server = make_server(
        SETTINGS + "".join(f'[[models]]\nname = "{n}"\npath = "{tiny_model}"\n{SLOW}\n' for n in ("victim", "bystander"))
    )
    server.wait_models()
    outcomes: dict[str, list[str]] = {"victim": [], "bystander": []}
    lock = threading.Lock()
    stop = threading.Event()

    def client(model: str, index: int) -> None:
        while not stop.is_set():
            outcome = one_request(server, model, stream=index % 3 != 0)
            with lock:
                outcomes[model].append(outcome)

    threads = [threading.Thread(target=client, args=(m, i)) for m in outcomes for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(KILLS):
            time.sleep(1.0)  # streams in flight on both models
            pid = server.worker_pid("victim")
            os.kill(pid, signal.SIGKILL)
            server.wait_new_worker("victim", pid)
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=180)
    assert not any(thread.is_alive() for thread in threads), "a request hung"
    assert outcomes["bystander"] and set(outcomes["bystander"]) == {"completed"}, outcomes["bystander"]
    victim = outcomes["victim"]
    assert set(victim) <= {"completed", "error event", "HTTP 503"}, victim
    assert "error event" in victim or "HTTP 503" in victim  # the kills cut requests off
    for model in outcomes:
        assert one_request(server, model, stream=True) == "completed"
    tree = [p for p in server.descendants()]
    assert server.stop() == 0
    gone, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, alive
