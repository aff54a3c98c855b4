"""Process-level measurements: resident memory of a server's processes, and Opta-LMX crash recovery.

Processes are found among the server's descendants by command line (``opta_lmx.gateway``,
``opta_lmx.worker``), the way an operator would find them with ``ps``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from typing import Any

import httpx
import psutil

from bench.load import chat_body
from bench.servers import Server, venv_bin, descendants, log_tail

GATEWAY = "opta_lmx.gateway"
WORKER = "opta_lmx.worker"
MB = 1024 * 1024


def find(server: Server, pattern: str) -> list[psutil.Process]:
    found = []
    for p in descendants(server):
        try:
            if pattern in " ".join(p.cmdline()):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def rss_mb(server: Server, pattern: str | None = None) -> float | None:
    """Summed RSS in MiB of the matching descendants (or of the whole tree when no pattern)."""
    if pattern is None:
        procs = [psutil.Process(server.proc.pid), *descendants(server)]
    else:
        procs = find(server, pattern)
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / MB if procs else None


def worker_status(server: Server) -> dict[str, float] | None:
    """The serving worker's pid and its last heartbeat's MLX figures (MiB), from ``lmxctl status -v``.

    Asked of the supervisor rather than guessed from command lines: a warm spare is also an
    ``opta_lmx.worker`` process, and a spare promoted to serve a model keeps its ``--spare``
    command line.
    """
    if server.home is None:
        return None
    try:
        done = subprocess.run(
            [venv_bin("lmxctl"), "status", "-v", server.model],
            env=dict(os.environ, OPTA_LMX_HOME=str(server.home)),
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    pid = re.search(r"\bpid (\d+)", done.stdout)
    if pid is None:
        return None
    status: dict[str, float] = {"pid": int(pid.group(1))}
    memory = re.search(r"mlx active (\d+) MiB, mlx cache (\d+) MiB", done.stdout)
    if memory:
        status["mlx_active_mb"], status["mlx_cache_mb"] = map(float, memory.groups())
    return status


def serving_worker_pid(server: Server) -> int | None:
    status = worker_status(server)
    return int(status["pid"]) if status else None


def _rss(pids: list[int]) -> float | None:
    total, found = 0, False
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
            found = True
        except psutil.NoSuchProcess:
            pass
    return total / MB if found else None


def memory_snapshot(server: Server) -> dict[str, float | None]:
    """Gateway, serving worker, warm spare and whole-tree RSS, and what MLX holds in the worker:
    arrays in use (weights, KV caches, the prompt cache) and freed buffers kept for reuse (the
    first five: Opta-LMX only; the MLX figures are the last heartbeat's, at most ~1 s old)."""
    status = worker_status(server) or {}
    worker = int(status["pid"]) if status else None
    spares = [p.pid for p in find(server, WORKER) if p.pid != worker]
    return {
        "gateway_rss_mb": rss_mb(server, GATEWAY),
        "worker_rss_mb": _rss([worker]) if worker else None,
        "worker_mlx_active_mb": status.get("mlx_active_mb"),
        "worker_mlx_cache_mb": status.get("mlx_cache_mb"),
        "spare_rss_mb": _rss(spares) if spares else None,
        "tree_rss_mb": rss_mb(server),
    }


def wait_for_spare(server: Server, timeout_s: float) -> float | None:
    """Seconds until Opta-LMX's warm spare is ready (it imports mlx-lm after the model loads,
    taking CPU a measurement must not share), or None if none came within ``timeout_s``."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if _spares_ready(server):
            return time.perf_counter() - start
        time.sleep(0.1)
    return None


def wait_quiet(server: Server, timeout_s: float, cores: float = 0.1, window_s: float = 1.0) -> float | None:
    """Seconds until the server's processes use less than ``cores`` of CPU over ``window_s``
    (a new warm spare imported, a stopped worker's caches written), or None if they did not
    within ``timeout_s``: a measurement after a restart must not share the CPU with its wake."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        meter = CpuMeter(server)
        time.sleep(window_s)
        if meter.cores().get("server_cpu_cores", cores) < cores:
            return time.perf_counter() - start
    return None


class CpuMeter:
    """CPU seconds of the server's processes, of this process, and of the whole machine.

    Read before and after a level; ``cores`` turns the differences into busy cores so a reader
    can tell a slow server from a busy machine (other tests share this box).
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self._pids = {p.pid for p in descendants(server)}
        self._start = self._read()

    def _read(self) -> tuple[float, float, float, float]:
        procs = [psutil.Process(self.server.proc.pid), *descendants(self.server)]
        server_cpu = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                server_cpu += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        me = psutil.Process().cpu_times()
        total = psutil.cpu_times()
        idle = total.idle + getattr(total, "iowait", 0.0)
        busy = sum(total) - idle - getattr(total, "guest", 0.0) - getattr(total, "guest_nice", 0.0)
        return time.perf_counter(), server_cpu, me.user + me.system, busy

    def cores(self) -> dict[str, float]:
        end = self._read()
        wall = end[0] - self._start[0]
        server, client, busy = (end[i] - self._start[i] for i in (1, 2, 3))
        if wall <= 0:
            return {}
        if server < 0 or not self._pids <= {p.pid for p in descendants(self.server)}:
            # A server process exited during the level (a worker killed and restarted): its CPU
            # time left with it, so neither the server's share nor the rest can be told.
            return {"client_cpu_cores": client / wall}
        return {
            "server_cpu_cores": server / wall,
            "client_cpu_cores": client / wall,
            "other_cpu_cores": max(0.0, busy - server - client) / wall,
        }


def _health(client: httpx.Client, server: Server) -> str | None:
    try:
        return client.get(server.base_url + "/health").json().get("models", {}).get(server.model)
    except (httpx.HTTPError, ValueError):
        return None


class _HealthWatch:
    """Polls /health in a thread: when the gateway saw the worker leave RUNNING, and come back."""

    def __init__(self, server: Server, start: float, timeout_s: float) -> None:
        self.server = server
        self.start = start
        self.timeout_s = timeout_s
        self.left_running_s: float | None = None
        self.back_running_s: float | None = None
        self.states: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while not self._stop.is_set() and time.perf_counter() - self.start < self.timeout_s:
                state = _health(client, self.server)
                now = time.perf_counter() - self.start
                if state is not None and (not self.states or self.states[-1] != state):
                    self.states.append(state)
                if self.left_running_s is None and state not in ("RUNNING", None):
                    self.left_running_s = now
                elif self.left_running_s is not None and state == "RUNNING":
                    self.back_running_s = now
                    return
                time.sleep(0.02)

    def finish(self, wait_s: float) -> None:
        self._thread.join(wait_s)
        self._stop.set()
        self._thread.join()


def crash_recovery(server: Server, timeout_s: float = 120.0) -> dict[str, Any]:
    """SIGKILL the worker, then time until a chat request succeeds again.

    Requests are sent back to back (non-streaming, 4 tokens) from the moment of the kill; every
    failed attempt is recorded with its status and body, since what clients see during the outage
    matters as much as its length. /health is watched alongside.
    """
    old_pid = serving_worker_pid(server)
    if old_pid is None:
        return {"measured": False, "reason": "lmxctl status reported no worker pid"}
    body = chat_body(server.model, 4, stream=False)
    url = server.base_url + "/v1/chat/completions"
    attempts: list[dict[str, Any]] = []
    recovered_s: float | None = None
    with httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0), trust_env=False) as client:
        start = time.perf_counter()
        os.kill(old_pid, signal.SIGKILL)
        watch = _HealthWatch(server, start, timeout_s)
        while time.perf_counter() - start < timeout_s:
            sent = time.perf_counter() - start
            retry_after = None
            try:
                response = client.post(url, json=body)
                status, text = response.status_code, response.text
                retry_after = response.headers.get("retry-after")
            except httpx.HTTPError as exc:
                status, text = None, f"{type(exc).__name__}: {exc}"
            now = time.perf_counter() - start
            attempts.append({
                "sent_s": round(sent, 4), "done_s": round(now, 4), "status": status,
                "retry_after": retry_after, "body": text[:800],
            })
            if status == 200:
                recovered_s = now
                break
            time.sleep(0.05)
        watch.finish(wait_s=5.0)
    new_pid = serving_worker_pid(server)
    failed = [a for a in attempts if a["status"] != 200]
    return {
        "measured": True,
        "recovery_s": recovered_s,
        "health_left_running_s": watch.left_running_s,
        "health_back_running_s": watch.back_running_s,
        "health_states": watch.states,
        "old_worker_pid": old_pid,
        "new_worker_pid": new_pid,
        "attempts": len(attempts),
        "failed_attempts": failed[:10],
        "worker_log_tail": log_tail(server.home / "logs" / "bench.log", 8) if server.home else "",
    }


SWAP_MODEL = "bench-swap"  # the same weights under a second name, not loaded at start


def _spares_ready(server: Server) -> int:
    try:
        return server.log_path.read_text(encoding="utf-8", errors="replace").count("warm spare ready")
    except OSError:
        return 0


def _first_token_s(client: httpx.Client, server: Server, model: str) -> float:
    start = time.perf_counter()
    with client.stream("POST", server.base_url + "/v1/chat/completions", json=chat_body(model, 4, stream=True)) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                return time.perf_counter() - start
    raise RuntimeError("the stream ended without content")


def hot_swap(server: Server, bare_load_s: float | None, reps: int = 3, timeout_s: float = 120.0) -> dict[str, Any]:
    """Time to first token of a model that is not loaded, while ``bench`` stays loaded (the
    supervisor loads it on demand, adopting the warm spare), against the model's bare load time
    (``mlx_lm.load`` in the in-process child). Each repetition waits for a fresh spare first,
    then stops the model again with ``lmxctl stop``. The same request's first token on the loaded
    ``bench`` is timed just before each swap: on a model whose prefill takes seconds, the swap's
    first token includes that prefill too."""
    samples: list[float] = []
    loaded: list[float] = []
    env = dict(os.environ, OPTA_LMX_HOME=str(server.home))
    with httpx.Client(timeout=httpx.Timeout(timeout_s, connect=5.0), trust_env=False) as client:
        for rep in range(reps):
            deadline = time.perf_counter() + timeout_s
            while _spares_ready(server) < rep + 1:  # one spare at start, then one after each adoption
                if time.perf_counter() > deadline:
                    return {"measured": False, "reason": "no warm spare became ready", "ttft_s": samples}
                time.sleep(0.05)
            loaded.append(_first_token_s(client, server, server.model))
            samples.append(_first_token_s(client, server, SWAP_MODEL))
            subprocess.run([venv_bin("lmxctl"), "stop", SWAP_MODEL], env=env, capture_output=True, timeout=30)
    p50 = sorted(samples)[len(samples) // 2]
    loaded_p50 = sorted(loaded)[len(loaded) // 2]
    over_ms = (p50 - bare_load_s) * 1000 if bare_load_s is not None else None
    return {
        "measured": True,
        "ttft_s": [round(s, 4) for s in samples],
        "ttft_p50_s": round(p50, 4),
        "loaded_ttft_p50_s": round(loaded_p50, 4),
        "bare_load_s": bare_load_s,
        "over_load_ms": round(over_ms, 1) if over_ms is not None else None,
        "target_ms": 300,
        "met": over_ms is not None and over_ms <= 300,
    }
