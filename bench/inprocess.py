"""The in-process limit: mlx-lm called directly on the same model, with the same load shape.

Concurrency 1 uses ``mlx_lm.stream_generate`` (what a single-user script does); higher levels use
``mlx_lm.generate.BatchGenerator`` in a closed loop (a finished sequence is replaced by a new one,
as a closed-loop HTTP client does), which is the ceiling a batching server can reach.

Runs in a child process (``InProcess`` below) so the harness itself never imports mlx: it must not
hold model memory, or run mlx threads, while servers are being driven.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from bench.load import LevelStats, messages


def _stats(concurrency: int, ttfts: list[float], latencies: list[float], tokens: int, wall: float) -> LevelStats:
    return LevelStats.of(concurrency, ttfts, latencies, tokens, wall, "engine")


def run_stream(model: Any, tokenizer: Any, requests: int, max_tokens: int, unique: bool = True) -> LevelStats:
    """Sequential ``stream_generate`` calls; the chat template is applied inside the timing."""
    from mlx_lm import stream_generate

    ttfts: list[float] = []
    latencies: list[float] = []
    tokens = 0
    start = time.perf_counter()
    for _ in range(requests):
        t0 = time.perf_counter()
        prompt = tokenizer.apply_chat_template(messages(unique), add_generation_prompt=True)
        first: float | None = None
        last = None
        for response in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens):
            if first is None:
                first = time.perf_counter() - t0
            last = response
        latencies.append(time.perf_counter() - t0)
        if first is not None:
            ttfts.append(first)
        tokens += last.generation_tokens if last is not None else 0
    return _stats(1, ttfts, latencies, tokens, time.perf_counter() - start)


def run_batch(
    model: Any, tokenizer: Any, concurrency: int, requests: int, max_tokens: int, unique: bool = True
) -> LevelStats:
    """Closed-loop continuous batching: keep ``concurrency`` sequences in flight until done."""
    from mlx_lm.generate import BatchGenerator

    # The same stop rule as the servers: the tokenizer's EOS ids end a sequence.
    generator = BatchGenerator(
        model,
        max_tokens=max_tokens,
        stop_tokens=[[t] for t in tokenizer.eos_token_ids],
        completion_batch_size=max(32, concurrency),
    )
    sent: dict[int, float] = {}
    first: dict[int, float] = {}
    ttfts: list[float] = []
    latencies: list[float] = []
    tokens = 0
    issued = 0

    def insert(n: int) -> None:
        nonlocal issued
        for _ in range(n):
            t0 = time.perf_counter()
            prompt = tokenizer.apply_chat_template(messages(unique), add_generation_prompt=True)
            (uid,) = generator.insert([list(prompt)], [max_tokens])
            sent[uid] = t0
            issued += 1

    start = time.perf_counter()
    insert(min(concurrency, requests))
    try:
        while True:
            responses = generator.next_generated()
            if not responses:
                break
            now = time.perf_counter()
            finished = 0
            for r in responses:
                tokens += 1  # one response is one generated token (the EOS one included)
                if r.uid not in first:
                    first[r.uid] = now
                    ttfts.append(now - sent[r.uid])
                if r.finish_reason is not None:
                    latencies.append(now - sent[r.uid])
                    finished += 1
            if finished and issued < requests:
                insert(min(finished, requests - issued))
    finally:
        generator.close()
    return _stats(concurrency, ttfts, latencies, tokens, time.perf_counter() - start)


def _cpu() -> tuple[float, float, float]:
    """(wall clock, this process's CPU seconds, the machine's busy CPU seconds)."""
    import psutil

    me = psutil.Process().cpu_times()
    total = psutil.cpu_times()
    idle = total.idle + getattr(total, "iowait", 0.0)
    busy = sum(total) - idle - getattr(total, "guest", 0.0) - getattr(total, "guest_nice", 0.0)
    return time.perf_counter(), me.user + me.system, busy


def serve(model_path: str, max_tokens: int, commands: IO[str], results: IO[str]) -> None:
    """Load once, warm up, then answer one JSON line per ``{"concurrency", "requests"}`` line.

    A long-lived child lets the harness interleave in-process levels with the HTTP ones, so each
    ratio compares figures taken seconds apart on a machine whose load keeps changing.
    """
    from mlx_lm import load

    t0 = time.perf_counter()
    model, tokenizer = load(model_path)
    load_s = time.perf_counter() - t0
    # Warm-up (kernel compilation, allocator) so the first timed level is not penalised.
    run_stream(model, tokenizer, 1, 8)
    run_batch(model, tokenizer, 2, 2, 8)
    results.write(json.dumps({"ready": True, "load_s": load_s}) + "\n")
    results.flush()
    for line in commands:
        if not line.strip():
            continue
        command = json.loads(line)
        c, n = int(command["concurrency"]), int(command["requests"])
        unique = bool(command.get("unique", True))
        before = _cpu()
        if c == 1:
            stats = run_stream(model, tokenizer, n, max_tokens, unique)
        else:
            stats = run_batch(model, tokenizer, c, n, max_tokens, unique)
        after = _cpu()
        wall = after[0] - before[0]
        own, busy = after[1] - before[1], after[2] - before[2]
        # The same accounting as the HTTP levels: this process is the "server", there is no client.
        stats.server_cpu_cores = own / wall
        stats.client_cpu_cores = 0.0
        stats.other_cpu_cores = max(0.0, busy - own) / wall
        results.write(json.dumps(stats.to_dict()) + "\n")
        results.flush()


class InProcess:
    """Parent side: the child process above, driven one level at a time."""

    def __init__(self, model_path: str, max_tokens: int, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        root = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.inprocess", "--model", model_path, "--max-tokens", str(max_tokens)],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own group: killed with it, never with the harness
        )
        self.load_s = float(self._read()["load_s"])

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            raise RuntimeError("the in-process benchmark child died or timed out (its stderr is above)")
        return json.loads(line)

    def level(self, concurrency: int, requests: int, unique: bool = True) -> LevelStats:
        assert self.proc.stdin is not None
        command = {"concurrency": concurrency, "requests": requests, "unique": unique}
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return LevelStats(**self._read())

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description="in-process mlx-lm limit: JSON lines in, JSON lines out")
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    # Results go to the real stdout; anything a library prints goes to stderr instead.
    results = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr
    serve(args.model, args.max_tokens, sys.stdin, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
