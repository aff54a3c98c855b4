"""A GGUF file's metadata as ``ModelFacts``, read with the ``gguf`` package (memory-mapped: no
tensor data is read). Without the package only what needs no reading is known."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from opta_lmx.gateway.ollama.model_files import ModelFacts, capabilities, marker_candidates, unknown

log = logging.getLogger("opta_lmx.gateway")

# Arrays as long as the vocabulary: Ollama leaves them empty unless asked to be verbose.
_VOCAB_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")
_TEMPLATE_KEY = "tokenizer.chat_template"
_SHORT_ARRAY = 64


def read_gguf(path: Path, size: int, modified: float) -> ModelFacts:
    try:
        from gguf import GGUFReader
    except ImportError:
        return unknown("gguf", size, modified)
    try:
        reader = GGUFReader(path)
    except (OSError, ValueError) as exc:  # not a GGUF file (bad magic), or unreadable
        log.warning("cannot read %s: %s", path, exc)
        return unknown("gguf", size, modified)
    info: dict[str, Any] = {}
    template = ""
    vocab: set[str] = set()
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):  # the container's own header (version, counts)
            continue
        if name == _TEMPLATE_KEY:
            template = field.contents()
        elif name in _VOCAB_ARRAYS:
            info[name] = []
            if name == "tokenizer.ggml.tokens":
                vocab = _markers_in(field)
        elif len(field.data) <= _SHORT_ARRAY:
            info[name] = field.contents()
    arch = str(info.get("general.architecture") or "")
    parameters = info.get("general.parameter_count") or sum(int(t.n_elements) for t in reader.tensors)
    info["general.parameter_count"] = parameters
    return ModelFacts(
        format="gguf",
        architecture=arch,
        context_length=int(info.get(f"{arch}.context_length") or 0),
        parameter_count=int(parameters),
        quantization=_file_type(info.get("general.file_type")),
        size=size,
        modified=modified,
        template=template,
        capabilities=capabilities(template, vocab),
        info=info,
    )


def _markers_in(field: Any) -> set[str]:
    """The thinking markers among the vocabulary's tokens (compared as bytes: no string is built
    for the other tokens)."""
    wanted = {m.encode(): m for m in marker_candidates()}
    return {wanted[token] for i in field.data if (token := bytes(field.parts[i])) in wanted}


def _file_type(value: Any) -> str:
    """llama.cpp's file type as Ollama shows it: Q4_K_M, Q8_0, F16."""
    from gguf import LlamaFileType

    try:
        name = LlamaFileType(int(value)).name
    except (TypeError, ValueError):
        return ""
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")
