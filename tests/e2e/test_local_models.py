"""Models on disk served by name, loaded on their first request; pull and rm against a running
server (a stand-in hub on 127.0.0.1 serves the tiny demo model's files)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import psutil

from tests.conftest import Server, model_config
from tests.support.hub import HubServer, StandInHub

HI = [{"role": "user", "content": "hi"}]


def _states(server: Server) -> dict[str, str]:
    return {m["id"]: m["state"] for m in httpx.get(f"{server.base_url}/v1/models").json()["data"]}


def test_local_models_are_listed_and_load_on_their_first_request(make_server, tmp_path: Path, tiny_model: Path) -> None:
    shutil.copytree(tiny_model, tmp_path / "home" / "models" / "org" / "tiny")
    server: Server = make_server(model_config({"configured": tiny_model}))
    server.wait_models({"configured": "RUNNING", "org/tiny": "STOPPED"})
    assert _states(server) == {"configured": "loaded", "org/tiny": "not-loaded"}
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    try:
        reply = client.chat.completions.create(model="org/tiny", messages=HI, max_tokens=3)
    finally:
        client.close()
    assert reply.model == "org/tiny" and reply.usage.completion_tokens > 0
    assert _states(server) == {"configured": "loaded", "org/tiny": "loaded"}
    # The scan ran in the supervisor, which still has neither mlx nor numpy loaded.
    assert server.proc is not None
    mapped = [m.path for m in psutil.Process(server.proc.pid).memory_maps()]
    assert not [path for path in mapped if "mlx" in path or "numpy" in path]


def test_local_models_are_not_served_when_switched_off(make_server, tmp_path: Path, tiny_model: Path) -> None:
    shutil.copytree(tiny_model, tmp_path / "home" / "models" / "org" / "tiny")
    server: Server = make_server("[server]\nserve_local_models = false\n" + model_config({"configured": tiny_model}))
    server.wait_models()
    assert _states(server) == {"configured": "loaded"}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": "org/tiny", "messages": HI})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


def test_pull_and_rm_while_the_server_runs(make_server, tmp_path: Path, tiny_model: Path) -> None:
    server: Server = make_server(model_config({"configured": tiny_model}))
    hub = StandInHub()
    hub.add_directory("org/pulled", tiny_model)
    with HubServer(hub) as hub_server:
        env = {**server.env, "HF_ENDPOINT": hub_server.url, "HF_HUB_CACHE": str(tmp_path / "hf")}
        server.wait_models()

        def opta(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "opta_lmx", *args], env=env, capture_output=True, text=True, timeout=120)

        pulled = opta("pull", "org/pulled")
    assert pulled.returncode == 0, pulled.stderr
    assert "the running server is serving it as org/pulled" in pulled.stdout
    assert _states(server) == {"configured": "loaded", "org/pulled": "not-loaded"}
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    try:
        assert client.chat.completions.create(model="org/pulled", messages=HI, max_tokens=2).usage.completion_tokens > 0
    finally:
        client.close()
    table = opta("models").stdout.splitlines()
    assert table[0].split() == ["NAME", "FORMAT", "ARCH", "PARAMS", "SIZE", "QUANT", "CONTEXT", "LOADED"]
    assert [line.split()[0] for line in table[1:]] == ["org/pulled"] and table[1].split()[-1] == "yes"
    [record] = [json.loads(line) for line in opta("models", "--json").stdout.splitlines()]
    assert (record["name"], record["format"], record["source"], record["loaded"]) == ("org/pulled", "mlx", "data", True)

    refused = opta("rm", "org/pulled")
    assert refused.returncode == 1
    assert "'org/pulled' is loaded (as org/pulled); unload it first: lmxctl stop org/pulled" in refused.stderr
    stopped = subprocess.run([sys.executable, "-m", "opta_lmx.ctl", "stop", "org/pulled"], env=env, capture_output=True, text=True)
    assert stopped.returncode == 0, stopped.stdout
    removed = opta("rm", "org/pulled")
    assert removed.returncode == 0, removed.stderr
    assert "no longer serving org/pulled" in removed.stdout
    assert not (server.home / "models" / "org").exists()
    assert _states(server) == {"configured": "loaded"}
