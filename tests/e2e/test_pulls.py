"""Model pulls as jobs and model removal through a real server, against the stand-in hub on
127.0.0.1 (``HF_ENDPOINT``): the admin API (start, poll, follow as SSE, cancel, delete),
``lmxctl pull``/``rm`` on this machine and with ``--url``, and Ollama's ``/api/pull`` and
``/api/delete`` through the ``ollama`` client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import ollama
import openai
import psutil
import pytest

from opta_lmx.store.pull import PARTIAL_DIR
from tests.conftest import Server, model_config, served
from tests.support.hub import HubServer, StandInHub

GGUF_REPO = "org/smol-GGUF"
CANCEL_REPO = "org/smol-cancel-GGUF"
MB = 1 << 20
HI = [{"role": "user", "content": "hi"}]
TINY_REPOS = ("org/tiny", "org/busy", "org/ctl", "org/ctl-remote", "org/ctl-cancel", "org/ollama-tiny")


@pytest.fixture(scope="module")
def hub(tiny_model: Path, smollm2_gguf: Path) -> Iterator[HubServer]:
    stand_in = StandInHub()
    for repo in TINY_REPOS:
        stand_in.add_directory(repo, tiny_model)
    gguf = smollm2_gguf.read_bytes()
    for repo in (GGUF_REPO, CANCEL_REPO):
        stand_in.add_repo(repo, {smollm2_gguf.name: gguf})
    with HubServer(stand_in) as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, hub: HubServer) -> Iterator[Server]:
    config = "[supervisor]\nheartbeat_interval = 0.2\nheartbeat_misses = 25\n" + model_config({"tiny": tiny_model})
    with pytest.MonkeyPatch.context() as env:  # the supervisor pulls from the stand-in hub
        env.setenv("HF_ENDPOINT", hub.url)
        with served(tmp_path_factory.mktemp("pulls"), config) as srv:
            yield srv


@pytest.fixture
def stand_in(hub: HubServer) -> Iterator[StandInHub]:
    """The hub's faults are cleared after each test."""
    yield hub.hub
    hub.hub.delay = 0.0
    if hub.hub.gate is not None:
        hub.hub.gate.set()
        hub.hub.gate = None


@pytest.fixture
def client(server: Server) -> Iterator[ollama.Client]:
    client = ollama.Client(host=server.base_url, timeout=120)
    yield client
    client.close()


def admin(server: Server, method: str, path: str, **kwargs: object) -> httpx.Response:
    return httpx.request(method, f"{server.base_url}/admin{path}", timeout=120, **kwargs)  # type: ignore[arg-type]


def wait_job(server: Server, job_id: str, until: tuple[str, ...] = ("done", "failed", "cancelled"), timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = admin(server, "GET", f"/models/pull/{job_id}").json()
        if job["state"] in until:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def serving(server: Server) -> dict[str, str]:
    return {m["id"]: m["state"] for m in httpx.get(f"{server.base_url}/v1/models").json()["data"]}


def sse_events(response: httpx.Response) -> Iterator[dict]:
    event = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            assert event == "pull"
            yield json.loads(line.removeprefix("data: "))


def test_a_pull_job_is_followed_to_done_and_its_model_is_served(server: Server, stand_in: StandInHub) -> None:
    stand_in.gate = threading.Event()  # the transfer begins and waits until the stream is open
    started = admin(server, "POST", "/models/pull", json={"repo": "org/tiny"})
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["type"] == "pull_job" and job["repo"] == "org/tiny" and job["revision"] == "main"
    assert len(job["id"]) == 12 and job["state"] in ("pending", "listing", "downloading")
    again = admin(server, "POST", "/models/pull", json={"repo": "org/tiny"})
    assert again.status_code == 202 and again.json()["id"] == job["id"]  # the same pull joins the job
    other = admin(server, "POST", "/models/pull", json={"repo": "org/tiny", "quant": "Q8_0"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "pull_in_progress"
    events: list[dict] = []
    with httpx.stream("GET", f"{server.base_url}/admin/models/pull/{job['id']}/events", timeout=120) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for event in sse_events(stream):
            events.append(event)
            if len(events) == 1:
                assert event["state"] != "done"
                stand_in.gate.set()
    states = [e["state"] for e in events]
    assert states[-1] == "done" and states.count("done") == 1 and "downloading" in states, states
    assert states == sorted(states, key=["pending", "listing", "downloading", "installing", "done"].index)
    progress = [e["done_bytes"] for e in events]
    assert progress == sorted(progress) and progress[-1] == events[-1]["total_bytes"] == 560467 + 21604 + 1297 + 342
    assert {e["current_file"] for e in events if e["state"] == "downloading"} - {""} <= set(events[-1]["files"])
    done = events[-1]
    assert done["model"] == "org/tiny" and done["error"] == "" and done["path"] == str(server.home / "models" / "org" / "tiny")
    assert sorted(done["files"]) == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    # Polled, listed, served by name and loadable.
    polled = wait_job(server, job["id"])
    assert (polled["state"], polled["model"], polled["done_bytes"]) == ("done", "org/tiny", done["done_bytes"])
    assert job["id"] in [j["id"] for j in admin(server, "GET", "/models/pull").json()["jobs"]]
    assert serving(server)["org/tiny"] == "not-loaded"
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0) as client:
        assert client.chat.completions.create(model="org/tiny", messages=HI, max_tokens=2).usage.completion_tokens > 0
    assert serving(server)["org/tiny"] == "loaded"
    # The pull ran in the supervisor, which still has neither mlx nor numpy loaded.
    assert server.proc is not None
    mapped = [m.path for m in psutil.Process(server.proc.pid).memory_maps()]
    assert not [path for path in mapped if "mlx" in path or "numpy" in path]


def test_a_cancelled_pull_leaves_no_model_and_the_next_pull_resumes(server: Server, stand_in: StandInHub, smollm2_gguf: Path) -> None:
    stand_in.delay = 0.005  # about 12 MB/s: the cancel lands in the middle
    job = admin(server, "POST", "/models/pull", json={"repo": GGUF_REPO}).json()
    deadline = time.monotonic() + 60
    while (polled := admin(server, "GET", f"/models/pull/{job['id']}").json())["done_bytes"] == 0:
        assert time.monotonic() < deadline and polled["state"] not in ("done", "failed"), polled
        time.sleep(0.05)
    assert polled["state"] == "downloading" and polled["current_file"] == smollm2_gguf.name
    assert polled["file_bytes"] == polled["total_bytes"] == smollm2_gguf.stat().st_size
    cancelled = admin(server, "POST", f"/models/pull/{job['id']}/cancel")
    assert cancelled.status_code == 200 and "cancelling" in cancelled.json()["message"]
    ended = wait_job(server, job["id"])
    assert (ended["state"], ended["error"]) == ("cancelled", "cancelled"), ended
    assert "partial download" in ended["message"] and "is kept" in ended["message"]
    assert not (server.home / "models" / GGUF_REPO).exists()
    assert GGUF_REPO not in serving(server)
    [part] = list((server.home / "models" / PARTIAL_DIR).rglob("*.part"))
    kept = part.stat().st_size
    assert 0 < kept < smollm2_gguf.stat().st_size
    again = admin(server, "POST", f"/models/pull/{job['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_running"

    stand_in.delay = 0.0
    resumed = wait_job(server, admin(server, "POST", "/models/pull", json={"repo": GGUF_REPO}).json()["id"])
    assert resumed["state"] == "done" and resumed["model"] == GGUF_REPO, resumed
    assert (server.home / "models" / GGUF_REPO / smollm2_gguf.name).read_bytes() == smollm2_gguf.read_bytes()
    assert stand_in.ranges(smollm2_gguf.name)[-1] == f"bytes={kept}-"
    assert serving(server)[GGUF_REPO] == "not-loaded"


def test_delete_is_refused_while_the_model_is_loaded(server: Server) -> None:
    job = wait_job(server, admin(server, "POST", "/models/pull", json={"repo": "org/busy"}).json()["id"])
    assert job["state"] == "done"
    loaded = admin(server, "POST", "/models/org%2Fbusy/load")
    assert loaded.status_code == 200, loaded.text
    refused = admin(server, "DELETE", "/models/org%2Fbusy")
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "model_loaded" and "unload it first" in error["message"]
    assert (server.home / "models" / "org" / "busy").is_dir() and serving(server)["org/busy"] == "loaded"
    assert admin(server, "POST", "/models/org/busy/unload").status_code == 200
    removed = admin(server, "DELETE", "/models/org/busy")
    assert removed.status_code == 200, removed.text
    assert removed.json()["message"].startswith("removed org/busy")
    assert not (server.home / "models" / "org" / "busy").exists()
    assert "org/busy" not in serving(server)
    assert admin(server, "GET", "/models/org/busy").status_code == 404
    gone = admin(server, "DELETE", "/models/org/busy")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    configured = admin(server, "DELETE", "/models/tiny")
    assert configured.status_code == 409 and configured.json()["error"]["code"] == "model_configured"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"repo": "../etc"}, 400, "repo"),
        ({"repo": "no-slash"}, 400, "repo"),
        ({}, 400, "repo"),
        ({"repo": "org/tiny", "branch": "x"}, 400, "branch"),
        ({"repo": 3}, 400, "repo"),
    ],
)
def test_a_bad_pull_request_is_a_400(server: Server, body: dict, status: int, param: str) -> None:
    response = admin(server, "POST", "/models/pull", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_pulls_that_fail_say_why(server: Server) -> None:
    missing = wait_job(server, admin(server, "POST", "/models/pull", json={"repo": "org/nothing"}).json()["id"])
    assert (missing["state"], missing["error"]) == ("failed", "not_found") and "org/nothing not found" in missing["message"]
    no_quant = wait_job(server, admin(server, "POST", "/models/pull", json={"repo": GGUF_REPO, "quant": "Q2_K"}).json()["id"])
    assert (no_quant["state"], no_quant["error"]) == ("failed", "not_found") and "available: Q4_1" in no_quant["message"]
    unknown = "0123456789ab"
    for method, path in (("GET", unknown), ("GET", f"{unknown}/events"), ("POST", f"{unknown}/cancel")):
        response = admin(server, method, f"/models/pull/{path}")
        assert response.status_code == 404 and response.json()["error"]["code"] == "pull_not_found", response.text


def lmxctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opta_lmx.ctl", *args], env=env, capture_output=True, text=True, timeout=120)


def test_lmxctl_pull_and_rm_here_and_over_http(server: Server) -> None:
    here = server.env
    nowhere = {**os.environ, "OPTA_LMX_HOME": "/nonexistent-opta-lmx-home"}
    remote = ("--url", server.base_url)
    for repo, where, env in (("org/ctl", (), here), ("org/ctl-remote", remote, nowhere)):
        pulled = lmxctl(*where, "pull", repo, env=env)
        assert pulled.returncode == 0, pulled.stderr
        path = server.home / "models" / repo
        assert pulled.stdout.strip() == f"{repo}: {path} (served as {repo})"
        assert serving(server)[repo] == "not-loaded"
        removed = lmxctl(*where, "rm", repo, env=env)
        assert removed.returncode == 0, removed.stderr
        assert removed.stdout.strip() == f"removed {repo} ({path})"
        assert repo not in serving(server) and not path.exists()
        missing = lmxctl(*where, "pull", "org/nothing", env=env)
        assert missing.returncode == 2 and "repository org/nothing not found" in missing.stderr
        malformed = lmxctl(*where, "pull", "../x", env=env)
        assert malformed.returncode == 2 and "not a repository name" in malformed.stdout
        unknown = lmxctl(*where, "rm", "org/nothing", env=env)
        assert unknown.returncode == 4 and "org/nothing" in unknown.stdout


def _jobs_of(server: Server, repo: str) -> list[dict]:
    return [j for j in admin(server, "GET", "/models/pull").json()["jobs"] if j["repo"] == repo]


def test_ctrl_c_on_lmxctl_pull_cancels_the_job(server: Server, stand_in: StandInHub) -> None:
    stand_in.delay = 0.005  # about 12 MB/s: Ctrl-C lands in the middle
    command = [sys.executable, "-m", "opta_lmx.ctl", "pull", CANCEL_REPO]
    proc = subprocess.Popen(command, env=server.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not [j for j in _jobs_of(server, CANCEL_REPO) if j["done_bytes"] > 0]:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert f"cancelling the pull of {CANCEL_REPO}" in err and "cancelled" in err and "Traceback" not in err
    [job] = _jobs_of(server, CANCEL_REPO)
    assert job["state"] == "cancelled"
    assert not (server.home / "models" / CANCEL_REPO).exists()


def test_ollama_pulls_a_hugging_face_name_and_deletes_it(
    server: Server, client: ollama.Client, stand_in: StandInHub, smollm2_gguf: Path
) -> None:
    hf_name = f"hf.co/{GGUF_REPO}:Q4_1"
    admin(server, "DELETE", f"/models/{GGUF_REPO}")  # the cancel test may have left it
    stand_in.gate = threading.Event()  # the transfer waits until the stream shows it
    progress = []
    for line in client.pull(hf_name, stream=True):
        progress.append(line)
        if line.status.startswith("downloading"):
            stand_in.gate.set()
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    downloading = [p for p in progress if p.status.startswith("downloading")]
    assert downloading and all(p.digest == smollm2_gguf.name and p.total == smollm2_gguf.stat().st_size for p in downloading)
    completed = [p.completed or 0 for p in downloading]
    assert completed == sorted(completed)
    assert GGUF_REPO in [m.model for m in client.list().models]
    assert client.pull(hf_name).status == "success"  # already there: nothing to fetch
    assert client.delete(hf_name).status == "success"
    assert GGUF_REPO not in [m.model for m in client.list().models]
    assert not (server.home / "models" / GGUF_REPO).exists()
    with pytest.raises(ollama.ResponseError) as gone:
        client.delete(hf_name)
    assert gone.value.status_code == 404 and f"model '{hf_name}' not found" in gone.value.error


def test_ollama_delete_is_refused_while_the_model_is_loaded(server: Server, client: ollama.Client) -> None:
    name = "huggingface.co/org/ollama-tiny"
    assert client.pull(name).status == "success"
    assert client.generate(model=name, prompt="hi", options={"num_predict": 2}).done
    with pytest.raises(ollama.ResponseError) as busy:
        client.delete(name)
    assert busy.value.status_code == 409 and "is loaded" in busy.value.error
    client.generate(model=name, keep_alive=0)  # unload
    deadline = time.monotonic() + 30
    while serving(server).get("org/ollama-tiny") == "loaded":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for attempt in range(50):  # the worker may still be draining when the state changes
        try:
            assert client.delete(name).status == "success"
            break
        except ollama.ResponseError as exc:
            assert exc.status_code == 409 and attempt < 49, exc
            time.sleep(0.1)
    assert "org/ollama-tiny" not in serving(server)


def test_ollama_refuses_names_it_cannot_pull(server: Server, client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as library:
        client.pull("llama3.2")
    assert library.value.status_code == 400 and "only Hugging Face models" in library.value.error
    with pytest.raises(ollama.ResponseError) as missing:
        client.pull("hf.co/org/nothing")
    assert missing.value.status_code == 404 and "org/nothing not found" in missing.value.error
    with pytest.raises(ollama.ResponseError, match="org/nothing not found"):
        list(client.pull("hf.co/org/nothing", stream=True))
    with pytest.raises(ollama.ResponseError) as unknown:
        client.delete("nothing")
    assert unknown.value.status_code == 404 and "model 'nothing' not found" in unknown.value.error
    no_model = httpx.post(f"{server.base_url}/api/pull", json={})
    assert no_model.status_code == 400 and no_model.json() == {"error": "model is required"}
    configured = httpx.request("DELETE", f"{server.base_url}/api/delete", json={"model": "tiny"})
    assert configured.status_code == 409 and "configured model" in configured.json()["error"]
