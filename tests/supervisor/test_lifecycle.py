"""Real `opta-lmx serve` process trees: crashes, restarts, shutdown, orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.conftest import NO_EOS, Server, model_config

MESSAGES = [{"role": "user", "content": "hello"}]
# Streams that must still be open when a signal lands: a slow engine keeps them open whatever the
# machine's speed (the tiny model would otherwise finish its whole context in about a second).
SLOW_MODEL = '[[models]]\nname = "tiny"\npath = "{path}"\nengine = "tests.support.engines:SlowEngine"\n'


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.05)
    return alive


def test_worker_kill_9_mid_stream_errors_the_stream_and_recovers(make_server, tiny_model: Path) -> None:
    server: Server = make_server(SLOW_MODEL.format(path=tiny_model))
    server.wait_models()
    gateway_pid = server.gateway_pid()
    worker_pid = server.worker_pid("tiny")
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=100_000, stream=True, logit_bias=NO_EOS)
    received = 0
    with pytest.raises(openai.APIError, match="worker") as info:
        for chunk in stream:
            received += 1
            if received == 5:
                os.kill(worker_pid, signal.SIGKILL)
    assert received >= 5
    assert "worker_crashed" in str(info.value.body) or "stopped while serving this request" in str(info.value)

    server.wait_new_worker("tiny", worker_pid)
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, logit_bias=NO_EOS)
    assert reply.usage.completion_tokens == 4
    assert server.gateway_pid() == gateway_pid


def test_request_during_restart_waits_for_the_new_worker(make_server, tiny_model: Path) -> None:
    server: Server = make_server(model_config({"tiny": tiny_model}))
    server.wait_models()
    os.kill(server.worker_pid("tiny"), signal.SIGKILL)
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    # Sent at once: the model is BACKOFF/STARTING; the gateway waits for RUNNING (ready_wait).
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3, logit_bias=NO_EOS)
    assert reply.usage.completion_tokens == 3


def test_sigterm_exits_0_within_10s_and_leaves_no_process(make_server, tiny_model: Path) -> None:
    server: Server = make_server(model_config({"a": tiny_model, "b": tiny_model}))
    server.wait_models()
    spare = server.wait_spare()
    tree = [p.pid for p in server.descendants()]
    assert len(tree) >= 4 and spare in tree  # gateway, two workers, the warm spare
    started = time.monotonic()
    assert server.stop(timeout=10) == 0
    assert time.monotonic() - started < 10
    assert wait_gone(tree, 2) == []


def test_sigterm_ends_an_open_stream_with_a_shutdown_event(make_server, tiny_model: Path) -> None:
    server: Server = make_server(SLOW_MODEL.format(path=tiny_model))
    server.wait_models()
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=100_000, stream=True, logit_bias=NO_EOS)
    tree = [p.pid for p in server.descendants()]
    with pytest.raises(openai.APIError, match="shutting down"):
        for n, _ in enumerate(stream):
            if n == 3:
                assert server.proc is not None
                server.proc.send_signal(signal.SIGTERM)
    assert server.proc is not None and server.proc.wait(10) == 0
    assert wait_gone(tree, 2) == []


def test_children_exit_by_themselves_when_the_supervisor_is_sigkilled(make_server, tiny_model: Path) -> None:
    server: Server = make_server(model_config({"tiny": tiny_model}))
    server.wait_models()
    spare = server.wait_spare()
    tree = [p.pid for p in server.descendants()]
    assert spare in tree
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait(5)
    assert wait_gone(tree, 5) == []


def test_worker_that_cannot_load_ends_fatal_with_the_reason(make_server, tmp_path: Path) -> None:
    settings = "[supervisor]\nbackoff_initial = 0.1\nbackoff_max = 0.2\nmax_failures = 2\n"
    server: Server = make_server(model_config({"broken": tmp_path / "no-such-model"}, settings))
    server.wait_models({"broken": "FATAL"})
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": "broken", "messages": MESSAGES},
        timeout=60,
    )
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert response.json()["error"]["code"] == "model_unavailable"
    status = subprocess.run(
        [sys.executable, "-m", "opta_lmx.ctl", "status", "broken"], env=server.env, capture_output=True, text=True
    )
    assert status.returncode == 3
    assert "FATAL" in status.stdout and "no-such-model" in status.stdout


def test_lmxctl_status_exit_codes(make_server, tiny_model: Path, tmp_path: Path) -> None:
    def ctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "opta_lmx.ctl", *args], env=env, capture_output=True, text=True)

    nobody = {**os.environ, "OPTA_LMX_HOME": str(tmp_path / "empty")}
    down = ctl("status", env=nobody)
    assert down.returncode == 1 and "no supervisor is running" in down.stderr and "Traceback" not in down.stderr

    server: Server = make_server(model_config({"tiny": tiny_model}))
    server.wait_models()
    up = ctl("status", env=server.env)
    assert up.returncode == 0, up.stderr
    assert up.stdout.split()[:3] == ["tiny", "RUNNING", "pid"]
    assert "uptime 0:00:" in up.stdout
    unknown = ctl("status", "nope", env=server.env)
    assert unknown.returncode == 4 and "no such process" in unknown.stdout
