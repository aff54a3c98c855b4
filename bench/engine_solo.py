"""The engine alone at one stream, in-process: ``stream_generate`` (the limit), ``MlxEngine`` with
its solo path (a request alone runs through ``generate_step``) and ``MlxEngine`` held to the batch
path (a ``BatchGenerator`` of one). Interleaved repetitions, medians; wall and CPU-time rates.

    .venv/bin/python bench/engine_solo.py [MODEL_DIR] [--reps N]

MODEL_DIR defaults to the tiny demo model the harness builds (``bench/.cache/models/tiny-seed0``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from mlx_lm import load
from mlx_lm.generate import stream_generate
from mlx_lm.sample_utils import make_logits_processors

from opta_lmx.config import EngineOptions
from opta_lmx.proto import ChatMessage, Generate, SamplingParams
from opta_lmx.worker.engines.mlx import MlxEngine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.engine_timing import timed_generation  # noqa: E402

TOKENS = 64
NO_EOS = {2: -100.0}  # every run makes all TOKENS tokens (the demo tokenizer's end token)


def _prompt(i: int) -> str:
    return f"Request {i}: tell me a story"


def run_engine(engine: MlxEngine, i: int) -> tuple[float, float]:
    params = SamplingParams(max_tokens=TOKENS, temperature=0.0, logit_bias=NO_EOS)
    return timed_generation(engine, Generate(i, [ChatMessage("user", _prompt(i))], params))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="bench/.cache/models/tiny-seed0")
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    options = EngineOptions(prompt_cache_entries=0)
    solo = MlxEngine("solo", args.model, options)
    batch = MlxEngine("batch", args.model, options)
    batch._solo = None  # held to the batch path
    model, tokenizer = load(args.model)
    processors = make_logits_processors(logit_bias=NO_EOS)

    def run_limit(i: int) -> tuple[float, float]:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": _prompt(i)}], add_generation_prompt=True)
        wall, cpu = time.perf_counter(), time.process_time()
        made = sum(1 for _ in stream_generate(model, tokenizer, prompt, max_tokens=TOKENS, logits_processors=processors))
        return made / (time.perf_counter() - wall), made / (time.process_time() - cpu)

    results: dict[str, list[tuple[float, float]]] = {"stream_generate": [], "engine, solo": [], "engine, batch of one": []}
    for i in range(args.reps):
        results["stream_generate"].append(run_limit(i))
        results["engine, solo"].append(run_engine(solo, i))
        results["engine, batch of one"].append(run_engine(batch, i))
    limit = statistics.median(r[0] for r in results["stream_generate"])
    for name, runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        print(f"{name:22s} {wall:7.0f} tok/s ({wall / limit:.2f} of the limit), {cpu:6.0f} tok per CPU-s")


if __name__ == "__main__":
    main()
