"""The async load driver (streaming chat completions over httpx) and the statistics of one level.

A level is closed-loop: ``concurrency`` client tasks each send a request, wait for its last byte,
and send the next, until ``requests`` have been sent. That is how CLIs and bots load a local
server, and it makes tokens/s comparable with the in-process batch loop, which keeps the same
number of sequences in flight.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

# The same conversation for every server and for the in-process limit (chat-templated there).
_SYSTEM = "You are a helpful assistant. Answer in plain prose."
_USER = "Write a short story about a lighthouse keeper who finds a message in a bottle."
_numbers = itertools.count(1)


def messages(unique: bool = True) -> list[dict[str, str]]:
    """One request's conversation.

    Unique by default: a request number leads the system prompt, so no server can answer from a
    prompt (prefix) cache. mlx_lm.server keeps one and the in-process engine and Opta-LMX do not;
    with identical prompts it would skip the prefill the others pay for (``--shared-prompt``
    measures exactly that). The fixed-width number keeps every prompt the same length.
    """
    number = f"Request {next(_numbers) % 100000:05d}. " if unique else ""
    return [{"role": "system", "content": number + _SYSTEM}, {"role": "user", "content": _USER}]


@dataclass
class RequestResult:
    """One request as the client saw it; times in seconds from the moment it was sent."""

    ok: bool
    latency_s: float
    ttft_s: float | None = None
    tokens: int = 0
    # "usage" when the server reported completion_tokens, else "chunks" (content deltas counted).
    token_source: str = "chunks"
    error: str | None = None


@dataclass
class LevelStats:
    """One repetition of one concurrency level: the figures the report quotes."""

    concurrency: int
    requests: int
    errors: int
    tokens: int
    wall_s: float
    tok_s: float
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    token_source: str = "usage"
    error_samples: list[str] = field(default_factory=list)
    # CPU cores kept busy during the level (CPU seconds / wall seconds), filled in by the caller:
    # the server's processes, this client, and everything else on the machine (plus VM steal).
    # On a 2-core box these say how much of the figure is the server and how much is noise.
    server_cpu_cores: float | None = None
    client_cpu_cores: float | None = None
    other_cpu_cores: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(
        cls,
        concurrency: int,
        ttfts: list[float],
        latencies: list[float],
        tokens: int,
        wall_s: float,
        token_source: str,
        errors: list[str] | None = None,
    ) -> LevelStats:
        """From per-request readings (seconds); ``errors`` are the failed requests' messages."""
        errors = errors or []
        samples: list[str] = []
        for error in errors:
            if error and error not in samples and len(samples) < 5:
                samples.append(error)
        return cls(
            concurrency=concurrency,
            requests=len(latencies) + len(errors),
            errors=len(errors),
            tokens=tokens,
            wall_s=wall_s,
            tok_s=tokens / wall_s if wall_s > 0 else 0.0,
            ttft_p50_ms=_ms(percentile(ttfts, 50)),
            ttft_p95_ms=_ms(percentile(ttfts, 95)),
            latency_p50_ms=_ms(percentile(latencies, 50)),
            latency_p95_ms=_ms(percentile(latencies, 95)),
            token_source=token_source,
            error_samples=samples,
        )


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000.0


def level_stats(concurrency: int, results: list[RequestResult], wall_s: float) -> LevelStats:
    """Aggregate request results; tokens of failed requests still count (they were generated)."""
    ttfts = [r.ttft_s for r in results if r.ok and r.ttft_s is not None]
    latencies = [r.latency_s for r in results if r.ok]
    tokens = sum(r.tokens for r in results)
    sources = {r.token_source for r in results if r.ok}
    source = "usage" if sources == {"usage"} else ("chunks" if sources else "none")
    errors = [r.error or "" for r in results if not r.ok]
    return LevelStats.of(concurrency, ttfts, latencies, tokens, wall_s, source, errors)


def median_stats(reps: list[LevelStats]) -> dict[str, Any]:
    """The median of each figure over repetitions; errors are summed (any failure counts)."""
    def med(name: str) -> float | None:
        values = [getattr(r, name) for r in reps if getattr(r, name) is not None]
        return statistics.median(values) if values else None

    samples: list[str] = []
    for r in reps:
        for s in r.error_samples:
            if s not in samples and len(samples) < 5:
                samples.append(s)
    return {
        "concurrency": reps[0].concurrency,
        "requests": reps[0].requests,
        "reps": len(reps),
        "tok_s": med("tok_s"),
        "ttft_p50_ms": med("ttft_p50_ms"),
        "ttft_p95_ms": med("ttft_p95_ms"),
        "latency_p50_ms": med("latency_p50_ms"),
        "latency_p95_ms": med("latency_p95_ms"),
        "errors": sum(r.errors for r in reps),
        "token_source": reps[0].token_source,
        "server_cpu_cores": med("server_cpu_cores"),
        "client_cpu_cores": med("client_cpu_cores"),
        "other_cpu_cores": med("other_cpu_cores"),
        "tok_s_reps": [r.tok_s for r in reps],
        "error_samples": samples,
    }


def chat_body(model: str, max_tokens: int, stream: bool = True, unique: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": messages(unique),
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def stream_one(
    client: httpx.AsyncClient, url: str, body: dict[str, Any]
) -> RequestResult:
    """Send one streaming chat request; TTFT is the first non-empty content delta, latency the
    time to ``[DONE]``."""
    start = time.perf_counter()
    ttft: float | None = None
    chunks = 0
    usage_tokens: int | None = None
    done = False
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode("utf-8", "replace")
                return RequestResult(
                    ok=False,
                    latency_s=time.perf_counter() - start,
                    error=f"HTTP {response.status_code}: {text[:300]}",
                )
            lines = response.aiter_lines()
            async for line in lines:
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done = True
                    latency = time.perf_counter() - start
                    # Read the response to its end, as the openai SDK does: a response closed
                    # unread makes httpx drop the connection, and every request would pay for a
                    # new one (a TCP handshake, and a new connection in the server).
                    async for _ in lines:
                        pass
                    break
                event = json.loads(payload)
                if "error" in event:
                    # A terminal error event inside a started stream (HTTP status was already 200).
                    return RequestResult(
                        ok=False,
                        latency_s=time.perf_counter() - start,
                        ttft_s=ttft,
                        tokens=usage_tokens if usage_tokens is not None else chunks,
                        error=f"stream error event: {json.dumps(event['error'])[:300]}",
                    )
                for choice in event.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        chunks += 1
                        if ttft is None:
                            ttft = time.perf_counter() - start
                usage = event.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    usage_tokens = int(usage["completion_tokens"])
    except (httpx.HTTPError, json.JSONDecodeError, OSError) as exc:
        return RequestResult(
            ok=False,
            latency_s=time.perf_counter() - start,
            ttft_s=ttft,
            tokens=chunks,
            error=f"{type(exc).__name__}: {exc}"[:300],
        )
    tokens = usage_tokens if usage_tokens is not None else chunks
    source = "usage" if usage_tokens is not None else "chunks"
    if not done:
        elapsed = time.perf_counter() - start
        return RequestResult(False, elapsed, ttft, tokens, source, "stream ended without [DONE]")
    return RequestResult(True, latency, ttft, tokens, source)


async def run_level(
    base_url: str,
    model: str,
    concurrency: int,
    requests: int,
    max_tokens: int,
    timeout_s: float,
    unique_prompts: bool = True,
) -> LevelStats:
    """Closed-loop load: ``concurrency`` tasks share ``requests`` requests; wall time to the last."""
    url = base_url.rstrip("/") + "/v1/chat/completions"
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    timeout = httpx.Timeout(timeout_s, connect=10.0)
    results: list[RequestResult] = []
    remaining = requests

    async def client_task(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1  # single-threaded event loop: no lock needed
            body = chat_body(model, max_tokens, unique=unique_prompts)
            results.append(await stream_one(client, url, body))

    # trust_env=False: never route 127.0.0.1 through a proxy from the environment.
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_task(client) for _ in range(min(concurrency, requests))))
        wall = time.perf_counter() - start
    return level_stats(concurrency, results, wall)


async def warm_up(
    base_url: str, model: str, max_tokens: int, timeout_s: float, n: int = 2, unique_prompts: bool = True
) -> list[str]:
    """A few untimed requests (kernel compilation, lazy loads); returns their errors, if any."""
    url = base_url.rstrip("/") + "/v1/chat/completions"
    errors: list[str] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0), trust_env=False) as client:
        for _ in range(n):
            result = await stream_one(client, url, chat_body(model, max_tokens, unique=unique_prompts))
            if not result.ok and result.error:
                errors.append(result.error)
    return errors
