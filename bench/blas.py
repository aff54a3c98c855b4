"""Do the worker's two CPU paths keep MLX's greedy outputs, and how much faster are they?

    .venv/bin/python bench/blas.py [--models tiny,small] [--tokens 64] [--library PATH]
    .venv/bin/python bench/blas.py --compare attention [--history 3000]

The ``mlx[cpu]`` wheel on Linux links a reference BLAS; ``LD_PRELOAD`` of OpenBLAS (Debian's
``libopenblas0-pthread``) makes its float32 matrix products resolve there instead. For each demo
model, a child process runs with and without the preload (same order every time): greedy tokens
of three chat prompts alone (mlx-lm's ``generate_step``) and together (``BatchGenerator``, padded
prompts), then prefill and decode speed on a 1,024-token prompt. The report says whether every
token matched and the speed ratios. The supervisor's ``[supervisor] preload_blas`` applies the
same preload to workers (see etc/opta-lmx.toml).

``--compare attention`` runs both children with OpenBLAS, one with MLX's own attention and one
with the worker's numpy attention (``[models.options] cpu_attention``,
``worker/engines/mlx_cpu_attention.py``), and adds a turn after a long history: ``--history``
tokens prefilled, then the time to prefill 1,000 more (a conversation's next turn from the prompt
cache). Each model then gets a context of history + 1,100 tokens.
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

path, n, attention, history = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
from opta_lmx.worker.engines import mlx_cpu_attention
mlx_cpu_attention.install(attention)
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
turn_s = None
if history:
    from mlx_lm.models.cache import make_prompt_cache
    cache = make_prompt_cache(model)
    ids = mx.array((long * (history // len(long) + 2))[: history + 1000])
    for start in range(0, history, 2048):
        mx.eval(model(ids[None, start : min(history, start + 2048)], cache=cache))
    turns = []
    for _ in range(3):
        started = time.perf_counter()
        mx.eval(model(ids[None, history:], cache=cache))
        turns.append(time.perf_counter() - started)
        for c in cache:
            c.trim(1000)
    turn_s = min(turns)
print(json.dumps({"alone": alone, "together": [together[u] for u in uids], "turn_s": turn_s,
                  "prefill_tok_s": len(long) / (t1 - t0), "decode_tok_s": 64 / (t2 - t1)}))
'''


def run(model: Path, tokens: int, preload: str | None, attention: str = "mlx", history: int = 0) -> dict:
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if preload:
        env["LD_PRELOAD"] = preload
    done = subprocess.run([sys.executable, "-c", _CHILD, str(model), str(tokens), attention, str(history)],
                          capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"probe failed ({preload or 'no preload'}, {attention}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratio(name: str, before: dict, after: dict, digits: int = 1) -> str:
    return f"{before[name]:,.{digits}f} -> {after[name]:,.{digits}f} (×{after[name] / before[name]:.2f})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="tiny,small")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--library", default=None, help="the library to preload (default: the system's OpenBLAS)")
    p.add_argument("--compare", choices=["blas", "attention"], default="blas")
    p.add_argument("--history", type=int, default=3000, help="with --compare attention: tokens before the turn")
    p.add_argument("--cache-dir", type=Path, default=ROOT / "bench" / ".cache")
    args = p.parse_args()
    library = args.library or ctypes.util.find_library("openblas")
    if not library:
        print("no OpenBLAS on this machine (Debian: apt-get install libopenblas0-pthread)", file=sys.stderr)
        return 1
    attention = args.compare == "attention"
    paths = "MLX's attention -> numpy's" if attention else "reference -> OpenBLAS"
    turn = f" | {args.history:,}-token history, 1,000 more: s" if attention else ""
    print(f"| model | greedy tokens alone | in a batch | prefill tok/s ({paths}) | decode tok/s{turn} |")
    print("|---|---|---|---|---|" + ("---|" if attention else ""))
    for size in [s.strip() for s in args.models.split(",") if s.strip()]:
        if attention:
            model, _ = ensure_model(args.cache_dir, size, args.history + 1100)
            plain = run(model, args.tokens, library, "mlx", args.history)
            fast = run(model, args.tokens, library, "numpy", args.history)
        else:
            model, _ = ensure_model(args.cache_dir, size)
            plain, fast = run(model, args.tokens, None), run(model, args.tokens, library)
        same = [sum(a == b for a, b in zip(x, y)) for x, y in zip(plain["alone"], fast["alone"])]
        same_batch = [sum(a == b for a, b in zip(x, y)) for x, y in zip(plain["together"], fast["together"])]
        total = args.tokens * len(same)
        turn = f" | {ratio('turn_s', plain, fast, 2)}" if attention else ""
        print(f"| {size} | {sum(same)} of {total} the same | {sum(same_batch)} of {total} the same | "
              f"{ratio('prefill_tok_s', plain, fast)} | {ratio('decode_tok_s', plain, fast)}{turn} |", flush=True)
    print(f"\n(library: {library})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
