"""Which BLAS library the workers preload (``[supervisor] preload_blas``).

On Linux the ``mlx[cpu]`` wheel links a reference BLAS (float32 matrix products at about
2 GFLOP/s); with the system's OpenBLAS preloaded (``LD_PRELOAD``) MLX's calls resolve there
instead. Measured on the demo models (``bench/blas.py``): greedy tokens identical, alone and in a
batch, and prompt processing 3.6-11x faster; quantized and half-precision products are MLX's
own kernels and do not change. Only worker processes get it (warm spares included), only on
Linux, and only when the library is there: a machine without OpenBLAS runs as before.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from typing import Callable

AUTO = "auto"
OFF = ("", "off")


def preload_library(setting: str, find: Callable[[str], str | None] = ctypes.util.find_library,
                    platform: str = sys.platform) -> str | None:
    """The library to preload into workers, or None. ``auto``: the system's OpenBLAS if the
    dynamic linker knows one; ``off`` or ``""``: none; else a path (checked at config load)."""
    if setting in OFF or not platform.startswith("linux"):
        return None
    if setting == AUTO:
        return find("openblas")
    return setting


def worker_environment(library: str | None) -> dict[str, str] | None:
    """The environment for worker processes: this one, with ``library`` first in ``LD_PRELOAD``
    (None: inherit it unchanged)."""
    if library is None:
        return None
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(filter(None, [library, env.get("LD_PRELOAD")]))
    return env
