"""A GGUF file's header: metadata and tensor directory, read without loading any weights.

``gguf.GGUFReader`` parses every element of every array into its own object (seconds for a
262k-token vocabulary); the inventory only needs the scalars, and the importer wants the arrays as
plain lists. So this reads the format directly (llama.cpp's ``docs/gguf.md``, version 2 and 3,
little-endian) and leaves the tensor bytes on disk until asked for (``tensor_bytes``).
numpy and the ``gguf`` package are imported only for tensor data: the supervisor's inventory
reads headers without either.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opta_lmx.errors import ModelStoreError

if TYPE_CHECKING:
    import numpy as np

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
# GGUF value types: struct format of the scalars; 8 is a string, 9 an array.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    # numpy order (GGUF lists dimensions innermost first)
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the file

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def n_bytes(self) -> int:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        try:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(self.ggml_type)]
        except (ValueError, KeyError):
            raise ModelStoreError(f"tensor {self.name}: unknown GGML type {self.ggml_type}") from None
        return self.n_elements // block * size


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo] = field(default_factory=list)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, key: str, default: Any = None) -> Any:
        """``<architecture>.<key>``, e.g. ``context_length``."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def quantization(self) -> str:
        """llama.cpp's name for the file's mix of tensor types (``Q4_K_M``), from ``general.file_type``."""
        file_type = self.metadata.get("general.file_type")
        return FILE_TYPES.get(file_type, f"file type {file_type}") if file_type is not None else "unknown"

    def check_complete(self) -> None:
        """``ModelStoreError`` if a tensor's data ends past the end of the file (a cut download)."""
        size = self.path.stat().st_size
        for tensor in self.tensors:
            if tensor.offset + tensor.n_bytes > size:
                raise ModelStoreError(f"{self.path}: truncated (tensor {tensor.name} ends past the end of the file)")

    def tensor_bytes(self, tensor: TensorInfo) -> np.ndarray:
        """The tensor's raw bytes (a read-only memory map), rows by bytes per row."""
        import numpy as np

        data = np.memmap(self.path, dtype=np.uint8, mode="r", offset=tensor.offset, shape=(tensor.n_bytes,))
        if len(tensor.shape) < 2:
            return data
        return data.reshape(*tensor.shape[:-1], tensor.n_bytes // math.prod(tensor.shape[:-1]))


def read_gguf(path: Path, arrays: bool = True) -> GGUFFile:
    """Read ``path``'s header. With ``arrays=False`` array values are skipped (kept as their length),
    which is all an inventory needs and much quicker for large vocabularies.

    Raises ``ModelStoreError`` naming the file when it is not a GGUF file or is cut short.
    """
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _Parser(path, data, arrays).parse()
    except (OSError, ValueError) as exc:
        raise ModelStoreError(f"{path}: cannot read as GGUF: {exc}") from None
    except (struct.error, IndexError, UnicodeDecodeError):
        raise ModelStoreError(f"{path}: not a valid GGUF file (truncated or corrupt header)") from None


class _Parser:
    def __init__(self, path: Path, data: mmap.mmap, arrays: bool) -> None:
        self.path = path
        self.data = data
        self.pos = 0
        self.arrays = arrays

    def parse(self) -> GGUFFile:
        if self.data[:4] != _MAGIC:
            raise ModelStoreError(f"{self.path}: not a GGUF file (no GGUF magic)")
        self.pos = 4
        version = self._scalar(4)
        if version not in (2, 3):
            raise ModelStoreError(f"{self.path}: GGUF version {version} is not supported (2 and 3 are)")
        n_tensors, n_kv = self._scalar(10), self._scalar(10)
        metadata = {}
        for _ in range(n_kv):
            key = self._string()
            metadata[key] = self._value(self._scalar(4))
        infos = [self._tensor_info() for _ in range(n_tensors)]
        alignment = int(metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
        start = -(-self.pos // alignment) * alignment
        tensors = [TensorInfo(name, shape, kind, start + offset) for name, shape, kind, offset in infos]
        return GGUFFile(self.path, version, metadata, tensors)

    def _scalar(self, kind: int) -> Any:
        fmt = _SCALARS[kind]
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        (length,) = struct.unpack_from("<Q", self.data, self.pos)
        start = self.pos + 8
        self.pos = start + length
        if self.pos > len(self.data):
            raise IndexError("string past the end")
        return self.data[start : self.pos].decode("utf-8", errors="surrogateescape")

    def _value(self, kind: int) -> Any:
        if kind == _STRING:
            return self._string()
        if kind == _ARRAY:
            return self._array()
        if kind not in _SCALARS:
            raise ModelStoreError(f"{self.path}: unknown GGUF value type {kind}")
        return self._scalar(kind)

    def _array(self) -> Any:
        kind, count = self._scalar(4), self._scalar(10)
        if kind in _NUMPY:
            start = self.pos
            self.pos += count * struct.calcsize(_SCALARS[kind])
            if not self.arrays:
                return count
            import numpy as np

            return np.frombuffer(self.data, dtype=np.dtype(_NUMPY[kind]), count=count, offset=start).tolist()
        if kind == _STRING:
            if not self.arrays:
                for _ in range(count):
                    (length,) = struct.unpack_from("<Q", self.data, self.pos)
                    self.pos += 8 + length
                return count
            return [self._string() for _ in range(count)]
        values = [self._value(kind) for _ in range(count)]
        return values if self.arrays else count

    def _tensor_info(self) -> tuple[str, tuple[int, ...], int, int]:
        name = self._string()
        n_dims = self._scalar(4)
        dims = struct.unpack_from(f"<{n_dims}Q", self.data, self.pos)
        self.pos += 8 * n_dims
        kind, offset = self._scalar(4), self._scalar(10)
        return name, tuple(reversed(dims)), kind, offset


def ggml_type_name(ggml_type: int) -> str:
    from gguf import GGMLQuantizationType

    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type {ggml_type}"


# llama.cpp's llama_ftype names (general.file_type), without the MOSTLY_ prefix.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
}
