"""The embedding engine against mlx-embeddings on the same model: the same vectors? how fast?

    .venv/bin/python bench/embeddings_reference.py --mlx-embeddings-python /tmp/mlxemb/bin/python

A measurement run by hand, not a test: mlx-embeddings is not a dependency of the project (it pulls
mlx-vlm and with it datasets, pandas, pyarrow, scipy, opencv, fastapi). Install it in a venv of its
own (``python3 -m venv /tmp/mlxemb && /tmp/mlxemb/bin/pip install mlx-embeddings 'mlx[cpu]'``).

Both sides embed the same texts (short and long, one at a time and as one padded batch) from
all-MiniLM-L6-v2 (``bench/embeddings.py`` unzips it) and time 32 short texts as one batch, one
side after the other (compare the rates from a quiet machine only); the script prints the largest
difference between the vectors, the cosines the documentation quotes, and the rates. ``--openblas``
preloads the system OpenBLAS on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.embeddings import OPENBLAS, ensure_minilm, texts  # noqa: E402

SENTENCES = [
    "A cat sits on the mat",
    "A kitten rests on a rug",
    "Stock markets fell sharply today",
    "Short.",
    "A much longer sentence, with commas, numbers like 1,234.5 and UPPER case, padded against in its batch.",
]

# Runs in the other interpreter: mlx-embeddings' own load and generate.
_THEIRS = """
import json, sys, time
import numpy as np, mlx.core as mx
from mlx_embeddings import load, generate
model, tokenizer = load(sys.argv[1])
request = json.loads(sys.stdin.read())
def embed(batch):
    out = generate(model, tokenizer, texts=batch).text_embeds
    mx.eval(out)
    return np.array(out).tolist()
alone = [embed([t])[0] for t in request["texts"]]
batch = embed(request["texts"])
seconds = []
for _ in range(request["reps"]):
    began = time.perf_counter(); embed(request["timed"]); seconds.append(time.perf_counter() - began)
print(json.dumps({"alone": alone, "batch": batch, "seconds": seconds}))
"""


def ours(model_dir: Path, timed: list[str], reps: int) -> dict:
    from opta_lmx.proto import Embed
    from opta_lmx.worker.engines.embedding import EmbeddingEngine

    engine = EmbeddingEngine("reference", str(model_dir))

    def embed(batch: list[str]) -> np.ndarray:
        replies = engine.embed(Embed(1, batch))
        while engine.active:
            replies += engine.step()
        return np.frombuffer(replies[0].vectors, "<f4").reshape(len(batch), -1)

    alone = np.stack([embed([t])[0] for t in SENTENCES])
    batch = embed(SENTENCES)
    seconds = []
    for _ in range(reps):
        began = time.perf_counter()
        embed(timed)
        seconds.append(time.perf_counter() - began)
    return {"alone": alone, "batch": batch, "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mlx-embeddings-python", required=True)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--openblas", action="store_true", help=f"LD_PRELOAD {OPENBLAS} on both sides")
    args = parser.parse_args()
    if args.openblas and "LD_PRELOAD" not in os.environ:
        # The loader reads LD_PRELOAD at start: run this script again with it set.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "LD_PRELOAD": OPENBLAS})
    model = ensure_minilm()
    timed = texts(32, 0)
    request = json.dumps({"texts": SENTENCES, "timed": timed, "reps": args.reps})
    theirs_out = subprocess.run(
        [args.mlx_embeddings_python, "-c", _THEIRS, str(model)], input=request, capture_output=True, text=True, check=True
    )
    theirs = json.loads(theirs_out.stdout.strip().splitlines()[-1])
    mine = ours(model, timed, args.reps)
    their_alone, their_batch = np.array(theirs["alone"]), np.array(theirs["batch"])
    print(f"largest difference, one text at a time: {np.abs(mine['alone'] - their_alone).max():.2e}")
    print(f"largest difference, one padded batch:   {np.abs(mine['batch'] - their_batch).max():.2e}")
    print(f"ours alone vs ours batched:             {np.abs(mine['alone'] - mine['batch']).max():.2e}")
    print(f"theirs alone vs theirs batched:         {np.abs(their_alone - their_batch).max():.2e}")
    unit = mine["alone"]
    print(f"cos(cat, kitten) = {unit[0] @ unit[1]:.4f}; cos(cat, stocks) = {unit[0] @ unit[2]:.4f}")
    rate = lambda seconds: len(timed) / statistics.median(seconds)  # noqa: E731
    print(f"32 short texts as one batch: ours {rate(mine['seconds']):.1f}/s, mlx-embeddings {rate(theirs['seconds']):.1f}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
