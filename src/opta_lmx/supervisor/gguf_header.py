"""The few numbers of a GGUF file's header that size its KV cache, read without llama.cpp.

The ``gguf`` package's reader parses every tensor and metadata array into Python objects (20 s
for a 49k-token vocabulary on a busy 2-core machine): too slow for an admission check. This
reads the key-value section alone, skipping the vocabulary arrays.
"""

from __future__ import annotations

import mmap
import struct
from functools import lru_cache
from pathlib import Path

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
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


def read_metadata(path: Path) -> dict[str, object]:
    """The header's key-values: scalars and strings as values; arrays of numbers as lists;
    arrays of strings (the vocabulary) skipped."""
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != b"GGUF":
            raise ValueError("not a GGUF file")
        version, _tensors, count = struct.unpack_from("<IQQ", data, 4)
        if version < 2:
            raise ValueError(f"GGUF version {version} is not supported")
        at = 24
        meta: dict[str, object] = {}
        for _ in range(count):
            key, at = _string(data, at)
            (kind,) = struct.unpack_from("<I", data, at)
            meta[key], at = _value(data, at + 4, kind)
        return meta


def _string(data: mmap.mmap, at: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", data, at)
    return data[at + 8 : at + 8 + length].decode("utf-8", "replace"), at + 8 + length


def _value(data: mmap.mmap, at: int, kind: int) -> tuple[object, int]:
    if kind == _STRING:
        return _string(data, at)
    if kind == _ARRAY:
        item, count = struct.unpack_from("<IQ", data, at)
        at += 12
        if item == _STRING:
            for _ in range(count):
                (length,) = struct.unpack_from("<Q", data, at)
                at += 8 + length
            return None, at
        fmt = _SCALARS[item]
        width = struct.calcsize(fmt)
        return list(struct.unpack_from(f"<{count}{fmt[1]}", data, at)), at + count * width
    fmt = _SCALARS[kind]
    return struct.unpack_from(fmt, data, at)[0], at + struct.calcsize(fmt)
