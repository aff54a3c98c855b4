"""A GGUF file's metadata as ``ModelFacts``: its key-value header and tensor table, read from a
memory map (no tensor data is touched).

The ``gguf`` package's ``GGUFReader`` reads the same, but turns every vocabulary entry into a
numpy view first: 5-7 s for SmolLM2's 49k tokens on a small CPU, far more for a 262k vocabulary,
where this walk takes a fraction of a second. The format (llama.cpp's gguf.md): magic ``GGUF``,
version, tensor count, key-value count; each key a string, each value typed (arrays carry their
element type and length); then per tensor its name, dimensions, type and offset.
"""

from __future__ import annotations

import logging
import mmap
import struct
from pathlib import Path
from typing import Any

from opta_lmx.gateway.ollama.facts import ModelFacts, capabilities, marker_candidates, unknown

log = logging.getLogger("opta_lmx.gateway")

# Arrays as long as the vocabulary: Ollama leaves them empty unless asked to be verbose.
_VOCAB_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")
_TEMPLATE_KEY = "tokenizer.chat_template"
_SHORT_ARRAY = 64
_STRING, _ARRAY = 8, 9
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
# llama.cpp's file types (general.file_type), as Ollama names quantization levels.
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}  # fmt: skip


class _Cursor:
    """Reads little-endian GGUF values from a buffer, front to back."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.at = 0

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return value

    def raw_string(self) -> bytes:
        length = self.scalar("<Q")
        start, self.at = self.at, self.at + length
        if self.at > len(self.data):
            raise ValueError("a string runs past the end of the file")
        return bytes(self.data[start : self.at])

    def string(self) -> str:
        return self.raw_string().decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.scalar("<I"), self.scalar("<Q")
            return [self.value(item) for _ in range(count)]
        return self.scalar(_SCALARS[kind])

    def skip_array(self, markers: set[bytes]) -> set[bytes]:
        """Walk past an array; of a string array, return which of ``markers`` it holds."""
        item, count = self.scalar("<I"), self.scalar("<Q")
        if item != _STRING:
            self.at += struct.calcsize(_SCALARS[item]) * count
            return set()
        found = set()
        for _ in range(count):
            token = self.raw_string()
            if token in markers:
                found.add(token)
        return found


def read_gguf(path: Path, size: int, modified: float) -> ModelFacts:
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            with memoryview(mapped) as data:
                return _read(_Cursor(data), size, modified)
    except (OSError, ValueError, KeyError, struct.error) as exc:  # not GGUF, truncated, unknown type
        log.warning("cannot read the GGUF metadata of %s: %s", path, exc)
        return unknown("gguf", size, modified)


def _read(cursor: _Cursor, size: int, modified: float) -> ModelFacts:
    if bytes(cursor.data[:4]) != b"GGUF":
        raise ValueError("no GGUF magic")
    cursor.at = 4
    if cursor.scalar("<I") < 2:  # version 1 (2023) had 32-bit lengths; nothing writes it now
        raise ValueError("GGUF version 1 is not supported")
    tensors, keys = cursor.scalar("<Q"), cursor.scalar("<Q")
    info: dict[str, Any] = {}
    template = ""
    wanted = {m.encode(): m for m in marker_candidates()}
    vocab: set[str] = set()
    for _ in range(keys):
        name, kind = cursor.string(), cursor.scalar("<I")
        if kind == _ARRAY and name in _VOCAB_ARRAYS:
            vocab |= {wanted[m] for m in cursor.skip_array(set(wanted))}
            info[name] = []
            continue
        value = cursor.value(kind)
        if name == _TEMPLATE_KEY:
            template = value
        elif not (kind == _ARRAY and len(value) > _SHORT_ARRAY):
            info[name] = value
    arch = str(info.get("general.architecture") or "")
    parameters = int(info.get("general.parameter_count") or _count_parameters(cursor, tensors))
    info["general.parameter_count"] = parameters
    return ModelFacts(
        format="gguf",
        architecture=arch,
        context_length=int(info.get(f"{arch}.context_length") or 0),
        parameter_count=parameters,
        quantization=_FILE_TYPES.get(info.get("general.file_type", -1), ""),
        size=size,
        modified=modified,
        template=template if isinstance(template, str) else "",
        capabilities=capabilities(template if isinstance(template, str) else "", vocab),
        info=info,
    )


def _count_parameters(cursor: _Cursor, tensors: int) -> int:
    """The elements of every tensor in the tensor table (which follows the key-value header)."""
    total = 0
    for _ in range(tensors):
        cursor.raw_string()  # name
        count = 1
        for _ in range(cursor.scalar("<I")):
            count *= cursor.scalar("<Q")
        cursor.at += 12  # type (u32) and data offset (u64)
        total += count
    return total
