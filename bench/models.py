"""The demo models the benchmark runs on, built once with ``opta-lmx demo-model`` into a cache.

Built into a staging directory and renamed into place, so an interrupted build is never used.
The builder is deterministic per seed, so a cached model is the same bytes as a fresh one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.servers import venv_bin

SEED = 0


def ensure_model(cache_dir: Path, size: str, context: int | None = None) -> tuple[Path, float | None]:
    """The model directory for ``size`` (with a context of ``context`` tokens rather than the
    size's own, when given); the build time in seconds when it had to be built."""
    path = cache_dir / "models" / (f"{size}-ctx{context}-seed{SEED}" if context else f"{size}-seed{SEED}")
    if (path / "model.safetensors").exists():
        return path, None
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".building-{size}-", dir=path.parent))
    t0 = time.perf_counter()
    try:
        print(f"building the {size} demo model into {path} ...", file=sys.stderr, flush=True)
        subprocess.run(
            [venv_bin("opta-lmx"), "demo-model", str(staging), "--size", size, "--seed", str(SEED)]
            + (["--context", str(context)] if context else []),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path, time.perf_counter() - t0
