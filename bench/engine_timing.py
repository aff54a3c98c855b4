"""One request through an engine in-process, timed: the loop the single-stream benchmarks share
(``engine_solo.py`` for MLX, ``gguf_solo.py`` for GGUF). Imports no engine itself."""

from __future__ import annotations

import time
from typing import Any

from opta_lmx.proto import Finished, Generate


def timed_generation(engine: Any, request: Generate) -> tuple[float, float]:
    """Generated tokens per wall second and per CPU second of this process, ``request`` submitted
    to ``engine`` and stepped until it finishes."""
    wall, cpu = time.perf_counter(), time.process_time()
    engine.submit(request)
    made = 0
    while engine.active:
        for message in engine.step():
            if isinstance(message, Finished):
                made = message.completion_tokens
    return made / (time.perf_counter() - wall), made / (time.process_time() - cpu)
