"""A GGUF file's key-value header, read without llama.cpp, numpy or the ``gguf`` package, and what it
says about the kind of model: shared by the config (which engine serves a GGUF), the supervisor
(the KV cache's size) and the GGUF embedding engine (its pooling).

The ``gguf`` package's reader parses every tensor and metadata array into Python objects (20 s for
a 49k-token vocabulary on a busy 2-core machine): too slow for a config check. This reads the
key-value section alone, skipping the vocabulary arrays.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

# llama.cpp's architectures whose attention sees the whole text (encoders): embedding models. Their
# files also say so with <arch>.attention.causal = false, which an older file may lack.
ENCODER_ARCHITECTURES = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "neo-bert", "modern-bert"}
)
# llama.cpp's pooling types (<arch>.pooling_type, enum llama_pooling_type).
POOLING_NONE, POOLING_MEAN, POOLING_CLS, POOLING_LAST, POOLING_RANK = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class GgufTraits:
    """What a GGUF's header says about the kind of model it holds."""

    architecture: str
    encoder: bool  # bidirectional attention: makes embeddings, cannot generate
    pooling: int | None  # <arch>.pooling_type, None when absent

    @property
    def embeds(self) -> bool:
        """An embedding model: an encoder, or a file that names how its tokens are pooled (a
        decoder trained for embeddings, as Qwen3-Embedding's files do)."""
        return self.encoder or (self.pooling is not None and self.pooling != POOLING_NONE)


def gguf_traits(path: Path) -> GgufTraits:
    """``path``'s traits, read once per version of the file. Raises ``OSError``, ``ValueError`` or
    ``struct.error`` for a file that is not a readable GGUF."""
    stat = path.stat()
    return _traits(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=64)
def _traits(path: str, mtime_ns: int, size: int) -> GgufTraits:
    meta = read_metadata(Path(path))
    arch = str(meta.get("general.architecture", ""))
    causal = meta.get(f"{arch}.attention.causal")
    pooling = meta.get(f"{arch}.pooling_type")
    encoder = causal is False or arch in ENCODER_ARCHITECTURES
    return GgufTraits(arch, encoder, int(pooling) if isinstance(pooling, int) else None)


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
