"""Agent sessions against Opta-LMX and the peers: time to first token per turn, cached prompt
tokens, turn latency and session time, as ratios in one run.

    .venv/bin/python bench/agents.py [--quick] [--servers opta-lmx,mlx_lm.server]
                                     [--vllm-mlx-python PATH] [--opta-options TOML]

The workload (``agent_workload.py``) is Claude-Code/Codex-shaped: a long system prompt with tool
definitions, then turns that each add a tool call and its result. Phases, each run on every server
back to back (all servers are started first and stay idle while not measured):

1. one session alone;
2. four sessions at once, sharing one system prompt (another one than phase 1's, so nothing of
   phase 1 is found);
3. Opta-LMX only, the restart probe: one session's first turns on three names for the same
   weights, then the next turn after nothing (warm, in memory), after ``lmxctl restart`` with
   the disk tier, and after ``lmxctl restart`` without it (``kv_disk_bytes = 0``).

Writes bench/results/agents-latest.{md,json} (see ``agent_report.py``). The model is the tiny
demo model built with a long context (``--context``, default 65,536 tokens). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes.util
import datetime as dt
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench import agent_report, probes, servers  # noqa: E402
from bench.agent_workload import Session, Workload, build  # noqa: E402
from bench.load import warm_up  # noqa: E402
from bench.models import ensure_model  # noqa: E402
from bench.run import machine, source_fingerprint  # noqa: E402

BENCH = ROOT / "bench"
PROBE_NAMES = ("probe-warm", "probe-disk", "probe-cold")


@dataclass
class TurnResult:
    session: int
    turn: int  # 1-based
    ok: bool
    ttft_s: float | None
    latency_s: float
    prompt_tokens: int | None
    cached_tokens: int | None
    completion_tokens: int | None
    error: str | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a small workload to smoke-test the harness (minutes)")
    p.add_argument("--servers", default="opta-lmx,mlx_lm.server")
    p.add_argument("--vllm-mlx-python", help="python of a separate venv where `import vllm_mlx` works")
    p.add_argument("--system-tokens", type=int, help="system prompt and tools (default 12000; --quick 1500)")
    p.add_argument("--turns", type=int, help="requests per session (default 20; --quick 4)")
    p.add_argument("--result-tokens", help="tool result size range LOW,HIGH (default 200,2000; --quick 100,300)")
    p.add_argument("--sessions", type=int, default=4, help="sessions of the concurrent phase (default 4)")
    p.add_argument("--probe-turns", type=int, help="turns before the restart probe's next turn (default 10; --quick 2)")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens generated per turn (the end token is banned)")
    p.add_argument("--context", type=int, default=65536, help="the demo model's context length")
    p.add_argument("--phases", default="single,concurrent,restart")
    p.add_argument("--opta-options", default="", help="TOML lines for the bench model's [models.options]")
    p.add_argument("--blas-for-peers", action="store_true", help="start mlx_lm.server and vllm-mlx with the "
                   "system's OpenBLAS preloaded too, as Opta-LMX's workers are (supervisor.preload_blas)")
    p.add_argument("--opta-b-src", type=Path, help="also run opta-lmx-b from another tree's src/ (e.g. a git "
                   "worktree of an earlier commit): a before/after of a code change in one run, as a peer")
    p.add_argument("--cache-dir", type=Path, default=BENCH / ".cache")
    p.add_argument("--results-dir", type=Path, default=BENCH / "results")
    args = p.parse_args(argv)
    quick = args.quick
    args.system_tokens = args.system_tokens or (1500 if quick else 12000)
    args.turns = args.turns or (4 if quick else 20)
    low, high = (args.result_tokens or ("100,300" if quick else "200,2000")).split(",")
    args.result_tokens = (int(low), int(high))
    args.probe_turns = args.probe_turns or (2 if quick else 10)
    return args


async def turn(client: httpx.AsyncClient, server: servers.Server, body: dict[str, Any], session: int,
               number: int) -> TurnResult:
    """One streamed request; TTFT is the first chunk with content, reasoning or a tool call."""
    start = time.perf_counter()
    ttft: float | None = None
    usage: dict[str, Any] = {}
    try:
        async with client.stream("POST", server.base_url + "/v1/chat/completions",
                                 json={**body, "model": server.model}) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode("utf-8", "replace")[:300]
                return TurnResult(session, number, False, None, time.perf_counter() - start, None, None, None,
                                  f"HTTP {response.status_code}: {text}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if "error" in data:
                    return TurnResult(session, number, False, ttft, time.perf_counter() - start, None, None, None,
                                      str(data["error"])[:300])
                for choice in data.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if ttft is None and any(delta.get(k) for k in ("content", "tool_calls", "reasoning_content",
                                                                   "reasoning")):
                        ttft = time.perf_counter() - start
                usage = data.get("usage") or usage
    except (httpx.HTTPError, ValueError) as exc:
        return TurnResult(session, number, False, ttft, time.perf_counter() - start, None, None, None,
                          f"{type(exc).__name__}: {exc}")
    latency = time.perf_counter() - start
    details = usage.get("prompt_tokens_details") or {}
    return TurnResult(session, number, True, ttft if ttft is not None else latency, latency,
                      usage.get("prompt_tokens"), details.get("cached_tokens"), usage.get("completion_tokens"))


def request_body(workload: Workload, session: Session, done: int, max_tokens: int, no_eos: dict[str, float]
                 ) -> dict[str, Any]:
    return {
        "messages": session.messages(workload.system, done), "tools": workload.tools, "max_tokens": max_tokens,
        "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, **({"logit_bias": no_eos}
                                                                                          if no_eos else {}),
    }


async def run_sessions(server: servers.Server, workload: Workload, turns: int, max_tokens: int,
                       no_eos: dict[str, float], timeout_s: float) -> tuple[list[TurnResult], float]:
    """Every session of ``workload`` at once, each turn after the previous one; wall seconds."""
    async def one(session: Session, client: httpx.AsyncClient) -> list[TurnResult]:
        out = []
        for done in range(turns):
            out.append(await turn(client, server, request_body(workload, session, done, max_tokens, no_eos),
                                  session.seed, done + 1))
            print(f"    {server.name} session {session.seed} turn {done + 1}: TTFT {out[-1].ttft_s or 0:.2f}s, "
                  f"cached {out[-1].cached_tokens}/{out[-1].prompt_tokens}"
                  + (f" ERROR {out[-1].error}" if not out[-1].ok else ""), file=sys.stderr, flush=True)
        return out

    start = time.perf_counter()
    limits = httpx.Limits(max_connections=len(workload.sessions) + 2)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, trust_env=False) as client:
        results = await asyncio.gather(*(one(s, client) for s in workload.sessions))
    return [r for rs in results for r in rs], time.perf_counter() - start


def lmxctl(server: servers.Server, *args: str) -> str:
    assert server.home is not None
    done = subprocess.run([servers.venv_bin("lmxctl"), *args], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OPTA_LMX_HOME=str(server.home)))
    return (done.stdout + done.stderr).strip()


def restart_probe(server: servers.Server, workload: Workload, before: int, max_tokens: int,
                  no_eos: dict[str, float], timeout_s: float) -> dict[str, Any]:
    """The same session's first ``before`` turns on three names of the weights, then its next
    turn: warm (nothing happened), after a restart with the disk tier, and without it."""
    session = workload.sessions[0]
    out: dict[str, Any] = {"turns_before": before}

    def on(name: str, done: int) -> TurnResult:
        probe = servers.Server(name, server.base_url, name, server.proc, server.log_path, server.home)
        return asyncio.run(_one(probe, request_body(workload, session, done, max_tokens, no_eos), timeout_s,
                                done + 1))

    for name in PROBE_NAMES:
        for done in range(before):
            on(name, done)
    for name in PROBE_NAMES[1:]:
        out[f"{name}_restart"] = lmxctl(server, "restart", name)
    # A restart takes the warm spare and starts another, which imports mlx-lm: CPU the turns
    # measured next must not share.
    out["quiet_wait_s"] = probes.wait_quiet(server, 120)
    for name in PROBE_NAMES:
        result = on(name, before)
        out[name] = asdict(result)
        print(f"    restart probe {name}: TTFT {result.ttft_s or 0:.2f}s, cached {result.cached_tokens}/"
              f"{result.prompt_tokens}", file=sys.stderr, flush=True)
    return out


async def _one(server: servers.Server, body: dict[str, Any], timeout_s: float, number: int) -> TurnResult:
    async with httpx.AsyncClient(timeout=timeout_s, trust_env=False) as client:
        return await turn(client, server, body, 0, number)


def probe_models(model_dir: Path) -> str:
    entries = ""
    for name in PROBE_NAMES:
        entries += f'\n[[models]]\nname = "{name}"\npath = "{model_dir}"\nload_on_start = false\n'
        if name == "probe-cold":
            entries += "[models.options]\nkv_disk_bytes = 0\n"
    return entries


def start_servers(args: argparse.Namespace, model_dir: Path, work_dir: Path) -> tuple[list[servers.Server],
                                                                                      dict[str, str]]:
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    failed: dict[str, str] = {}
    peer_env = None
    if args.blas_for_peers:
        library = ctypes.util.find_library("openblas")
        peer_env = dict(os.environ, LD_PRELOAD=library) if library else None
    started = []
    starters = {
        servers.OPTA: lambda: servers.start_opta(model_dir, work_dir / "opta", 300, args.opta_options,
                                                 extra_models=probe_models(model_dir)),
        servers.MLX_LM: lambda: servers.start_mlx_lm(model_dir, work_dir / "mlx_lm", 300, peer_env),
        servers.OPTA_B: lambda: servers.start_opta(model_dir, work_dir / "opta-b", 300, args.opta_options,
                                                   servers.OPTA_B, args.opta_b_src),
    }
    if args.opta_b_src is not None and servers.OPTA_B not in names:
        names.append(servers.OPTA_B)
    if args.vllm_mlx_python:
        ok, detail = servers.vllm_mlx_available(args.vllm_mlx_python)
        if ok:
            if servers.VLLM_MLX not in names:  # --vllm-mlx-python alone asks for it too
                names.append(servers.VLLM_MLX)
            starters[servers.VLLM_MLX] = lambda: servers.start_vllm_mlx(args.vllm_mlx_python, model_dir,
                                                                          work_dir / "vllm", 300, peer_env)
        else:
            failed[servers.VLLM_MLX] = f"vllm_mlx not importable: {detail}"
    for name in names:
        print(f"  starting {name} ...", file=sys.stderr, flush=True)
        try:
            server = starters[name]()
        except servers.ServerStartError as exc:
            failed[name] = str(exc)
            continue
        started.append(server)
        # Untimed requests (lazy loads, first kernels); then Opta-LMX's warm spare, which imports
        # mlx-lm once the model is loaded, on the cores the phases are measured on.
        asyncio.run(warm_up(server.base_url, server.model, 8, 300, n=2))
        if server.name in (servers.OPTA, servers.OPTA_B):
            probes.wait_for_spare(server, 120)
    return started, failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model_dir, _ = ensure_model(args.cache_dir, "tiny", args.context)
    eos = json.loads((model_dir / "config.json").read_text())["eos_token_id"]
    no_eos = {str(eos): -100.0}
    shape = dict(system_tokens=args.system_tokens, turns=args.turns, result_tokens=args.result_tokens)
    workloads = {
        "single": build(model_dir, sessions=1, salt="single", **shape),
        "concurrent": build(model_dir, sessions=args.sessions, salt="concurrent", **shape),
        "restart": build(model_dir, sessions=1, salt="restart", **shape),
    }
    work_dir = args.cache_dir / "agents-last-run"
    if work_dir.exists():
        subprocess.run(["rm", "-rf", str(work_dir)], check=True)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
        "command": " ".join(["bench/agents.py", *(argv if argv is not None else sys.argv[1:])]),
        "peers_blas": args.blas_for_peers,
        "source": source_fingerprint(), "model": str(model_dir), "max_tokens": args.max_tokens,
        "workload": workloads["single"].shape | {"concurrent_sessions": args.sessions},
        "phases": {}, "servers": {},
    }
    timeout_s = 1800.0
    try:
        started, failed = start_servers(args, model_dir, work_dir)
        result["servers"] = {s.name: {"start_s": s.started_s} for s in started} | {
            n: {"error": e} for n, e in failed.items()}
        for rank, phase in enumerate(p for p in phases if p != "restart"):
            order = started[rank % len(started):] + started[: rank % len(started)] if started else []
            for server in order:
                print(f"[{phase}] {server.name}", file=sys.stderr, flush=True)
                turns, wall = asyncio.run(run_sessions(server, workloads[phase], args.turns, args.max_tokens,
                                                       no_eos, timeout_s))
                result["phases"].setdefault(phase, {})[server.name] = {
                    "wall_s": wall, "turns": [asdict(t) for t in turns]}
        opta = next((s for s in started if s.name == servers.OPTA), None)
        if "restart" in phases and opta is not None:
            print("[restart] opta-lmx", file=sys.stderr, flush=True)
            result["phases"]["restart"] = restart_probe(opta, workloads["restart"], args.probe_turns,
                                                        args.max_tokens, no_eos, timeout_s)
    finally:
        servers.stop_all()
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "agents-latest.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    text = agent_report.markdown(result)
    (args.results_dir / "agents-latest.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
