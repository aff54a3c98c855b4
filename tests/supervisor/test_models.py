"""Many models under one supervisor: JIT loads, admission, eviction, swaps, hangs, lmxctl."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest

from tests.conftest import NO_EOS, Server, model_config

MESSAGES = [{"role": "user", "content": "hello"}]
MB = 1 << 20
FAST = "[supervisor]\nheartbeat_interval = 0.2\nheartbeat_misses = 25\nbackoff_initial = 0.2\n"
SLOW = 'engine = "tests.support.engines:SlowEngine"'


_clients: list[openai.OpenAI] = []


def client_for(server: Server) -> openai.OpenAI:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0, timeout=120)
    _clients.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients():
    yield
    while _clients:
        _clients.pop().close()


def ctl(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opta_lmx.ctl", *args], env=server.env, capture_output=True, text=True, timeout=120
    )


def models_block(models: dict[str, tuple[Path, str]]) -> str:
    return "".join(f'\n[[models]]\nname = "{n}"\npath = "{p}"\n{extra}\n' for n, (p, extra) in models.items())


def memory_block(budget_mb: int, overhead_mb: int) -> str:
    # Estimates dominated by a fixed per-process cost, so that "one fits, two do not" holds no
    # matter how big the tiny model's files are.
    return f"[memory]\nbudget = {budget_mb * MB}\nkv_headroom = 0\nprocess_overhead = {overhead_mb * MB}\n"


def test_two_models_at_once_interleave(make_server, tiny_model: Path, tmp_path: Path) -> None:
    from opta_lmx.demo.builder import build_demo_model

    other = build_demo_model(tmp_path / "other", "tiny", seed=1)
    server: Server = make_server(model_config({"a": tiny_model, "b": other}))
    server.wait_models()
    client = client_for(server)

    def ask(model: str) -> str:
        reply = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=20, temperature=0)
        assert reply.model == model
        return reply.choices[0].message.content or ""

    alone = {m: ask(m) for m in ("a", "b")}
    assert alone["a"] != alone["b"]  # different weights, different greedy text
    with ThreadPoolExecutor(6) as pool:
        mixed = list(pool.map(ask, ["a", "b"] * 3))
    assert mixed == [alone["a"], alone["b"]] * 3


def test_jit_load_is_shared_by_concurrent_first_requests(make_server, tiny_model: Path) -> None:
    server: Server = make_server(FAST + models_block({"lazy": (tiny_model, "load_on_start = false")}))
    health = server.wait_models({"lazy": "STOPPED"})
    assert health["models"] == {"lazy": "STOPPED"}
    client = client_for(server)
    with ThreadPoolExecutor(4) as pool:
        replies = list(
            pool.map(
                lambda _: client.chat.completions.create(model="lazy", messages=MESSAGES, max_tokens=3, logit_bias=NO_EOS),
                range(4),
            )
        )
    assert [r.usage.completion_tokens for r in replies] == [3] * 4
    assert server.log().count("lazy: STARTING (spawning)") == 1


def test_streaming_request_for_a_cold_model_loads_it(make_server, tiny_model: Path) -> None:
    server: Server = make_server(FAST + models_block({"lazy": (tiny_model, "load_on_start = false")}))
    server.wait_models({"lazy": "STOPPED"})
    chunks = list(
        client_for(server).chat.completions.create(model="lazy", messages=MESSAGES, max_tokens=5, stream=True, logit_bias=NO_EOS)
    )
    assert chunks[-1].choices[0].finish_reason == "length"


def test_keep_alive_unloads_idle_model_and_next_request_reloads(make_server, tiny_model: Path) -> None:
    server: Server = make_server(FAST + models_block({"brief": (tiny_model, "keep_alive = 1")}))
    server.wait_models()
    client = client_for(server)
    client.chat.completions.create(model="brief", messages=MESSAGES, max_tokens=2)
    server.wait_models({"brief": "STOPPED"}, timeout=15)
    status = ctl(server, "status", "brief")
    assert status.returncode == 3 and "idle (keep_alive)" in status.stdout
    reply = client.chat.completions.create(model="brief", messages=MESSAGES, max_tokens=2, logit_bias=NO_EOS)
    assert reply.usage.completion_tokens == 2


def test_admission_evicts_the_idle_model(make_server, tiny_model: Path) -> None:
    config = FAST + memory_block(budget_mb=600, overhead_mb=400) + models_block(
        {"first": (tiny_model, ""), "second": (tiny_model, "load_on_start = false")}
    )
    server: Server = make_server(config)
    server.wait_models({"first": "RUNNING", "second": "STOPPED"})
    reply = client_for(server).chat.completions.create(model="second", messages=MESSAGES, max_tokens=2, logit_bias=NO_EOS)
    assert reply.usage.completion_tokens == 2
    health = server.wait_models({"first": "STOPPED", "second": "RUNNING"})
    assert health["models"] == {"first": "STOPPED", "second": "RUNNING"}
    assert "evicted to make room for second" in ctl(server, "status", "first").stdout


def _busy_stream(server: Server) -> tuple[Any, Iterator[Any]]:
    """A stream on the model "busy", once its heartbeat shows it busy."""
    stream = client_for(server).chat.completions.create(model="busy", messages=MESSAGES, max_tokens=100_000, stream=True, logit_bias=NO_EOS)
    iterator = iter(stream)
    next(iterator)
    deadline = time.monotonic() + 10
    while "1 in flight" not in ctl(server, "status", "busy").stdout:  # the heartbeat saw it busy
        assert time.monotonic() < deadline
        next(iterator)
    return stream, iterator


def test_busy_model_is_never_evicted_and_the_load_is_refused_with_507_after_waiting(make_server, tiny_model: Path) -> None:
    config = FAST + memory_block(budget_mb=600, overhead_mb=400) + "wait_for_room = 1.5\n" + models_block(
        {"busy": (tiny_model, SLOW), "other": (tiny_model, "load_on_start = false")}
    )
    server: Server = make_server(config)
    server.wait_models({"busy": "RUNNING", "other": "STOPPED"})
    stream, iterator = _busy_stream(server)
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions", json={"model": "other", "messages": MESSAGES}, timeout=60
    )
    assert response.status_code == 507
    error = response.json()["error"]
    assert error["code"] == "insufficient_memory"
    assert re.search(r"needs about \d+ MiB and \d+ MiB of the 600 MiB budget is free .*after waiting \d+s", error["message"])
    assert next(iterator).choices  # the busy model kept streaming
    stream.close()


def test_a_load_waits_for_a_busy_model_to_finish_then_evicts_it(make_server, tiny_model: Path) -> None:
    config = FAST + memory_block(budget_mb=600, overhead_mb=400) + models_block(
        {"busy": (tiny_model, SLOW), "other": (tiny_model, "load_on_start = false")}
    )
    server: Server = make_server(config)
    server.wait_models({"busy": "RUNNING", "other": "STOPPED"})
    stream, iterator = _busy_stream(server)
    waiting: dict[str, Any] = {}

    def ask_other() -> None:
        waiting["reply"] = client_for(server).chat.completions.create(model="other", messages=MESSAGES, max_tokens=2, logit_bias=NO_EOS)

    thread = threading.Thread(target=ask_other)
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive() and next(iterator).choices  # the load waits; the busy model streams on
    stream.close()  # its request ends: the model goes idle, and the waiting load evicts it
    thread.join(timeout=60)
    assert waiting["reply"].usage.completion_tokens == 2
    assert server.wait_models({"busy": "STOPPED", "other": "RUNNING"})["models"] == {"busy": "STOPPED", "other": "RUNNING"}
    assert "evicted to make room for other" in ctl(server, "status", "busy").stdout


def test_a_request_waiting_for_a_restart_is_served_though_another_load_evicts_its_model(make_server, tiny_model: Path) -> None:
    # A crashed worker waits out its backoff; a request for it waits too. A load of another model
    # evicts it meanwhile (a worker in backoff is idle): the request asks again and is served.
    config = "[supervisor]\nheartbeat_interval = 0.2\nheartbeat_misses = 25\nbackoff_initial = 4\n" + memory_block(budget_mb=600, overhead_mb=400) + models_block(
        {"crashy": (tiny_model, ""), "other": (tiny_model, "load_on_start = false")}
    )
    server: Server = make_server(config)
    server.wait_models({"crashy": "RUNNING", "other": "STOPPED"})
    assert ctl(server, "kill", "crashy", "KILL").returncode == 0
    server.wait_models({"crashy": "BACKOFF", "other": "STOPPED"})
    with ThreadPoolExecutor(2) as pool:
        waiting = pool.submit(lambda: client_for(server).chat.completions.create(model="crashy", messages=MESSAGES, max_tokens=2, logit_bias=NO_EOS))
        time.sleep(0.5)
        other = client_for(server).chat.completions.create(model="other", messages=MESSAGES, max_tokens=2, logit_bias=NO_EOS)
        assert other.usage.completion_tokens == 2
        assert "evicted to make room for other" in server.log()
        assert waiting.result(timeout=90).usage.completion_tokens == 2
    assert server.wait_models({"crashy": "RUNNING", "other": "STOPPED"})["models"] == {"crashy": "RUNNING", "other": "STOPPED"}


def test_stopping_a_model_lets_its_running_stream_complete(make_server, tiny_model: Path) -> None:
    server: Server = make_server(FAST + models_block({"swap": (tiny_model, SLOW)}))
    server.wait_models()
    client = client_for(server)
    result: dict[str, object] = {}

    def long_stream() -> None:
        chunks = list(
            client.chat.completions.create(
                model="swap", messages=MESSAGES, max_tokens=150, stream=True, stream_options={"include_usage": True}
            )
        )
        result["finish"] = chunks[-2].choices[0].finish_reason
        result["tokens"] = chunks[-1].usage.completion_tokens
        result["text"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    streamer = threading.Thread(target=long_stream)
    streamer.start()
    deadline = time.monotonic() + 10
    while "1 in flight" not in ctl(server, "status", "swap").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stopped = ctl(server, "stop", "swap")
    streamer.join(60)
    assert stopped.returncode == 0 and "swap: stopped" in stopped.stdout
    # It completed normally: all 150 tokens, or fewer when the random model sampled its end token.
    assert result["finish"] in ("length", "stop") and result["text"]
    assert result["tokens"] == 150 if result["finish"] == "length" else 0 < result["tokens"] <= 150
    assert ctl(server, "status", "swap").returncode == 3


def test_a_request_that_comes_during_a_drain_waits_and_is_served(make_server, tiny_model: Path) -> None:
    # An eviction, an idle unload or a swap drains the worker; a request for the model that comes
    # meanwhile must not fail with "not ready": it waits for the drain and the model loads again.
    server: Server = make_server(FAST + models_block({"swap": (tiny_model, SLOW)}))
    server.wait_models()
    client = client_for(server)
    finished: list[str] = []

    def long_stream() -> None:
        stream = client.chat.completions.create(
            model="swap", messages=MESSAGES, max_tokens=60, stream=True, logit_bias=NO_EOS
        )
        finished.extend(c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason)

    streamer = threading.Thread(target=long_stream)
    streamer.start()
    server.wait_in_flight("swap", 1)
    stopper = threading.Thread(target=ctl, args=(server, "stop", "swap"))
    stopper.start()
    deadline = time.monotonic() + 10
    while "STOPPING" not in ctl(server, "status", "swap").stdout:
        assert time.monotonic() < deadline, ctl(server, "status", "swap").stdout
        time.sleep(0.05)
    reply = client.chat.completions.create(model="swap", messages=MESSAGES, max_tokens=3, logit_bias=NO_EOS)
    streamer.join(60)
    stopper.join(60)
    assert reply.usage.completion_tokens == 3
    assert finished == ["length"]  # the drained stream completed too
    assert ctl(server, "status", "swap").returncode == 0  # loaded again for the late request


def test_crash_loop_goes_fatal_and_lmxctl_start_clears_it(make_server, tiny_model: Path, tmp_path: Path) -> None:
    missing = tmp_path / "arrives-later"
    settings = "[supervisor]\nbackoff_initial = 0.1\nbackoff_max = 0.2\nmax_failures = 2\n"
    server: Server = make_server(settings + model_config({"flaky": missing}))
    server.wait_models({"flaky": "FATAL"})
    status = ctl(server, "status", "flaky")
    assert status.returncode == 3
    assert "load failed" in status.stdout and "gave up" in status.stdout
    assert "restarted (load_failed) 2" in ctl(server, "status", "-v", "flaky").stdout  # the third failure: FATAL
    shutil.copytree(tiny_model, missing)
    started = ctl(server, "start", "flaky")
    assert started.returncode == 0, started.stdout + started.stderr
    assert started.stdout.strip() == "flaky: started"
    assert ctl(server, "status", "flaky").returncode == 0


def test_hung_worker_is_killed_and_restarted(make_server, tiny_model: Path) -> None:
    settings = "[supervisor]\nheartbeat_interval = 0.2\nheartbeat_misses = 25\nhang_timeout = 1.5\nbackoff_initial = 0.2\n"
    server: Server = make_server(
        settings + models_block({"stuck": (tiny_model, 'engine = "tests.support.engines:StallingEngine"')})
    )
    server.wait_models()
    with pytest.raises(openai.APIError, match="stopped while serving this request"):
        client_for(server).chat.completions.create(model="stuck", messages=MESSAGES, max_tokens=50)
    server.wait_models()
    assert "hung: 1 requests and no progress" in server.log()
    verbose = ctl(server, "status", "-v", "stuck").stdout
    assert "restarted (hung) 1" in verbose and "last exit (hung" in verbose


def test_a_long_prefill_is_progress_not_a_hang(make_server, tiny_model: Path) -> None:
    # 4-token prompt chunks of 0.15 s each: the prefill takes ~2 s, past hang_timeout, before the
    # first token; the chunks it finishes keep the worker's progress moving.
    settings = "[supervisor]\nheartbeat_interval = 0.2\nheartbeat_misses = 25\nhang_timeout = 1.0\n"
    engine = 'engine = "tests.support.engines:SlowChunkPrefillEngine"\n[models.options]\nprefill_step_size = 4'
    server: Server = make_server(settings + models_block({"m": (tiny_model, engine)}))
    server.wait_models()
    started = time.monotonic()
    long_prompt = [{"role": "user", "content": "tell me about the sea and the lighthouse " * 8}]
    reply = client_for(server).chat.completions.create(model="m", messages=long_prompt, max_tokens=4)
    assert time.monotonic() - started > 1.5  # the prefill did outlast hang_timeout
    assert reply.usage.completion_tokens <= 4
    assert "hung" not in server.log()


def test_a_step_that_computes_past_hang_timeout_is_not_a_hang(make_server, tiny_model: Path) -> None:
    # One step busy for 2.5 s with no token or chunk finished: the worker's CPU time moves, so it
    # is working, not hung (a stuck worker, as in test_hung_worker_is_killed_and_restarted, uses
    # no CPU).
    settings = "[supervisor]\nheartbeat_interval = 0.2\nheartbeat_misses = 25\nhang_timeout = 1.0\n"
    engine = 'engine = "tests.support.engines:SpinningStepEngine"'
    server: Server = make_server(settings + models_block({"m": (tiny_model, engine)}))
    server.wait_models()
    reply = client_for(server).chat.completions.create(model="m", messages=MESSAGES, max_tokens=4)
    assert reply.usage.completion_tokens <= 4
    assert "hung" not in server.log()


def test_lmxctl_commands_and_exit_codes(make_server, tiny_model: Path) -> None:
    server: Server = make_server(FAST + model_config({"m": tiny_model}))
    server.wait_models()
    status = ctl(server, "status")
    assert status.returncode == 0
    assert re.match(r"m\s+RUNNING\s+pid \d+, uptime 0:00:\d\d, mem \d+ MiB, 0 in flight", status.stdout)

    assert ctl(server, "start", "m").stdout.strip() == "m: ERROR (already started)"
    assert ctl(server, "start", "nope").returncode == 4

    restarted = ctl(server, "restart", "m")
    assert (restarted.returncode, restarted.stdout.strip()) == (0, "m: started")

    stopped = ctl(server, "stop", "m")
    assert (stopped.returncode, stopped.stdout.strip()) == (0, "m: stopped")
    assert ctl(server, "status").returncode == 3
    assert ctl(server, "stop", "m").returncode == 2  # not running
    time.sleep(1)
    assert ctl(server, "status").returncode == 3  # an operator stop is never restarted
    assert ctl(server, "start", "m").returncode == 0

    pid_before = int(re.search(r"pid (\d+)", ctl(server, "status", "m").stdout).group(1))
    killed = ctl(server, "kill", "m", "KILL")
    assert (killed.returncode, killed.stdout.strip()) == (0, "m: signalled")
    server.wait_new_worker("m", pid_before)
    assert "sent SIGKILL by operator" in server.log() or "BACKOFF" in server.log()

    tail = ctl(server, "tail", "m")
    assert tail.returncode == 0

    assert ctl(server, "shutdown").stdout.strip() == "Shut down"
    assert server.proc is not None and server.proc.wait(15) == 0


def test_reload_adds_removes_and_refuses_bad_config(make_server, tiny_model: Path) -> None:
    server: Server = make_server(FAST + model_config({"keep": tiny_model, "drop": tiny_model}))
    server.wait_models()
    keep_pid = re.search(r"pid (\d+)", ctl(server, "status", "keep").stdout).group(1)

    server.write_config(FAST + model_config({"keep": tiny_model, "new": tiny_model}))
    reloaded = ctl(server, "reload")
    assert reloaded.returncode == 0, reloaded.stdout
    assert "drop: removed" in reloaded.stdout and "new: added" in reloaded.stdout
    health = server.wait_models({"keep": "RUNNING", "new": "RUNNING"})
    assert set(health["models"]) == {"keep", "new"}
    assert re.search(r"pid (\d+)", ctl(server, "status", "keep").stdout).group(1) == keep_pid
    models = [m.id for m in client_for(server).models.list().data]
    assert sorted(models) == ["keep", "new"]

    server.write_config("[server]\nbogus = 1\n")
    refused = ctl(server, "reload")
    assert refused.returncode == 2 and "bogus" in refused.stdout and "keeping the old one" in refused.stdout
    assert ctl(server, "status").returncode == 0


def test_silent_worker_is_killed_after_missed_heartbeats(make_server, tiny_model: Path) -> None:
    settings = "[supervisor]\nheartbeat_interval = 0.2\nheartbeat_misses = 5\nbackoff_initial = 0.2\n"
    server: Server = make_server(settings + model_config({"m": tiny_model}))
    server.wait_models()
    frozen = server.worker_pid("m")
    assert ctl(server, "kill", "m", "STOP").returncode == 0  # alive, but silent
    deadline = time.monotonic() + 20
    while "no heartbeat for" not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    server.wait_new_worker("m", frozen)  # the kill and the restart follow the log line
    assert "restarted (unresponsive) 1" in ctl(server, "status", "-v", "m").stdout


def test_memory_over_the_hard_limit_evicts_the_lru_idle_worker(make_server, tiny_model: Path) -> None:
    # Admission lets both in (tiny estimates); their measured memory then exceeds the hard limit.
    memory = "[memory]\nbudget = 300000000\nsoft_limit = 0.1\nhard_limit = 0.2\nhard_readings = 2\n"
    memory += "kv_headroom = 0\nprocess_overhead = 0\n"
    server: Server = make_server(FAST + memory + model_config({"old": tiny_model, "new": tiny_model}))
    server.wait_models()
    client = client_for(server)
    client.chat.completions.create(model="old", messages=MESSAGES, max_tokens=2)
    time.sleep(0.5)
    client.chat.completions.create(model="new", messages=MESSAGES, max_tokens=2)
    deadline = time.monotonic() + 30
    states = {}
    while time.monotonic() < deadline:
        states = httpx.get(f"{server.base_url}/health").json()["models"]
        if "STOPPED" in states.values():
            break
        time.sleep(0.2)
    assert "evicted: memory" in ctl(server, "status").stdout, (states, server.log())
    assert "last exit (evicted" in ctl(server, "status", "-v").stdout


def test_jit_load_takes_the_warm_spare_and_reports_the_time_split(make_server, tiny_model: Path) -> None:
    server: Server = make_server(FAST + models_block({"lazy": (tiny_model, "load_on_start = false")}))
    server.wait_models({"lazy": "STOPPED"})
    spare_pid = server.wait_spare()
    asked = time.monotonic()
    reply = client_for(server).chat.completions.create(model="lazy", messages=MESSAGES, max_tokens=2, logit_bias=NO_EOS)
    elapsed = time.monotonic() - asked
    assert reply.usage.completion_tokens == 2
    time.sleep(0.5)  # a heartbeat carries the first-token time
    status = ctl(server, "status", "-v", "lazy")
    assert f"pid {spare_pid}," in status.stdout  # the spare became the worker
    assert status.returncode == 0
    assert "warm spare" in server.log()
    times = re.search(
        r"spawn (\d+\.\d+)s, imports (\d+\.\d+)s, load (\d+\.\d+)s, first request's time to first token (\d+\.\d+)s",
        status.stdout,
    )
    assert times, status.stdout
    spawn, imports, load, first = map(float, times.groups())
    assert imports < 0.5  # paid by the spare before the load was asked for
    # Counted from the request's arrival at the loaded worker: the load is not in it.
    assert load + first <= elapsed
    memory = re.search(r"memory: uss (\d+) MiB, mlx active (\d+) MiB, mlx cache (\d+) MiB", status.stdout)
    assert memory, status.stdout
    uss, active, _ = map(int, memory.groups())
    assert uss > 20 and active <= uss  # a Python process with mlx imported; weights under 1 MiB


def test_swap_by_reload_drains_the_running_stream(make_server, tiny_model: Path, tmp_path: Path) -> None:
    from opta_lmx.demo.builder import build_demo_model

    replacement = build_demo_model(tmp_path / "v2", "tiny", seed=7)
    server: Server = make_server(FAST + models_block({"m": (tiny_model, SLOW)}))
    server.wait_models()
    client = client_for(server)
    old_text = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=8, temperature=0)
    chunks: list = []
    streamer = threading.Thread(
        target=lambda: chunks.extend(
            client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=120, stream=True)
        )
    )
    streamer.start()
    deadline = time.monotonic() + 10
    while "1 in flight" not in ctl(server, "status", "m").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    server.write_config(FAST + models_block({"m": (replacement, SLOW)}))
    reloaded = ctl(server, "reload")
    streamer.join(60)
    assert reloaded.returncode == 0 and "m: replaced" in reloaded.stdout
    assert chunks and chunks[-1].choices[0].finish_reason in ("length", "stop")  # completed, not cut
    server.wait_models()
    new_text = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=8, temperature=0)
    assert new_text.choices[0].message.content != old_text.choices[0].message.content  # new weights


def test_a_worker_idle_longer_than_hang_timeout_is_not_called_hung(make_server, tiny_model: Path) -> None:
    # The first step takes 0.8 s (a "prefill"), well under hang_timeout (a loaded machine can
    # stretch it); the idle time before it, longer than hang_timeout, does not count.
    settings = "[supervisor]\nheartbeat_interval = 0.2\nheartbeat_misses = 25\nhang_timeout = 2.0\n"
    engine = 'engine = "tests.support.engines:SlowPrefillEngine"'
    server: Server = make_server(settings + models_block({"m": (tiny_model, engine)}))
    server.wait_models()
    time.sleep(3.0)  # idle for more than hang_timeout
    reply = client_for(server).chat.completions.create(model="m", messages=MESSAGES, max_tokens=20)
    assert reply.usage.completion_tokens <= 20
    assert "hung" not in server.log()
