"""Start and stop each server under test, on a free 127.0.0.1 port, on the same model directory.

Every server is started in its own session (process group) and stopped by signalling that group
and every descendant recorded just before (Opta-LMX's children run in sessions of their own), so a
run never leaves processes behind, even when it is interrupted: ``stop_all`` is called from the
entry point's ``finally``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx
import psutil

OPTA = "opta-lmx"
OPTA_B = "opta-lmx-b"  # a second Opta-LMX with other model options, for A/B runs (--opta-b)
MLX_LM = "mlx_lm.server"
VLLM_MLX = "vllm-mlx"


class ServerStartError(RuntimeError):
    pass


@dataclass
class Server:
    name: str
    base_url: str
    # What requests put in "model".
    model: str
    proc: subprocess.Popen
    log_path: Path
    # Opta-LMX only: its data dir (worker logs live under logs/).
    home: Path | None = None
    started_s: float = 0.0
    notes: list[str] = field(default_factory=list)


_RUNNING: list[Server] = []


def free_port() -> int:
    """A port the kernel just gave out on 127.0.0.1 (a tiny race with other programs is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group, so the whole group can be signalled
        )


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _wait_ready(server: Server, ready: Callable[[httpx.Client], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise ServerStartError(
                    f"{server.name} exited with status {server.proc.returncode} while starting:\n"
                    + log_tail(server.log_path)
                )
            try:
                if ready(client):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
    raise ServerStartError(f"{server.name} not ready after {timeout_s:.0f}s:\n" + log_tail(server.log_path))


def venv_bin(name: str) -> str:
    """A console script next to this interpreter (the project's venv), else on PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def start_opta(
    model_dir: Path,
    work_dir: Path,
    timeout_s: float,
    options: str = "",
    name: str = OPTA,
    src: Path | None = None,
    extra_models: str = "",
) -> Server:
    """``opta-lmx serve`` with a one-model config; ready when /health says the model is RUNNING.
    ``options`` is TOML for the model's ``[models.options]`` table and ``src`` another tree's
    ``src`` directory to run instead of this one (``PYTHONPATH``, inherited by its children): for
    A/B runs. ``extra_models``: more ``[[models]]`` tables (TOML) for the config."""
    home = work_dir / "opta-home"
    home.mkdir(parents=True, exist_ok=True)
    config = work_dir / "opta-lmx.toml"
    # A second name for the same weights, loaded only on demand: the hot-swap probe's model.
    config.write_text(
        f'[[models]]\nname = "bench"\npath = "{model_dir}"\n[models.options]\n{options}\n\n'
        f'[[models]]\nname = "bench-swap"\npath = "{model_dir}"\nload_on_start = false\n' + extra_models,
        encoding="utf-8",
    )
    port = free_port()
    env = dict(os.environ, OPTA_LMX_HOME=str(home))
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src.resolve()), *filter(None, [env.get("PYTHONPATH")])])
    t0 = time.perf_counter()
    proc = _spawn(
        [venv_bin("opta-lmx"), "serve", "--config", str(config), "--port", str(port)],
        work_dir / "opta-lmx.log",
        env,
    )
    server = Server(name, f"http://127.0.0.1:{port}", "bench", proc, work_dir / "opta-lmx.log", home)
    _RUNNING.append(server)

    def ready(client: httpx.Client) -> bool:
        response = client.get(server.base_url + "/health")
        return response.status_code == 200 and response.json().get("models", {}).get("bench") == "RUNNING"

    _wait_ready(server, ready, timeout_s)
    server.started_s = time.perf_counter() - t0
    return server


def start_mlx_lm(model_dir: Path, work_dir: Path, timeout_s: float, env: dict[str, str] | None = None) -> Server:
    """``python -m mlx_lm.server`` with its defaults (continuous batching, 32 decode slots), in
    ``env`` (None: the harness's environment)."""
    port = free_port()
    t0 = time.perf_counter()
    proc = _spawn(
        [sys.executable, "-m", "mlx_lm.server", "--model", str(model_dir), "--port", str(port), "--host", "127.0.0.1"],
        work_dir / "mlx_lm.server.log",
        env,
    )
    # "default_model" maps to --model; any other name would make it try to load that name.
    server = Server(MLX_LM, f"http://127.0.0.1:{port}", "default_model", proc, work_dir / "mlx_lm.server.log")
    _RUNNING.append(server)
    _wait_ready(server, lambda c: c.get(server.base_url + "/v1/models").status_code == 200, timeout_s)
    server.started_s = time.perf_counter() - t0
    return server


def vllm_mlx_available(python: str) -> tuple[bool, str]:
    """Whether ``import vllm_mlx`` works in that interpreter (a separate venv: it pulls torch)."""
    try:
        done = subprocess.run(
            [python, "-c", "import vllm_mlx, sys; print(getattr(vllm_mlx, '__version__', '?'))"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    if done.returncode != 0:
        return False, (done.stderr.strip().splitlines() or ["import failed"])[-1]
    return True, done.stdout.strip()


def start_vllm_mlx(
    python: str, model_dir: Path, work_dir: Path, timeout_s: float, env: dict[str, str] | None = None
) -> Server:
    """``vllm-mlx serve`` with continuous batching (its best mode for concurrent load), with
    ``env``'s variables added."""
    port = free_port()
    script = Path(python).parent / "vllm-mlx"
    head = [str(script)] if script.exists() else [python, "-m", "vllm_mlx.cli"]
    argv = head + ["serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--continuous-batching"]
    # vllm-mlx saves its prefix cache under ~/.cache/vllm-mlx at exit and loads it at start: with
    # a home of its own per run, no run answers from an earlier run's prompts (the request
    # numbers in the prompts start again at 1 every run).
    home = work_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc = _spawn(argv, work_dir / "vllm-mlx.log", dict(env or os.environ, HOME=str(home)))
    server = Server(VLLM_MLX, f"http://127.0.0.1:{port}", str(model_dir), proc, work_dir / "vllm-mlx.log")
    _RUNNING.append(server)
    _wait_ready(server, lambda c: c.get(server.base_url + "/v1/models").status_code == 200, timeout_s)
    # Use the id it lists, whatever naming scheme this version has.
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        data = client.get(server.base_url + "/v1/models").json().get("data") or []
    if data:
        server.model = data[0]["id"]
    server.started_s = time.perf_counter() - t0
    return server


def descendants(server: Server) -> list[psutil.Process]:
    try:
        return psutil.Process(server.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        group = os.getpgid(pid)
        if group == os.getpgrp():  # never our own group (it cannot be, but a kill here is fatal)
            os.kill(pid, sig)
        else:
            os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop(server: Server, grace_s: float = 20.0) -> None:
    """SIGTERM the server's group (graceful), then SIGKILL whatever of its tree is still alive."""
    tree = descendants(server)
    if server.proc.poll() is None:
        _signal_group(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    # Children in their own sessions (Opta-LMX's gateway and workers) and anything left over.
    tree += [p for p in descendants(server) if p not in tree]
    for p in tree:
        try:
            if p.is_running():
                _signal_group(p.pid, signal.SIGKILL)
                p.kill()
        except psutil.NoSuchProcess:
            pass
    if server.proc.poll() is None:
        _signal_group(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    psutil.wait_procs(tree, timeout=5)
    if server in _RUNNING:
        _RUNNING.remove(server)


def stop_all() -> None:
    for server in list(_RUNNING):
        stop(server, grace_s=10.0)
