"""A server with an admin key, driven over HTTP: the key guards /admin and /metrics, and lmxctl
talks to the admin API with --url/--key or $LMX_URL/$LMX_ADMIN_KEY, printing what it prints
over the local socket."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server, free_port, served

ADMIN_KEY = "adm-0123456789"
API_KEY = "sk-api-0123456789"
CONFIG = f"""
[server]
api_keys = ["{API_KEY}"]
admin_key = "{ADMIN_KEY}"

[[models]]
name = "tiny"
path = "{{path}}"

[[models]]
name = "lazy"
path = "{{path}}"
load_on_start = false
"""


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Server]:
    states = {"tiny": "RUNNING", "lazy": "STOPPED"}
    with served(tmp_path_factory.mktemp("keyed"), CONFIG.format(path=tiny_model), states) as server:
        yield server


def lmxctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """lmxctl with no local server to find: OPTA_LMX_HOME points nowhere."""
    nowhere = {**os.environ, "OPTA_LMX_HOME": "/nonexistent-opta-lmx-home", **(env or {})}
    return subprocess.run([sys.executable, "-m", "opta_lmx.ctl", *args], env=nowhere, capture_output=True, text=True, timeout=120)


def test_the_admin_key_guards_admin_and_metrics(keyed: Server) -> None:
    url = keyed.base_url
    for headers in ({}, {"authorization": f"Bearer {API_KEY}"}):
        refused = httpx.get(f"{url}/admin/models", headers=headers)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/metrics", headers=headers).status_code == 401
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    assert [m["name"] for m in httpx.get(f"{url}/admin/models", headers=admin).json()["models"]] == ["tiny", "lazy"]
    assert httpx.get(f"{url}/admin/health", headers={"x-api-key": ADMIN_KEY}).json()["status"] == "ok"
    scraped = httpx.get(f"{url}/metrics", headers=admin)  # as Prometheus sends it (bearer_token)
    names = {family.name for family in text_string_to_metric_families(scraped.text)}
    assert {"opta_lmx_requests", "opta_lmx_worker_restarts", "opta_lmx_memory_budget_bytes"} <= names
    # The admin key is not an API key, and the API key still serves the API.
    with openai.OpenAI(base_url=f"{url}/v1", api_key=ADMIN_KEY, max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
    with openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0) as client:
        assert client.models.list().data
    assert ADMIN_KEY not in keyed.log()


def test_lmxctl_over_http_with_the_key(keyed: Server) -> None:
    remote = ("--url", keyed.base_url, "--key", ADMIN_KEY)
    status = lmxctl(*remote, "status")
    assert status.returncode == 3, status.stderr  # lazy is not loaded
    lines = status.stdout.splitlines()
    assert lines[0].split()[:4] == ["tiny", "RUNNING", "pid", f"{keyed.worker_pid('tiny')},"]
    assert lines[1].split()[:2] == ["lazy", "STOPPED"]
    assert lmxctl(*remote, "status", "nope").returncode == 4

    env = {"LMX_URL": keyed.base_url, "LMX_ADMIN_KEY": ADMIN_KEY}
    local_models = subprocess.run(
        [sys.executable, "-m", "opta_lmx.ctl", "models"], env=keyed.env, capture_output=True, text=True, timeout=60
    )
    remote_models = lmxctl("models", env=env)
    assert remote_models.returncode == 0 and remote_models.stdout == local_models.stdout
    assert remote_models.stdout.split()[:2] == ["tiny", "RUNNING"]
    assert "loads on first request" in remote_models.stdout.splitlines()[1]

    memory = lmxctl("memory", "lazy", env=env)
    assert memory.returncode == 0 and memory.stdout.startswith("budget ")
    assert memory.stdout.splitlines()[1].startswith("tiny") and "lazy: needs about" in memory.stdout

    started = lmxctl("start", "lazy", env=env)
    assert (started.returncode, started.stdout.strip()) == (0, "lazy: started")
    verbose = lmxctl("status", "-v", "lazy", env=env)
    assert verbose.returncode == 0 and "requests: 0 at the worker" in verbose.stdout
    stopped = lmxctl("stop", "lazy", env=env)
    assert (stopped.returncode, stopped.stdout.strip()) == (0, "lazy: stopped")
    again = lmxctl("stop", "lazy", env=env)
    assert again.returncode == 2 and "not running" in again.stdout
    assert lmxctl("tail", "tiny", env=env).returncode == 0


def test_lmxctl_over_http_says_why_it_cannot(keyed: Server) -> None:
    wrong = lmxctl("--url", keyed.base_url, "--key", "adm-wrong", "status")
    assert wrong.returncode == 2 and "admin key" in wrong.stderr and "Traceback" not in wrong.stderr
    keyless = lmxctl("status", env={"LMX_URL": keyed.base_url})
    assert keyless.returncode == 2 and "admin key" in keyless.stderr
    local_only = lmxctl("--url", keyed.base_url, "--key", ADMIN_KEY, "shutdown")
    assert local_only.returncode == 2 and "control socket only" in local_only.stderr
    nobody = lmxctl("--url", f"http://127.0.0.1:{free_port()}", "status")
    assert nobody.returncode == 1 and "no Opta-LMX answers" in nobody.stderr
