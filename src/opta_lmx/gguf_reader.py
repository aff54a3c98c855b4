"""A GGUF file's header: its key-values and tensor table, read from a memory map without
llama.cpp, numpy or the ``gguf`` package. One reader for every part that looks at GGUF files:
the model store (inventory and the MLX importer), the config and supervisor (which engine, how
much KV memory: ``gguf_metadata``, ``supervisor/gguf_header.py``) and Ollama's ``/api/show``.

The ``gguf`` package's ``GGUFReader`` turns every vocabulary entry into a numpy view first (5-7 s
for SmolLM2's 49k tokens on a small CPU, far more for a 262k vocabulary); most callers want none
of those arrays, so arrays longer than ``longest_array`` are left unread (``Skipped``). The
format (llama.cpp's ``docs/gguf.md``, versions 2 and 3, little-endian): magic ``GGUF``, version,
tensor count, key-value count; each key a string, each value typed (arrays carry their element
type and length); then per tensor its name, dimensions (innermost first), type and offset from
the data section, which starts at the next multiple of ``general.alignment``.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
# GGUF value types: struct format of the scalars; 8 is a string, 9 an array.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

# llama.cpp's llama_ftype names (general.file_type), without the MOSTLY_ prefix: as llama.cpp
# and Ollama name quantization levels.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}  # fmt: skip


class GgufFormatError(ValueError):
    """The file is not a GGUF this reader understands: no magic, another version, an unknown
    value type, or a header cut short."""


@dataclass(frozen=True)
class Skipped:
    """An array value left unread: its element type and length."""

    kind: int
    count: int


@dataclass(frozen=True)
class RawTensor:
    name: str
    shape: tuple[int, ...]  # numpy order (the file lists dimensions innermost first)
    ggml_type: int
    offset: int  # from the start of the file


@dataclass(frozen=True)
class GgufHeader:
    version: int
    metadata: dict[str, Any]
    tensors: list[RawTensor]
    # Which of the ``find_tokens`` asked for appear in the file's string arrays.
    found: frozenset[bytes]


def read_header(
    path: Path,
    *,
    longest_array: int | None = None,
    find_tokens: Collection[bytes] = (),
    errors: str = "replace",
) -> GgufHeader:
    """``path``'s header. Arrays with more than ``longest_array`` elements (None: no limit) are
    ``Skipped``; every string array, read or not, is searched for ``find_tokens`` (the raw bytes
    of vocabulary entries: cheaper than decoding a vocabulary). Strings are decoded from UTF-8
    with ``errors`` ("surrogateescape" keeps bytes that are not UTF-8, as a byte-level vocabulary
    needs). Raises ``OSError`` for a file that cannot be read, ``GgufFormatError`` for the rest."""
    with open(path, "rb") as file:
        if not os.fstat(file.fileno()).st_size:  # mmap refuses an empty file
            raise GgufFormatError("not a GGUF file (empty)")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            cursor = _Cursor(data, longest_array, frozenset(find_tokens), errors)
            try:
                return cursor.header()
            # A corrupt length or count runs past the end (IndexError, struct.error) or past what
            # an offset can be (OverflowError); corrupt nesting past the stack (RecursionError).
            except (struct.error, IndexError, OverflowError, RecursionError, UnicodeDecodeError):
                raise GgufFormatError("not a valid GGUF file (truncated or corrupt header)") from None


class _Cursor:
    """Reads the header front to back."""

    def __init__(self, data: mmap.mmap, longest_array: int | None, find: frozenset[bytes], errors: str) -> None:
        self.data = data
        self.at = 0
        self.longest_array = longest_array
        self.find = find
        self.found: set[bytes] = set()
        self.errors = errors

    def header(self) -> GgufHeader:
        if self.data[:4] != _MAGIC:
            raise GgufFormatError("not a GGUF file (no GGUF magic)")
        self.at = 4
        version = self.scalar(4)
        if version not in (2, 3):  # version 1 (2023) had 32-bit lengths; nothing writes it now
            raise GgufFormatError(f"GGUF version {version} is not supported (2 and 3 are)")
        n_tensors, n_keys = self.scalar(10), self.scalar(10)
        metadata = {}
        for _ in range(n_keys):
            key = self.string()
            metadata[key] = self.value(self.scalar(4))
        infos = [self.tensor() for _ in range(n_tensors)]
        alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment < 1:
            raise GgufFormatError(f"general.alignment {alignment!r} is not a positive integer")
        start = -(-self.at // alignment) * alignment
        tensors = [RawTensor(name, shape, kind, start + offset) for name, shape, kind, offset in infos]
        return GgufHeader(version, metadata, tensors, frozenset(self.found))

    def scalar(self, kind: int) -> Any:
        fmt = _SCALARS[kind]
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return value

    def raw_string(self) -> bytes:
        (length,) = struct.unpack_from("<Q", self.data, self.at)
        start = self.at + 8
        self.at = start + length
        if self.at > len(self.data):
            raise IndexError("a string runs past the end of the file")
        return self.data[start : self.at]

    def skip_string(self) -> bytes:
        (length,) = struct.unpack_from("<Q", self.data, self.at)
        self.at += 8 + length
        if self.at > len(self.data):
            raise IndexError("a string runs past the end of the file")
        return b""

    def string(self) -> str:
        return self.raw_string().decode("utf-8", self.errors)

    def value(self, kind: int) -> Any:
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            return self.array()
        if kind not in _SCALARS:
            raise GgufFormatError(f"unknown GGUF value type {kind}")
        return self.scalar(kind)

    def array(self) -> Any:
        kind, count = self.scalar(4), self.scalar(10)
        keep = self.longest_array is None or count <= self.longest_array
        if kind == _STRING and not keep:
            for _ in range(count):  # walked, not kept: a vocabulary is most of a header
                token = self.raw_string() if self.find else self.skip_string()
                if token in self.find:
                    self.found.add(token)
            return Skipped(kind, count)
        if kind == _STRING:
            strings = [self.raw_string() for _ in range(count)]
            self.found.update(self.find.intersection(strings))
            return [s.decode("utf-8", self.errors) for s in strings]
        if kind in _SCALARS:
            fmt = _SCALARS[kind]
            start, self.at = self.at, self.at + count * struct.calcsize(fmt)
            if self.at > len(self.data):
                raise IndexError("an array runs past the end of the file")
            if not keep:
                return Skipped(kind, count)
            return list(struct.unpack_from(f"<{count}{fmt[1]}", self.data, start))
        values = [self.value(kind) for _ in range(count)]  # arrays of arrays
        return values if keep else Skipped(kind, count)

    def tensor(self) -> tuple[str, tuple[int, ...], int, int]:
        name = self.string()
        n_dims = self.scalar(4)
        dims = struct.unpack_from(f"<{n_dims}Q", self.data, self.at)
        self.at += 8 * n_dims
        kind, offset = self.scalar(4), self.scalar(10)
        return name, tuple(reversed(dims)), kind, offset
