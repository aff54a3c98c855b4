"""``/metrics`` through a real server, parsed with prometheus-client's own parser: the counters
move by exactly the traffic sent, a SIGKILLed worker counts as a restart with its cause, the
queue gauges follow requests in flight, and a load that evicts another model is a swap."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import NO_EOS, Server, served

MB = 1 << 20
# Two models fit in the budget, a third does not (each estimate is dominated by the overhead).
CONFIG = f"""
[supervisor]
heartbeat_interval = 0.2
heartbeat_misses = 25
backoff_initial = 0.2

[memory]
budget = {1000 * MB}
kv_headroom = 0
process_overhead = {400 * MB}

[[models]]
name = "tiny"
path = "{{path}}"

[[models]]
name = "slow"
path = "{{path}}"
engine = "tests.support.engines:SlowEngine"
[models.options]
batch_size = 1

[[models]]
name = "lazy"
path = "{{path}}"
load_on_start = false
"""
MESSAGES = [{"role": "user", "content": "hello"}]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def metrics_server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Server]:
    states = {"tiny": "RUNNING", "slow": "RUNNING", "lazy": "STOPPED"}
    with served(tmp_path_factory.mktemp("metrics"), CONFIG.format(path=tiny_model), states) as server:
        yield server


def scrape(server: Server) -> Samples:
    response = httpx.get(f"{server.base_url}/metrics", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {key: v - before.get(key, 0.0) for key, v in after.items() if v != before.get(key, 0.0)}


def requests(route: str, model: str, dialect: str, status: int) -> tuple[str, frozenset[tuple[str, str]]]:
    labels = {"model": model, "route": route, "dialect": dialect, "status": str(status)}
    return ("opta_lmx_requests_total", frozenset(labels.items()))


def test_counters_move_by_exactly_the_traffic(metrics_server: Server) -> None:
    url = metrics_server.base_url
    with openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0) as client:
        check_counters_against_traffic(metrics_server, client)


def check_counters_against_traffic(metrics_server: Server, client: openai.OpenAI) -> None:
    url = metrics_server.base_url
    before = scrape(metrics_server)

    # tiny: OpenAI chat only, so its counters are checked against the usage OpenAI's shape reports.
    tiny = Counter()
    texts: list[tuple[str, int]] = []  # (text, completion tokens) per generation
    for _ in range(3):
        reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, logit_bias=NO_EOS)
        tiny.update(prompt=reply.usage.prompt_tokens, completion=reply.usage.completion_tokens)
        tiny.update(cached=reply.usage.prompt_tokens_details.cached_tokens)
        texts.append((reply.choices[0].message.content or "", reply.usage.completion_tokens))
    for _ in range(2):
        chunks = list(client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=3, logit_bias=NO_EOS, stream=True, stream_options={"include_usage": True}
        ))
        usage = chunks[-1].usage
        tiny.update(prompt=usage.prompt_tokens, completion=usage.completion_tokens, cached=usage.prompt_tokens_details.cached_tokens)
        texts.append(("".join(c.choices[0].delta.content or "" for c in chunks if c.choices), usage.completion_tokens))

    # slow: the other dialects.
    slow = Counter()
    text = client.completions.create(model="slow", prompt="hello", max_tokens=3)
    slow.update(prompt=text.usage.prompt_tokens, completion=text.usage.completion_tokens)
    with anthropic.Anthropic(base_url=url, api_key="none", max_retries=0) as anthropic_client:
        claude = anthropic_client.messages.create(model="slow", max_tokens=3, messages=MESSAGES)
    slow.update(prompt=claude.usage.input_tokens + claude.usage.cache_read_input_tokens, completion=claude.usage.output_tokens)
    ollama = httpx.post(f"{url}/api/chat", json={"model": "slow", "messages": MESSAGES, "stream": False, "options": {"num_predict": 3}}, timeout=60).json()
    slow.update(prompt=ollama["prompt_eval_count"], completion=ollama["eval_count"])

    # Refused before any model was resolved.
    unknown = httpx.post(f"{url}/v1/chat/completions", json={"model": "nope", "messages": MESSAGES}, timeout=60)
    invalid = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES, "n": 17}, timeout=60)
    assert (unknown.status_code, invalid.status_code) == (404, 400)

    after = scrape(metrics_server)
    moved = delta(before, after)
    assert {k: v for k, v in moved.items() if k[0] == "opta_lmx_requests_total"} == {
        requests("/v1/chat/completions", "tiny", "openai", 200): 5,
        requests("/v1/completions", "slow", "openai", 200): 1,
        requests("/v1/messages", "slow", "anthropic", 200): 1,
        requests("/api/chat", "slow", "ollama", 200): 1,
        requests("/v1/chat/completions", "", "openai", 404): 1,
        requests("/v1/chat/completions", "", "openai", 400): 1,
        requests("/metrics", "", "admin", 200): 1,  # the scrape before
    }
    for model, counts in (("tiny", tiny), ("slow", slow)):
        assert value(moved, "opta_lmx_prompt_tokens_total", model=model) == counts["prompt"]
        assert value(moved, "opta_lmx_completion_tokens_total", model=model) == counts["completion"]
    assert value(moved, "opta_lmx_cached_prompt_tokens_total", model="tiny") == tiny["cached"] > 0
    # One time to first token per generation that wrote something; one inter-token time per
    # generation with two tokens or more.
    assert value(moved, "opta_lmx_time_to_first_token_seconds_count", model="tiny") == sum(1 for t, _ in texts if t)
    assert value(moved, "opta_lmx_inter_token_seconds_count", model="tiny") == sum(1 for t, n in texts if t and n > 1)
    assert value(moved, "opta_lmx_request_duration_seconds_count", model="tiny", route="/v1/chat/completions") == 5
    assert value(moved, "opta_lmx_request_duration_seconds_count", model="slow", route="/api/chat") == 1
    assert value(after, "opta_lmx_requests_in_flight", model="tiny") == 0
    assert value(after, "opta_lmx_request_queue_limit", model="slow") == 1 + 256

    summary = httpx.get(f"{url}/admin/metrics.json", timeout=30).json()
    tiny_summary = summary["models"]["tiny"]
    assert tiny_summary["tokens"]["completion"] == value(after, "opta_lmx_completion_tokens_total", model="tiny")
    assert tiny_summary["requests"]["by_status"]["200"] == after[requests("/v1/chat/completions", "tiny", "openai", 200)]
    assert tiny_summary["state"] == "RUNNING" and summary["supervisor_up"] is True
    assert summary["memory_bytes"]["budget"] == 1000 * MB


def test_a_killed_worker_counts_as_a_restart_with_its_cause(metrics_server: Server) -> None:
    before = scrape(metrics_server)
    pid = metrics_server.worker_pid("slow")
    body = {"model": "slow", "messages": MESSAGES, "max_tokens": 100_000, "logit_bias": NO_EOS, "stream": True}
    events: list[str] = []
    with httpx.stream("POST", f"{metrics_server.base_url}/v1/chat/completions", json=body, timeout=120) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(line)
                if len(events) == 3:
                    os.kill(pid, signal.SIGKILL)
    assert '"worker_crashed"' in events[-1]
    metrics_server.wait_models({"tiny": "RUNNING", "slow": "RUNNING", "lazy": "STOPPED"})
    assert metrics_server.worker_pid("slow") != pid
    moved = delta(before, scrape(metrics_server))
    restarts = {dict(k[1])["cause"]: v for k, v in moved.items() if k[0] == "opta_lmx_worker_restarts_total"}
    assert restarts == {"crash": 1}
    assert value(moved, "opta_lmx_model_load_seconds_count", model="slow") == 1
    # The stream got its headers (200), then an error event: it counts as the error's status.
    assert requests("/v1/chat/completions", "slow", "openai", 503) in moved


def test_queue_gauges_follow_the_requests_in_flight(metrics_server: Server) -> None:
    body = {"model": "slow", "messages": MESSAGES, "max_tokens": 100_000, "logit_bias": NO_EOS, "stream": True}
    url = f"{metrics_server.base_url}/v1/chat/completions"
    before = scrape(metrics_server)
    with httpx.Client(timeout=120) as a, httpx.Client(timeout=120) as b, httpx.Client(timeout=120) as c:
        streams = [client.stream("POST", url, json=body) for client in (a, b, c)]
        for stream in streams:
            assert stream.__enter__().status_code == 200  # the worker accepted it
        during = scrape(metrics_server)
        assert value(during, "opta_lmx_requests_in_flight", model="slow") == 3
        assert value(during, "opta_lmx_requests_queued", model="slow") == 2  # batch_size = 1
        metrics_server.wait_in_flight("slow", 3)
        verbose = subprocess.run(
            [sys.executable, "-m", "opta_lmx.ctl", "status", "-v", "slow"], env=metrics_server.env, capture_output=True, text=True
        )
        assert "requests: 3 at the worker, 2 of them waiting for a batch slot" in verbose.stdout, verbose.stdout
        for stream in streams:
            stream.__exit__(None, None, None)  # the clients leave
    metrics_server.wait_in_flight("slow", 0)
    after = scrape(metrics_server)
    assert value(after, "opta_lmx_requests_in_flight", model="slow") == 0
    assert delta(before, after)[requests("/v1/chat/completions", "slow", "openai", 499)] == 3  # they left first


def test_a_load_that_evicts_is_a_swap_and_the_estimate_said_so(metrics_server: Server) -> None:
    estimate = httpx.get(f"{metrics_server.base_url}/admin/memory", params={"model": "lazy"}, timeout=30).json()["estimate"]
    assert estimate["fits"] and len(estimate["evict"]) == 1
    (victim,) = estimate["evict"]
    shown = subprocess.run(
        [sys.executable, "-m", "opta_lmx.ctl", "memory", "lazy"], env=metrics_server.env, capture_output=True, text=True
    )
    assert f"fits after evicting {victim}" in shown.stdout, shown.stdout
    before = scrape(metrics_server)
    with openai.OpenAI(base_url=f"{metrics_server.base_url}/v1", api_key="none", max_retries=0) as client:
        assert client.chat.completions.create(model="lazy", messages=MESSAGES, max_tokens=2, logit_bias=NO_EOS).choices
    after = scrape(metrics_server)
    moved = delta(before, after)
    assert value(moved, "opta_lmx_model_swap_seconds_count", model="lazy") == 1
    assert value(moved, "opta_lmx_worker_stops_total", model=victim, cause="evicted") == 1
    assert value(after, "opta_lmx_worker_state", model=victim, state="STOPPED") == 1
    assert value(after, "opta_lmx_worker_state", model="lazy", state="RUNNING") == 1
    status = httpx.get(f"{metrics_server.base_url}/admin/models/lazy", timeout=30).json()["status"]
    assert status["evicted"] == [victim] and status["evict_seconds"] > 0
