"""Benchmark Opta-LMX against the in-process mlx-lm limit and against peer servers.

    .venv/bin/python bench/run.py [--quick] [--models tiny] [--vllm-mlx-python PATH]

Builds the demo model(s), measures mlx-lm in-process, starts each server on a free 127.0.0.1 port,
drives it with the same streaming chat load at each concurrency level, stops it, and writes
bench/results/latest.{md,json} (and latest.png when matplotlib is importable). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import os
import platform
import shlex
import shutil
import signal
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, sys.path[0] is bench/ itself, whose module names (models, report, ...) could
# shadow other packages' imports: replace it with the repository root, so ``bench`` is a package.
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import probes, report, servers  # noqa: E402
from bench.load import LevelStats, median_stats, run_level, warm_up  # noqa: E402
from bench.inprocess import InProcess  # noqa: E402
from bench.models import ensure_model  # noqa: E402

BENCH = ROOT / "bench"


def _levels(text: str) -> list[int]:
    return sorted({int(x) for x in text.split(",") if x.strip()})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the tiny model only, 1 repetition, fewer requests per level")
    p.add_argument("--levels", type=_levels, default=[1, 8, 32], help="concurrency levels (default 1,8,32)")
    p.add_argument("--reps", type=int, help="repetitions per level (default 5, --quick 1)")
    p.add_argument("--requests", type=int,
                   help="requests per level (default max(24, 4*concurrency); --quick max(4, concurrency))")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--shared-prompt", action="store_true",
                   help="send the identical prompt every time (lets prompt caches hit; default: unique per request)")
    p.add_argument("--models", default=None,
                   help="comma-separated demo model sizes to run (default tiny,small; --quick: tiny); the "
                        "~120M-parameter small one takes ~5 minutes on 2 CPU cores (see --small-levels)")
    p.add_argument("--small-levels", type=_levels, default=[1, 8],
                   help="levels for the small model (default 1,8: 32 streams take too long on CPU)")
    p.add_argument("--small-reps", type=int, default=1)
    p.add_argument("--servers", default="opta-lmx,mlx_lm.server",
                   help="comma-separated: opta-lmx, mlx_lm.server (vllm-mlx is added by --vllm-mlx-python)")
    p.add_argument("--vllm-mlx-python", help="python of a separate venv where `import vllm_mlx` works")
    p.add_argument("--no-inprocess", action="store_true", help="skip the in-process limit")
    p.add_argument("--no-crash", action="store_true", help="skip the Opta-LMX crash-recovery probe")
    p.add_argument("--opta-options", default="", help="TOML lines for the bench model's [models.options] (A/B runs)")
    p.add_argument("--opta-b", metavar="OPTIONS", default=None,
                   help="also measure a second Opta-LMX (opta-lmx-b) with these [models.options] TOML lines, "
                        "interleaved with the first: an A/B of an option in one run")
    p.add_argument("--opta-b-src", metavar="DIR", type=Path, default=None,
                   help="run opta-lmx-b from another tree's src/ (e.g. a git worktree of an earlier commit): "
                        "an A/B of a code change in one run; implies --opta-b if not given")
    p.add_argument("--cache-dir", type=Path, default=BENCH / ".cache", help="where demo models are built")
    p.add_argument("--results-dir", type=Path, default=BENCH / "results")
    args = p.parse_args(argv)
    if args.opta_b_src is not None and args.opta_b is None:
        args.opta_b = ""
    return args


def request_counts(levels: list[int], quick: bool, override: int | None, small: bool = False) -> dict[int, int]:
    """Bounded request count per level: enough to reach steady state, few enough for a CPU box."""
    if override:
        return {c: override for c in levels}
    if small:
        return {c: max(2, c) for c in levels}
    if quick:
        return {c: max(4, c) for c in levels}
    # On the tiny model a request takes ~40 ms alone and a wave of 32 ~300 ms: 24 requests, or
    # four waves, make a level last about a second, so that neither one hiccup of the machine nor
    # the ramp at a level's start and end (fewer streams than the level's) decides it.
    return {c: max(24, 4 * c) for c in levels}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        mem = f", {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:
        mem = ""
    cores = f"{os.cpu_count()} CPU cores ({cpu})"
    return f"{platform.system()} {platform.machine()}, {cores}{mem}, no GPU (mlx CPU backend)"


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("opta-lmx", "mlx", "mlx-lm", "httpx", "hypercorn", "starlette"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def source_fingerprint() -> dict[str, str]:
    """A hash and the newest mtime of src/opta_lmx: several people edit this tree while runs go
    on, so a result must say which code it measured (no git here: others commit)."""
    digest = hashlib.sha256()
    newest = 0.0
    for path in sorted((ROOT / "src" / "opta_lmx").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
        newest = max(newest, path.stat().st_mtime)
    when = dt.datetime.fromtimestamp(newest, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return {"sha256": digest.hexdigest()[:16], "newest_file_mtime": when}


class Target:
    """One thing measured at every level: the in-process engine or a started server."""

    def __init__(self, name: str, server: servers.Server | None = None, inproc: InProcess | None = None) -> None:
        self.name = name
        self.server = server
        self.inproc = inproc
        self.reps: dict[int, list[LevelStats]] = {}
        # A server's: the in-process limit measured right before each of its levels.
        self.pairs: dict[int, list[LevelStats]] = {}
        self.result: dict[str, Any] = {}

    def level(self, c: int, n: int, max_tokens: int, timeout_s: float, unique: bool) -> LevelStats:
        if self.inproc is not None:
            return self.inproc.level(c, n, unique)
        assert self.server is not None
        meter = probes.CpuMeter(self.server)
        stats = asyncio.run(
            run_level(self.server.base_url, self.server.model, c, n, max_tokens, timeout_s, unique)
        )
        for key, value in meter.cores().items():
            setattr(stats, key, value)
        return stats


def _start(
    name: str, start: Callable[[], servers.Server], max_tokens: int, timeout_s: float, unique: bool,
    warm_requests: int = 2,
) -> Target:
    """Start one server, warm it up, and take its memory readings at ready and at idle."""
    print(f"  starting {name} ...", file=sys.stderr, flush=True)
    server = start()
    target = Target(name, server=server)
    target.result = {"start_s": server.started_s, "memory": {}, "log": str(server.log_path)}
    target.result["memory"]["ready"] = probes.memory_snapshot(server)
    target.result["warmup_errors"] = asyncio.run(
        warm_up(server.base_url, server.model, max_tokens, timeout_s, n=warm_requests, unique_prompts=unique)
    )
    if name in (servers.OPTA, servers.OPTA_B):
        # Its warm spare starts once the model is loaded and imports mlx-lm for a second or two,
        # on the cores the first levels would be measured on.
        target.result["spare_ready_s"] = probes.wait_for_spare(server, timeout_s)
    time.sleep(1.0)  # let the warm-up's buffers settle before the idle reading
    target.result["memory"]["idle"] = probes.memory_snapshot(server)
    return target


def _measure(target: Target, rep: int, reps: int, c: int, n: int, args: argparse.Namespace,
             timeout_s: float, top: int) -> LevelStats:
    stats = target.level(c, n, args.max_tokens, timeout_s, not args.shared_prompt)
    target.reps.setdefault(c, []).append(stats)
    if target.server is not None and c == top and rep == reps - 1:
        # Right after this server's heaviest load, before anything is trimmed (a heartbeat
        # later, so the MLX figures are from after the load too).
        time.sleep(1.2)
        target.result["memory"][f"after_c{top}"] = probes.memory_snapshot(target.server)
    print(f"  rep {rep + 1}/{reps} c={c} {target.name}: {stats.tok_s:.1f} tok/s, "
          f"TTFT p50 {stats.ttft_p50_ms or 0:.1f} ms, {stats.errors} errors; CPU cores "
          f"server {stats.server_cpu_cores or 0:.2f} client {stats.client_cpu_cores or 0:.2f} "
          f"other {stats.other_cpu_cores or 0:.2f}", file=sys.stderr, flush=True)
    return stats


def bench_model(size: str, args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    """Every target at every level, interleaved: rep by rep, level by level, server by server.

    The machine is shared and its speed changes from one second to the next, so each level is
    run on every server back to back (the order rotated each repetition) rather than one server
    at a time, and the in-process limit is measured again right before each server's level: a
    server is compared with the limit taken a second or two earlier.
    """
    small = size == "small"
    levels = args.small_levels if small else args.levels
    reps = args.small_reps if small else (args.reps or (1 if args.quick else 5))
    counts = request_counts(levels, args.quick, args.requests, small)
    # A request on the small model at 8 streams takes minutes on a 2-core CPU.
    timeout_s = 900.0 if small else 120.0
    start_timeout = 600.0 if small else 120.0
    model_dir, build_s = ensure_model(args.cache_dir, size)
    model: dict[str, Any] = {
        "path": str(model_dir), "build_s": build_s, "levels": levels,
        "requests": {str(c): n for c, n in counts.items()}, "reps": reps, "servers": {},
    }
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    if args.opta_b is not None:
        names.insert(names.index(servers.OPTA) + 1 if servers.OPTA in names else 0, servers.OPTA_B)
    starters: dict[str, Callable[[], servers.Server]] = {
        servers.OPTA: lambda: servers.start_opta(model_dir, work_dir / size / "opta", start_timeout, args.opta_options),
        servers.OPTA_B: lambda: servers.start_opta(
            model_dir, work_dir / size / "opta-b", start_timeout, args.opta_b or "", servers.OPTA_B, args.opta_b_src),
        servers.MLX_LM: lambda: servers.start_mlx_lm(model_dir, work_dir / size / "mlx_lm", start_timeout),
    }
    if args.vllm_mlx_python:
        ok, detail = servers.vllm_mlx_available(args.vllm_mlx_python)
        if ok:
            names.append(servers.VLLM_MLX)
            starters[servers.VLLM_MLX] = lambda: servers.start_vllm_mlx(
                args.vllm_mlx_python, model_dir, work_dir / size / "vllm", start_timeout)
        else:
            model["servers"][servers.VLLM_MLX] = {"error": f"vllm_mlx not importable: {detail}"}
    for name in names:
        if name not in starters:
            raise SystemExit(f"unknown server {name!r}; known: {', '.join(starters)}")

    targets: list[Target] = []
    inproc: InProcess | None = None
    try:
        if not args.no_inprocess:
            print(f"[{size}] loading the in-process mlx-lm engine ...", file=sys.stderr, flush=True)
            inproc = InProcess(str(model_dir), args.max_tokens, timeout_s * 20)
            model["inprocess_load_s"] = inproc.load_s
            targets.append(Target("in-process", inproc=inproc))
        print(f"[{size}] starting servers ...", file=sys.stderr, flush=True)
        for name in names:
            try:
                # One warm-up request is enough to compile kernels; on the small model each is ~20 s.
                targets.append(_start(name, starters[name], args.max_tokens, timeout_s, not args.shared_prompt,
                                      warm_requests=1 if small else 2))
            except servers.ServerStartError as exc:
                print(f"  {name} did not start: {exc}", file=sys.stderr, flush=True)
                model["servers"][name] = {"error": str(exc)}
        top = max(levels)
        served = [t for t in targets if t.server is not None]
        limit = next((t for t in targets if t.inproc is not None), None)
        for rep in range(reps):
            order = served[rep % len(served):] + served[: rep % len(served)] if served else []
            for c in levels:
                if limit is not None and not order:
                    _measure(limit, rep, reps, c, counts[c], args, timeout_s, top)
                for target in order:
                    if limit is not None:
                        target.pairs.setdefault(c, []).append(
                            _measure(limit, rep, reps, c, counts[c], args, timeout_s, top))
                    _measure(target, rep, reps, c, counts[c], args, timeout_s, top)
        for target in targets:
            if target.server is not None and target.server.name == servers.OPTA:
                print("  hot swap: first token of a model not yet loaded ...", file=sys.stderr, flush=True)
                target.result["hot_swap"] = probes.hot_swap(target.server, model.get("inprocess_load_s"))
        for target in targets:
            if target.server is not None and target.server.name == servers.OPTA and not args.no_crash:
                print("  crash recovery: SIGKILL the Opta-LMX worker ...", file=sys.stderr, flush=True)
                target.result["crash_recovery"] = probes.crash_recovery(target.server)
    finally:
        for target in targets:
            if target.server is not None:
                servers.stop(target.server)
                target.result["log_tail"] = servers.log_tail(target.server.log_path, 15)
        if inproc is not None:
            inproc.close()

    for target in targets:
        levels_out = {str(c): median_stats(v) for c, v in target.reps.items()}
        reps_out = {str(c): [x.to_dict() for x in v] for c, v in target.reps.items()}
        if target.inproc is not None:
            model["inprocess"], model["inprocess_reps"] = levels_out, reps_out
        else:
            pairs = {str(c): [x.to_dict() for x in v] for c, v in target.pairs.items()}
            model["servers"][target.name] = {
                **target.result, "levels": levels_out, "reps": reps_out, "inprocess_pairs": pairs,
            }
    # Keep the configured order in the report (a failed server was recorded earlier).
    model["servers"] = {n: model["servers"][n] for n in [*names, servers.VLLM_MLX] if n in model["servers"]}
    model["ratios"] = report.compute_ratios(model)
    model["targets"] = report.evaluate_targets(model)
    return model


def _terminate(signum: int, frame: Any) -> None:
    # Turn SIGTERM into an exception so the ``finally`` below stops every server.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "meta": {
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": shlex.join([os.path.relpath(sys.executable, ROOT), "bench/run.py", *sys.argv[1:]]),
            "machine": machine(),
            "versions": _versions(),
            "opta_lmx_source": source_fingerprint(),
            "max_tokens": args.max_tokens,
            "quick": args.quick,
            "prompts": "identical (--shared-prompt)" if args.shared_prompt else "unique per request",
            "load_average_start": os.getloadavg(),
        },
        "models": {},
    }
    if args.models:
        sizes = [m.strip() for m in args.models.split(",") if m.strip()]
    else:
        sizes = ["tiny"] if args.quick else ["tiny", "small"]
    # Server logs, configs and Opta-LMX's data dir of the last run, kept for inspection.
    work_dir = args.cache_dir / "last-run"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    results["meta"]["logs"] = str(work_dir)
    try:
        for size in sizes:
            results["models"][size] = bench_model(size, args, work_dir)
    finally:
        servers.stop_all()
    results["meta"]["load_average_end"] = os.getloadavg()
    end_source = source_fingerprint()
    if end_source != results["meta"]["opta_lmx_source"]:
        # Workers restarted during the run (crash probe, hang kill) may have run newer code.
        results["meta"]["opta_lmx_source_at_end"] = end_source
    results["meta"]["duration_s"] = round(time.perf_counter() - started, 1)
    paths = report.write(results, args.results_dir)
    print(report.markdown(results))
    print(f"wrote {paths['markdown']} and {paths['json']}"
          + (f" and {paths['png']}" if paths["png"] else " (no plot: matplotlib is not importable)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
