"""Does preloading the system's OpenBLAS keep MLX's greedy outputs and make it faster?

    .venv/bin/python bench/blas.py [--models tiny,small] [--tokens 64] [--library PATH]

The ``mlx[cpu]`` wheel on Linux links a reference BLAS; ``LD_PRELOAD`` of OpenBLAS (Debian's
``libopenblas0-pthread``) makes its float32 matrix products resolve there instead. For each demo
model, a child process runs with and without the preload (same order every time): greedy tokens
of three chat prompts alone (mlx-lm's ``generate_step``) and together (``BatchGenerator``, padded
prompts), then prefill and decode speed on a 1,024-token prompt. The report says whether every
token matched and the speed ratios. The supervisor's ``[supervisor] preload_blas`` applies the
same preload to workers (see etc/opta-lmx.toml).
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.models import ensure_model  # noqa: E402

_CHILD = r'''
import json, sys, time
import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import BatchGenerator, generate_step

path, n = sys.argv[1], int(sys.argv[2])
model, tok = load(path)
chats = [
    [{"role": "user", "content": "Tell me a story about a fox."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a Python function that reverses a list. " * 4}],
]
prompts = [tok.apply_chat_template(c, add_generation_prompt=True) for c in chats]
alone = []
for ids in prompts:
    steps = generate_step(mx.array(ids), model, max_tokens=n)
    alone.append([int(t) for (t, _), _ in zip(steps, range(n))])
batch = BatchGenerator(model, stop_tokens=[], completion_batch_size=8)
uids = batch.insert(prompts, max_tokens=[n] * len(prompts))
together = {u: [] for u in uids}
while any(len(v) < n for v in together.values()):
    for r in batch.next_generated():
        together[r.uid].append(int(r.token))
long = tok.encode("The quick brown fox jumps over the lazy dog. " * 200)[:1024]
for _ in range(2):  # the second round is the one kept: the first compiles and warms up
    t0 = time.perf_counter()
    steps = generate_step(mx.array(long), model, max_tokens=65)
    next(steps)
    t1 = time.perf_counter()
    for _ in range(64):
        next(steps)
    t2 = time.perf_counter()
print(json.dumps({"alone": alone, "together": [together[u] for u in uids],
                  "prefill_tok_s": len(long) / (t1 - t0), "decode_tok_s": 64 / (t2 - t1)}))
'''


def run(model: Path, tokens: int, preload: str | None) -> dict:
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if preload:
        env["LD_PRELOAD"] = preload
    done = subprocess.run([sys.executable, "-c", _CHILD, str(model), str(tokens)], capture_output=True, text=True,
                          env=env, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"probe failed ({preload or 'no preload'}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="tiny,small")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--library", default=None, help="the library to preload (default: the system's OpenBLAS)")
    p.add_argument("--cache-dir", type=Path, default=ROOT / "bench" / ".cache")
    args = p.parse_args()
    library = args.library or ctypes.util.find_library("openblas")
    if not library:
        print("no OpenBLAS on this machine (Debian: apt-get install libopenblas0-pthread)", file=sys.stderr)
        return 1
    print("| model | greedy tokens alone | in a batch | prefill tok/s (reference -> OpenBLAS) | decode tok/s |")
    print("|---|---|---|---|---|")
    for size in [s.strip() for s in args.models.split(",") if s.strip()]:
        model, _ = ensure_model(args.cache_dir, size)
        plain, fast = run(model, args.tokens, None), run(model, args.tokens, library)
        same = [sum(a == b for a, b in zip(x, y)) for x, y in zip(plain["alone"], fast["alone"])]
        same_batch = [sum(a == b for a, b in zip(x, y)) for x, y in zip(plain["together"], fast["together"])]
        total = args.tokens * len(same)
        print(f"| {size} | {sum(same)} of {total} the same | {sum(same_batch)} of {total} the same | "
              f"{plain['prefill_tok_s']:,.1f} -> {fast['prefill_tok_s']:,.1f} "
              f"(×{fast['prefill_tok_s'] / plain['prefill_tok_s']:.1f}) | "
              f"{plain['decode_tok_s']:,.1f} -> {fast['decode_tok_s']:,.1f} "
              f"(×{fast['decode_tok_s'] / plain['decode_tok_s']:.2f}) |", flush=True)
    print(f"\n(library: {library})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
