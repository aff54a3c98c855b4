"""A GGUF file's metadata as ``ModelFacts``, from its header (``opta_lmx.gguf_reader``: the
key-values and tensor table, no tensor data touched, the vocabulary searched for the thinking and
tool-call markers without being decoded).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from opta_lmx.gateway.ollama.facts import ModelFacts, capabilities, marker_candidates, unknown
from opta_lmx.gguf_reader import FILE_TYPES, GgufHeader, Skipped, read_header

log = logging.getLogger("opta_lmx.gateway")

# Arrays as long as the vocabulary: Ollama leaves them empty unless asked to be verbose.
_VOCAB_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")
_TEMPLATE_KEY = "tokenizer.chat_template"
_SHORT_ARRAY = 64


def read_gguf(path: Path, size: int, modified: float) -> ModelFacts:
    wanted = {m.encode(): m for m in marker_candidates()}
    try:
        header = read_header(path, longest_array=_SHORT_ARRAY, find_tokens=wanted)
    except (OSError, ValueError) as exc:  # GgufFormatError is one
        log.warning("cannot read the GGUF metadata of %s: %s", path, exc)
        return unknown("gguf", size, modified)
    template = header.metadata.get(_TEMPLATE_KEY)
    template = template if isinstance(template, str) else ""
    info = _model_info(header)
    arch = str(info.get("general.architecture") or "")
    return ModelFacts(
        format="gguf",
        architecture=arch,
        context_length=_int(info.get(f"{arch}.context_length")),
        parameter_count=_int(info["general.parameter_count"]),
        quantization=FILE_TYPES.get(_int(info.get("general.file_type", -1)), ""),
        size=size,
        modified=modified,
        template=template,
        capabilities=capabilities(template, {wanted[token] for token in header.found}),
        info=info,
    )


def _model_info(header: GgufHeader) -> dict[str, Any]:
    """Ollama's ``model_info``: the key-values less the template and long arrays, the vocabulary's
    arrays empty, and the parameter count (from the tensor table when the header has none)."""
    info: dict[str, Any] = {}
    for key, value in header.metadata.items():
        if key in _VOCAB_ARRAYS:
            info[key] = []
        elif key != _TEMPLATE_KEY and not isinstance(value, Skipped):
            info[key] = value
    counted = sum(math.prod(t.shape) for t in header.tensors)
    info["general.parameter_count"] = _int(info.get("general.parameter_count")) or counted
    return info


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
