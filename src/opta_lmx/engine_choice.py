"""Which engine serves a model (``engine = "auto"`` decided from its files), and which
``[models.options]`` each engine has a use for. Reads model files' headers and config.json only:
no engine is imported here.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from opta_lmx.gguf_metadata import gguf_traits

if TYPE_CHECKING:
    from opta_lmx.config import EngineOptions

MLX, GGUF, EMBEDDING, GGUF_EMBEDDING = "mlx", "gguf", "embedding", "gguf-embedding"
_ENGINE_KINDS = {
    MLX: "MLX models",
    GGUF: "GGUF (llama.cpp) models",
    EMBEDDING: "MLX embedding models",
    GGUF_EMBEDDING: "GGUF embedding models",
}
# The engines each option means something to; the options not listed (stream_interval_ms,
# max_queued) apply to every engine.
_OPTION_ENGINES: dict[str, tuple[str, ...]] = {
    "batch_size": (MLX, EMBEDDING, GGUF_EMBEDDING),
    "prefill_batch_size": (MLX,),
    "prefill_step_size": (MLX, EMBEDDING),
    "max_kv_size": (MLX,),
    "prompt_cache_entries": (MLX, GGUF),
    "prompt_cache_bytes": (MLX,),
    "kv_disk_bytes": (MLX,),
    "kv_disk_dir": (MLX,),
    "kv_bits": (MLX,),
    "kv_group_size": (MLX,),
    "quantized_kv_start": (MLX,),
    "draft_model": (MLX,),
    "num_draft_tokens": (MLX,),
    "cpu_attention": (MLX, EMBEDDING),
    "slots": (GGUF,),
    "slot_context": (GGUF,),
    "threads": (GGUF, GGUF_EMBEDDING),
    "n_batch": (GGUF,),
    "n_ubatch": (GGUF, GGUF_EMBEDDING),
    "flash_attn": (GGUF, GGUF_EMBEDDING),
    "chat_template": (MLX, GGUF),
    "pooling": (GGUF_EMBEDDING,),
    "normalize": (GGUF_EMBEDDING,),
}


def engine_option_errors(options: EngineOptions, engine: str) -> list[str]:
    """The options set (to other than their default) that ``engine`` has no use for, each with
    the reason; none for a plug-in, which takes what it takes."""
    if engine not in _ENGINE_KINDS:
        return []
    default = type(options)()
    errors = []
    for name, engines in _OPTION_ENGINES.items():
        if engine not in engines and getattr(options, name) != getattr(default, name):
            kinds = [_ENGINE_KINDS[e] for e in engines]
            listed = kinds[0] if len(kinds) == 1 else f"{', '.join(kinds[:-1])} and {kinds[-1]}"
            errors.append(f"{name} applies to {listed} only")
    return errors


def gguf_file(path: str) -> Path:
    """The GGUF file a model path names: the file itself, or the one model file in a directory
    (of a split model, its first part; multimodal projectors, ``mmproj*``, are not the model)."""
    location = Path(path).expanduser()
    if not location.is_dir():
        return location
    found = sorted(p for p in location.glob("*.gguf") if not p.name.startswith("mmproj"))
    models = [p for p in found if "-of-" not in p.stem or p.stem.split("-of-")[0].endswith("-00001")]
    if len(models) != 1:
        names = ", ".join(p.name for p in models) or "none"
        raise ValueError(f"{path} must hold exactly one GGUF model file (found: {names})")
    return models[0]


# Encoders whose config.json says what they are; a sentence-transformers modules.json says it too.
_ENCODER_ARCHITECTURES = ("BertModel", "BertForSequenceClassification")


def resolve_engine(spec: str, path: str) -> str:
    """The engine that serves the model at ``path``: ``spec`` itself unless it is ``auto``.

    ``auto`` is, for a GGUF file (or a directory holding one), ``gguf-embedding`` when its header
    says it is an embedding model (an encoder, or a pooling type) and ``gguf`` otherwise; for a
    directory, ``embedding`` for an encoder (a sentence-transformers model, or a config.json naming
    a BERT encoder or cross-encoder) and ``mlx`` otherwise. ``gguf-embedding`` named outright
    serves any GGUF's pooled embeddings, a decoder's too."""
    if spec != "auto":
        return spec
    location = Path(path).expanduser()
    is_gguf = location.suffix == ".gguf" or (location.is_dir() and any(location.glob("*.gguf")))
    if is_gguf:
        return GGUF_EMBEDDING if _gguf_embeds(path) else GGUF
    return EMBEDDING if _is_encoder(location) else MLX


def _gguf_embeds(path: str) -> bool:
    try:
        return gguf_traits(gguf_file(path)).embeds
    except (OSError, ValueError, struct.error):
        return False  # the engine's load says what is wrong with the file


def gguf_encoder(path: str) -> str | None:
    """The architecture of the GGUF at ``path`` if it is an encoder (it cannot generate)."""
    try:
        traits = gguf_traits(gguf_file(path))
    except (OSError, ValueError, struct.error):
        return None
    return traits.architecture if traits.encoder else None


# llama.cpp's LLAMA_MAX_SEQ: sequences one context may hold (a GGUF embedding batch's inputs).
LLAMA_MAX_SEQUENCES = 256


def _is_encoder(location: Path) -> bool:
    if (location / "modules.json").is_file():
        return True
    try:
        architectures = json.loads((location / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return False  # the engine's load says what is wrong with the files
    return any(name in _ENCODER_ARCHITECTURES for name in architectures)
