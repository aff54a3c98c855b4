"""Soak: mixed load on three models for a while, with swaps and kills, and what it leaves behind.

    .venv/bin/python bench/soak.py [--minutes 10] [--clients 12]

Three models share two load slots (``max_loaded_models = 2``), and one unloads after a few idle
seconds, so models are evicted and loaded again all the time; every minute one running worker is
killed with SIGKILL. Clients send streaming and non-streaming chat requests at random models.
Every request must end in one of two ways: completed, or an error the client saw (an HTTP error
status or a terminal error event). Anything else (a connection dropped, a stream that stopped
without its end, a hang past the client's timeout) is a lost request, and the target is 0.

The gateway's and the supervisor's RSS, open file descriptors and threads are sampled every few
seconds; after a warm-up minute, RSS may drift by less than 10 % and descriptors and threads
must not grow. The report goes to stdout and bench/results/<date>-soak.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.models import ensure_model  # noqa: E402
from bench.servers import Server, _spawn, free_port, stop, venv_bin  # noqa: E402

MODELS = ("a", "b", "c")
NO_EOS = {"2": -100}  # the demo tokenizer's end token: requests run to max_tokens
SAMPLE_EVERY = 5.0
WARM_UP = 60.0
KILL_EVERY = 60.0


@dataclass
class Tally:
    completed: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # seen by the client, by kind
    lost: list[str] = field(default_factory=list)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


@dataclass
class Sample:
    at: float
    rss: dict[str, int]
    fds: dict[str, int]
    threads: dict[str, int]


def start(model_dir: Path, work: Path) -> Server:
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    config = work / "soak.toml"
    models = "".join(
        f'[[models]]\nname = "{name}"\npath = "{model_dir}"\nload_on_start = {"true" if name != "c" else "false"}\n'
        + ("keep_alive = 5\n" if name == "b" else "")
        for name in MODELS
    )
    config.write_text(
        "[memory]\nmax_loaded_models = 2\n[supervisor]\nbackoff_initial = 0.5\nmax_failures = 100\n" + models,
        encoding="utf-8",
    )
    port = free_port()
    env = dict(os.environ, OPTA_LMX_HOME=str(home))
    (work / "serve.log").unlink(missing_ok=True)  # this run's log only: the report counts in it
    proc = _spawn([venv_bin("opta-lmx"), "serve", "--config", str(config), "--port", str(port)], work / "serve.log", env)
    server = Server("opta-lmx", f"http://127.0.0.1:{port}", "a", proc, work / "serve.log", home)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(server.base_url + "/health", timeout=2).json()["models"].get("a") == "RUNNING":
                return server
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not start; see " + str(work / "serve.log"))


async def one_request(client: httpx.AsyncClient, rng: random.Random, tally: Tally) -> None:
    model = rng.choices(MODELS, weights=(0.45, 0.45, 0.10))[0]  # "c" now and then: a swap each time
    stream = rng.random() < 0.6
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"soak {rng.random()}"}],
        "max_tokens": rng.randint(8, 64),
        "stream": stream,
        "logit_bias": NO_EOS,
    }
    try:
        if not stream:
            response = await client.post("/v1/chat/completions", json=body)
            if response.status_code == 200:
                response.json()["choices"][0]["message"]
                tally.completed += 1
            else:
                tally.error(f"HTTP {response.status_code}")
            return
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                tally.error(f"HTTP {response.status_code}")
                return
            last = ""
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    last = line[6:]
        if last == "[DONE]":
            tally.completed += 1
        elif last and "error" in json.loads(last):
            tally.error("error event: " + json.loads(last)["error"].get("code", "?"))
        else:
            tally.lost.append(f"stream of {model} ended without [DONE] or an error: {last[:80]!r}")
    except (httpx.HTTPError, ValueError) as exc:
        tally.lost.append(f"{model} {'stream' if stream else 'request'}: {type(exc).__name__}: {exc}")


async def clients(base_url: str, count: int, until: float, tally: Tally) -> None:
    async def loop(index: int) -> None:
        rng = random.Random(index)
        async with httpx.AsyncClient(base_url=base_url, timeout=180) as client:
            while time.monotonic() < until:
                await one_request(client, rng, tally)

    await asyncio.gather(*(loop(i) for i in range(count)))


def processes(server: Server) -> dict[str, psutil.Process]:
    root = psutil.Process(server.proc.pid)
    gateway = next(p for p in root.children() if "opta_lmx.gateway" in " ".join(p.cmdline()))
    return {"supervisor": root, "gateway": gateway}


def sample(procs: dict[str, psutil.Process], started: float) -> Sample:
    return Sample(
        time.monotonic() - started,
        {n: p.memory_info().rss for n, p in procs.items()},
        {n: p.num_fds() for n, p in procs.items()},
        {n: p.num_threads() for n, p in procs.items()},
    )


async def chaos(server: Server, until: float, kills: list[str]) -> None:
    rng = random.Random(7)
    while time.monotonic() + KILL_EVERY < until:
        await asyncio.sleep(KILL_EVERY)
        workers = [p for p in psutil.Process(server.proc.pid).children() if _is_model_worker(p)]
        if workers:
            victim = rng.choice(workers)
            try:
                os.kill(victim.pid, signal.SIGKILL)
            except ProcessLookupError:  # it exited (an unload) since it was listed
                continue
            kills.append(f"{time.strftime('%H:%M:%S')} pid {victim.pid}")


def _is_model_worker(process: psutil.Process) -> bool:
    try:
        command = process.cmdline()
    except psutil.Error:  # gone (or a zombie) since it was listed: a worker just exited
        return False
    return "opta_lmx.worker" in " ".join(command) and "--spare" not in command


async def watch(procs: dict[str, psutil.Process], started: float, until: float, samples: list[Sample]) -> None:
    while time.monotonic() < until:
        samples.append(sample(procs, started))
        await asyncio.sleep(SAMPLE_EVERY)


def drift(samples: list[Sample], name: str) -> tuple[float, int, int]:
    """RSS drift (fraction) from the warm-up's end to the end; fd and thread growth: the last
    tenth's highest count over the highest of the first half after warm-up (a pool that fills
    once is not a leak; a count that keeps climbing is)."""
    warm = [s for s in samples if s.at >= WARM_UP] or samples
    base, tail = warm[: max(1, len(warm) // 10)], warm[-max(1, len(warm) // 10) :]
    first_half = warm[: max(1, len(warm) // 2)]
    rss0 = statistics.median(s.rss[name] for s in base)
    rss1 = statistics.median(s.rss[name] for s in tail)
    fds = max(s.fds[name] for s in tail) - max(s.fds[name] for s in first_half)
    threads = max(s.threads[name] for s in tail) - max(s.threads[name] for s in first_half)
    return (rss1 - rss0) / rss0, fds, threads


def report(args: argparse.Namespace, tally: Tally, samples: list[Sample], kills: list[str], log_swaps: int) -> tuple[str, bool]:
    lines = [
        f"# Soak, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"- command: `.venv/bin/python bench/soak.py --minutes {args.minutes:g} --clients {args.clients}`",
        f"- requests: {tally.completed} completed, {sum(tally.errors.values())} ended with an error the client saw "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(tally.errors.items())) or 'none'}), **{len(tally.lost)} lost**",
        f"- kills: {len(kills)} ({', '.join(kills)}); model loads and unloads in the log: {log_swaps}",
        "",
        "| process | RSS at warm-up → end | drift | fds growth | threads growth |",
        "|---|---|---|---|---|",
    ]
    ok = not tally.lost
    warm = [s for s in samples if s.at >= WARM_UP] or samples
    for name in ("gateway", "supervisor"):
        rss_drift, fds, threads = drift(samples, name)
        ok = ok and abs(rss_drift) < 0.10 and fds <= 0 and threads <= 0
        lines.append(
            f"| {name} | {warm[0].rss[name] / 2**20:.1f} → {warm[-1].rss[name] / 2**20:.1f} MiB | {rss_drift:+.1%} | {fds:+d} | {threads:+d} |"
        )
    lines += ["", f"Targets (0 lost, RSS drift < 10 %, no fd or thread growth): {'PASS' if ok else 'FAIL'}"]
    if tally.lost:
        lines += ["", "Lost:", *(f"- {entry}" for entry in tally.lost[:20])]
    return "\n".join(lines) + "\n", ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "bench" / ".cache" / "soak")
    args = parser.parse_args()
    model_dir, _ = ensure_model(ROOT / "bench" / ".cache", "tiny")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    server = start(model_dir, args.work_dir)
    tally, samples, kills = Tally(), [], []
    try:
        procs = processes(server)
        started = time.monotonic()
        until = started + args.minutes * 60

        async def run() -> None:
            await asyncio.gather(
                clients(server.base_url, args.clients, until, tally),
                chaos(server, until, kills),
                watch(procs, started, until, samples),
            )

        asyncio.run(run())
        samples.append(sample(procs, started))
        log = (args.work_dir / "serve.log").read_text(errors="replace")
        swaps = sum(log.count(word) for word in ("unloaded", "evicted", "loading "))
    finally:
        stop(server)
    text, ok = report(args, tally, samples, kills, swaps)
    print(text)
    out = ROOT / "bench" / "results" / f"{time.strftime('%Y-%m-%d-%H%M', time.gmtime())}-soak.md"
    out.write_text(text, encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
