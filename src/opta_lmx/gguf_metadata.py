"""What a GGUF file's header (``gguf_reader``) says about the kind of model: shared by the config
(which engine serves a GGUF), the supervisor (the KV cache's size) and the GGUF embedding engine
(its pooling). Quick enough for a config check: the vocabulary arrays are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from opta_lmx.gguf_reader import read_header

# Longer arrays are a vocabulary's (tokens, merges, scores, types); shorter ones per-layer values.
_LONGEST_ARRAY = 4096

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
    """``path``'s traits, read once per version of the file. Raises ``OSError`` or ``ValueError``
    (``gguf_reader.GgufFormatError``) for a file that is not a readable GGUF."""
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
    """The header's key-values, arrays as long as a vocabulary left unread (``Skipped``): the
    per-layer arrays some models have (head counts) are kept."""
    return read_header(path, longest_array=_LONGEST_ARRAY).metadata
