"""What a model's own files say about it, for ``/api/tags``, ``/api/show`` and ``/api/ps``:
architecture, context length, size, chat template and capabilities, read without loading it.

An MLX model is a directory (``mlx_files``); a GGUF model is one file (``gguf_files``), or a
directory holding one. ``model_info`` uses GGUF's key names (``general.architecture``,
``<arch>.context_length``, ...), which Ollama's clients read, for both. The gateway never imports
an engine: it reads the files the engine would read.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from opta_lmx.gateway.ollama.facts import ModelFacts, unknown
from opta_lmx.gateway.ollama.gguf_files import read_gguf
from opta_lmx.gateway.ollama.mlx_files import read_mlx


def read_model_files(path: str) -> ModelFacts:
    """The facts about the model at ``path`` (a directory or a ``.gguf`` file); read once per
    version of its files (cached by modification time and size)."""
    files = _model_files(Path(path))
    stamp = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    return _read(path, stamp)


def _model_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    return sorted(f for f in path.iterdir() if f.is_file())


@lru_cache(maxsize=64)
def _read(path: str, stamp: tuple[tuple[str, int, int], ...]) -> ModelFacts:
    if not stamp:
        return unknown("")
    size = sum(entry[2] for entry in stamp)
    modified = max((entry[1] for entry in stamp), default=0) / 1e9
    gguf_file = _gguf_file(Path(path))
    if gguf_file is not None:
        return read_gguf(gguf_file, size, modified)
    return read_mlx(Path(path), size, modified)


def _gguf_file(path: Path) -> Path | None:
    if path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").exists():
        return next(iter(sorted(path.glob("*.gguf"))), None)
    return None
