"""The few numbers of a GGUF file's header that size its KV cache, read without llama.cpp.

The header is read by ``opta_lmx.gguf_metadata`` (the key-value section alone, skipping the
vocabulary arrays), quick enough for an admission check.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from pathlib import Path

from opta_lmx.gguf_metadata import read_metadata

_F16_BYTES = 2  # llama.cpp's default KV cache type


def kv_cache_bytes(path: Path, slots: int, slot_context: int) -> int | None:
    """What the GGUF engine allocates for ``slots`` KV caches of ``slot_context`` tokens each
    (0: the model's training context, which also caps it; llama.cpp rounds up to 256 tokens), in
    f16; None when the header cannot be read or lacks the sizes. Sliding-window layers are
    counted as full ones: an upper bound."""
    try:
        stat = path.stat()
        per_token, train = _sizes(str(path), stat.st_mtime_ns, stat.st_size)
    except (OSError, ValueError, TypeError, struct.error, KeyError):
        return None
    tokens = min(slot_context or train, train) if train else slot_context or 4096
    return slots * -(-tokens // 256) * 256 * per_token


@lru_cache(maxsize=32)
def _sizes(path: str, mtime_ns: int, size: int) -> tuple[int, int]:
    """(KV bytes per token in every layer, training context length) of a GGUF model."""
    meta = read_metadata(Path(path))
    arch = meta["general.architecture"]
    layers = int(meta[f"{arch}.block_count"])  # type: ignore[call-overload]
    heads = meta[f"{arch}.attention.head_count"]
    kv_heads = meta.get(f"{arch}.attention.head_count_kv", heads)
    embedding = int(meta[f"{arch}.embedding_length"])  # type: ignore[call-overload]
    first_heads = int(heads[0] if isinstance(heads, list) else heads)  # type: ignore[call-overload]
    key = int(meta.get(f"{arch}.attention.key_length", embedding // max(1, first_heads)))  # type: ignore[call-overload]
    value = int(meta.get(f"{arch}.attention.value_length", key))  # type: ignore[call-overload]
    per_layer = kv_heads if isinstance(kv_heads, list) else [kv_heads] * layers
    per_token = sum(int(h) for h in per_layer) * (key + value) * _F16_BYTES  # type: ignore[call-overload]
    return per_token, int(meta.get(f"{arch}.context_length", 0))  # type: ignore[call-overload]
